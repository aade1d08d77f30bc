"""The receiver's file writer: verification hashed as data is written, in any order."""

from __future__ import annotations

import errno
import os
import random
import stat
from pathlib import Path

import pytest
from blake3 import blake3

from jetstream_server.dataplane import sink as sink_module
from jetstream_server.dataplane.sink import FileSink
from jetstream_server.errors import DiskError
from jetstream_server.protocol.metadata import FileEntry, Metadata

pytestmark = pytest.mark.timeout(30)


def _sink(root: Path, size: int) -> FileSink:
    meta = Metadata("ab" * 16, None, [FileEntry("/f.bin", "/f.bin", size, 1_700_000_000_000_000,
                                                False)], {}, {}, None)
    sink = FileSink(str(root), meta, "ab" * 16)
    sink.prepare()
    return sink


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_blocks_written_out_of_order_and_twice_give_the_right_file(tmp_path: Path,
                                                                   seed: int) -> None:
    data = os.urandom(300_000)
    block = 1000
    writes = [(0, offset, data[offset:offset + block]) for offset in range(0, len(data), block)]
    rng = random.Random(seed)
    rng.shuffle(writes)
    writes += rng.sample(writes, 30)  # duplicates, as a lossy link delivers them
    sink = _sink(tmp_path, len(data))
    for start in range(0, len(writes), 17):  # batches of mixed, overlapping order
        sink.write(writes[start:start + 17])
    [path] = sink.commit_many([(0, blake3(data).digest(), len(data))])
    assert isinstance(path, str)
    assert Path(path).read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left


def test_a_wrong_digest_is_refused_and_nothing_is_delivered(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sink = _sink(tmp_path, len(data))
    sink.write([(0, 0, data)])
    [result] = sink.commit_many([(0, blake3(data + b"x").digest(), len(data))])
    assert isinstance(result, DiskError) and "checksum" in str(result)
    assert list(tmp_path.iterdir()) == []


def test_a_file_changed_on_disk_after_writing_is_caught(tmp_path: Path) -> None:
    """Parts not yet hashed when written (behind a gap) are hashed from the file itself."""
    data = os.urandom(8_000)
    sink = _sink(tmp_path, len(data))
    sink.write([(0, 4000, data[4000:])])  # after a gap: not hashed yet
    temp = next(tmp_path.iterdir())
    with open(temp, "r+b") as stream:  # the disk returns other bytes than were written
        stream.seek(5000)
        stream.write(b"\0" * 10)
    sink.write([(0, 0, data[:4000])])
    [result] = sink.commit_many([(0, blake3(data).digest(), len(data))])
    assert isinstance(result, DiskError) and "checksum" in str(result)


def test_a_group_commit_delivers_the_good_files_and_refuses_the_bad_one(
        tmp_path: Path) -> None:
    contents = [os.urandom(4096 + n) for n in range(20)]
    meta = Metadata("cd" * 16, None, [
        FileEntry(f"/d{n % 3}/f{n}.bin", f"/f{n}.bin", len(c), 1_700_000_000_000_000, False)
        for n, c in enumerate(contents)], {}, {}, None)
    sink = FileSink(str(tmp_path), meta, "cd" * 16)
    sink.prepare()
    for n, data in enumerate(contents):
        sink.write([(n, 0, data)])
    digests = [blake3(c).digest() for c in contents]
    digests[7] = blake3(b"something else").digest()
    results = sink.commit_many([(n, d, len(c)) for n, (d, c) in
                                enumerate(zip(digests, contents, strict=True))])
    assert isinstance(results[7], DiskError) and "checksum" in str(results[7])
    for n, data in enumerate(contents):
        target = tmp_path / f"d{n % 3}" / f"f{n}.bin"
        if n == 7:
            assert not target.exists()
        else:
            assert results[n] == str(target) and target.read_bytes() == data
    assert not [p for p in tmp_path.rglob(".jetstream-*")]  # no temporary file left


def _many(root: Path, count: int, folder: str = "/in") -> FileSink:
    meta = Metadata("ef" * 16, None, [
        FileEntry(f"{folder}/f{n}.bin", f"/f{n}.bin", 100, 1_700_000_000_000_000, False)
        for n in range(count)], {}, {}, None)
    sink = FileSink(str(root), meta, "ef" * 16)
    sink.prepare()
    return sink


def _parts(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def _descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("end", ["abort", "release", "close"])
def test_every_descriptor_is_closed_and_only_release_keeps_temporary_files(
        tmp_path: Path, end: str) -> None:
    before = _descriptors()
    meta = Metadata("ef" * 16, None, [  # files in two folders, in turn: a folder's
        FileEntry(f"/{'ab'[n % 2]}/f{n}.bin", f"/f{n}.bin", 100,  # descriptor is shared
                  1_700_000_000_000_000, False) for n in range(4)], {}, {}, None)
    sink = FileSink(str(tmp_path), meta, "ef" * 16)
    sink.prepare()
    data = [bytes([n]) * 100 for n in range(4)]
    for n in range(2 if end == "close" else 4):  # close: at the end of a transfer
        sink.write([(n, 0, data[n])])
    assert sink.commit_many([(n, blake3(data[n]).digest(), 100) for n in range(2)]) == [
        str(tmp_path / "ab"[n % 2] / f"f{n}.bin") for n in range(2)]
    getattr(sink, end)()
    # release keeps what holds data for a later session
    kept = [f".jetstream-{'ef' * 16}-{n}.part" for n in (2, 3)] if end == "release" else []
    assert _parts(tmp_path / "a") + _parts(tmp_path / "b") == kept
    assert sorted(p.name for p in tmp_path.rglob("f*.bin")) == ["f0.bin", "f1.bin"]
    assert _descriptors() == before


def test_a_folder_that_cannot_be_examined_is_closed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error from fstat of a folder just opened (faked: it cannot be provoked
    here) reaches the caller, and the folder's descriptor is closed, not leaked."""
    real_fstat = os.fstat

    def failing(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if stat.S_ISDIR(result.st_mode):
            raise OSError(errno.EIO, "Input/output error")
        return result

    sink = _many(tmp_path, 1, "/in")
    before = _descriptors()
    monkeypatch.setattr(os, "fstat", failing)
    with pytest.raises(OSError, match="Input/output error"):
        sink.write([(0, 0, b"z" * 100)])
    monkeypatch.undo()
    assert _descriptors() == before
    sink.close()


def test_a_folder_replaced_by_a_symlink_before_the_rename_refuses_the_file(
        tmp_path: Path) -> None:
    root, outside = tmp_path / "box", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    sink = _many(root, 2, "/in/later")
    data = b"x" * 100
    sink.write([(0, 0, data), (1, 0, data)])  # both temporary files are in in/later
    os.rename(root / "in" / "later", root / "in" / "was-later")
    os.symlink(outside, root / "in" / "later")
    results = sink.commit_many([(n, blake3(data).digest(), 100) for n in range(2)])
    for n, result in enumerate(results):
        assert isinstance(result, DiskError)
        assert f"later/f{n}.bin" in str(result) and "symlink" in str(result)
    sink.close()
    assert list(outside.iterdir()) == []
    assert list((root / "in" / "was-later").iterdir()) == []  # not delivered elsewhere


def test_a_folder_removed_before_the_rename_refuses_the_file(tmp_path: Path) -> None:
    sink = _many(tmp_path, 1, "/in/later")
    data = b"z" * 100
    sink.write([(0, 0, data)])
    os.rename(tmp_path / "in" / "later", tmp_path / "was-later")  # nothing at the path now
    [result] = sink.commit_many([(0, blake3(data).digest(), 100)])
    assert str(result) == (f"Cannot write {tmp_path}/in/later/f0.bin: a folder on its way "
                           "was moved or removed while the transfer ran (No such file or "
                           "directory).")
    sink.close()
    assert list((tmp_path / "was-later").iterdir()) == []


def test_a_folder_moved_before_the_rename_refuses_the_file(tmp_path: Path) -> None:
    sink = _many(tmp_path, 1, "/in/later")
    data = b"y" * 100
    sink.write([(0, 0, data)])
    os.rename(tmp_path / "in" / "later", tmp_path / "in" / "was-later")
    (tmp_path / "in" / "later").mkdir()  # another folder now has the path
    [result] = sink.commit_many([(0, blake3(data).digest(), 100)])
    assert isinstance(result, DiskError) and "moved or replaced" in str(result)
    sink.close()
    assert list((tmp_path / "in" / "later").iterdir()) == []
    assert list((tmp_path / "in" / "was-later").iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_mode_644_or_755_whatever_the_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    """Under umask 022 a new temporary file is created with its final mode; under a
    umask that would take bits from it, the mode is set before the rename."""
    monkeypatch.setattr(sink_module, "_UMASK", umask)  # read once, at import
    meta = Metadata("ef" * 16, None, [
        FileEntry(f"/f{n}", f"/f{n}", 3, 1_700_000_000_000_000, n == 1) for n in range(2)],
        {}, {}, None)
    old = os.umask(umask)
    try:
        sink = FileSink(str(tmp_path), meta, "ef" * 16)
        sink.prepare()
        sink.write([(0, 0, b"abc"), (1, 0, b"abc")])
        assert sink.commit_many([(n, blake3(b"abc").digest(), 3) for n in range(2)]) == [
            str(tmp_path / f"f{n}") for n in range(2)]
        sink.close()
    finally:
        os.umask(old)
    assert [stat.S_IMODE((tmp_path / f"f{n}").stat().st_mode) for n in range(2)] == [
        0o644, 0o755]


@pytest.mark.parametrize(("destination", "path", "message"), [
    (None, "/" + "é" * 128, "has a name longer than 255 bytes"),  # 128 characters
    ("/in\nbox", "/f", "contains a line break"),
    (None, "/d/a\nb", "contains a line break"),
])
def test_names_a_sender_may_not_give_are_refused(tmp_path: Path, destination: str | None,
                                                  path: str, message: str) -> None:
    """What a forged sender could send and the manifest would never have made."""
    meta = Metadata("ef" * 16, destination, [FileEntry(path, "/f", 1, 0, False)], {}, {},
                    None)
    sink = FileSink(str(tmp_path), meta, "ef" * 16)
    with pytest.raises(DiskError, match=message):
        sink.prepare()
    sink.close()


def test_a_name_of_255_bytes_is_taken(tmp_path: Path) -> None:
    name = "é" * 127 + "a"  # 255 bytes
    meta = Metadata("ef" * 16, None, [FileEntry(f"/{name}", "/f", 1, 0, False)], {}, {}, None)
    sink = FileSink(str(tmp_path), meta, "ef" * 16)
    assert sink.prepare() == [str(tmp_path / name)]
    sink.close()


def test_a_kept_file_whose_temporary_file_is_gone_is_received_again(tmp_path: Path) -> None:
    """A file put in place after the last checkpoint, then a crash: the checkpoint still
    counts its temporary file's blocks, but the file is not there to be reopened."""
    entries = [FileEntry(f"/f{i}.bin", f"/f{i}.bin", 100_000, 1_700_000_000_000_000, False)
               for i in range(2)]
    meta = Metadata("cd" * 16, None, entries, {}, {}, None)
    first = FileSink(str(tmp_path), meta, "cd" * 16)
    first.prepare()
    first.write([(0, 0, b"a" * 1000), (1, 0, b"b" * 1000)])
    first.release()
    (tmp_path / f".jetstream-{'cd' * 16}-1.part").rename(tmp_path / "f1.bin")
    again = FileSink(str(tmp_path), meta, "cd" * 16, keep={0, 1})
    again.prepare()
    assert again.lost == {1} and again.keep == {0}
    again.abort()


@pytest.mark.parametrize(("code", "curable"), [(errno.ENOSPC, True), (errno.EDQUOT, True),
                                               (errno.EACCES, True), (errno.EIO, False)])
def test_write_errors_the_operator_can_cure_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, curable: bool) -> None:
    sink = _sink(tmp_path, 10_000)

    def failing(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sink_module.os, "pwritev", failing)  # (a full disk, faked)
    with pytest.raises(DiskError) as failed:
        sink.write([(0, 0, b"x" * 10_000)])
    assert failed.value.curable is curable
    if code == errno.ENOSPC:
        assert "No space left on the receiving server's disk writing" in str(failed.value)
    monkeypatch.undo()
    sink.abort()
