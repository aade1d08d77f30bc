"""Writing a received transfer into an S3 sandbox (blocking code for the session's worker
thread), with what :class:`~jetstream_server.dataplane.sink.FileSink` promises for disks:
nothing appears under its final name unverified.

Blocks go to a spool file per file being received (in the server's state folder, sparse),
and are hashed (BLAKE3) as the bytes written from the start of the file grow. A file up to
PART_BYTES is stored with one PUT once its digest matches the sender's. A larger one is a
multipart upload: each part, once hashed, is read from the spool and uploaded by one of
UPLOADS_AT_ONCE threads, and once S3 has it its space in the spool is given back (a hole
punched); the upload is completed only after the whole file's digest matched, so the
object appears under its key complete and verified, or not at all. The spool holds what
arrived beyond the first missing byte plus the parts on their way, not the file: with the
usual reordering a few MiB a file; at most the file's size when its first block is the
one lost.

The upload of each file is recorded in a ledger beside the spool the moment it is started.
When a session ends with the server still running (the sender paused or restarted, the
endpoint went away), what it has of each file (spool, hash state, stored parts) is
carried to the next session of the transfer (:class:`Carry`), which goes on from there.
After a restart of this server, a file that was being uploaded is received again, since
the digest of the bytes already uploaded cannot be recomputed without them; but a part
S3 already has with the same MD5 is not uploaded again: the upload resumes from its
completed parts. A failed or cancelled transfer aborts its uploads.
"""

from __future__ import annotations

import ctypes
import mimetypes
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..core.s3store import Bucket, PartInfo, UploadLedger, content_md5
from ..core.sandbox import written_parts
from ..errors import DiskError, PathError, StorageUnavailable, quoted
from ..protocol.checksums import FileHash, chunk_sum, file_hash
from ..protocol.metadata import SUM_BYTES, Metadata
from ..protocol.ranges import RangeSet

__all__ = ["PART_BYTES", "S3Sink"]

#: Bytes of each part of a multipart upload (S3: 5 MiB to 5 GiB, at most MAX_PARTS parts).
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000
#: Parts of one transfer uploaded at once (each holds a part in memory while it goes).
UPLOADS_AT_ONCE = 4
#: Small files (one PUT each) of one transfer stored at once.
PUTS_AT_ONCE = 8
MAX_KEY_BYTES = 1024
_READ_CHUNK = 4 * 1024 * 1024
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

_fallocate: Callable[..., int] | None
try:
    _fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
except (AttributeError, OSError):
    _fallocate = None


def part_bytes_for(size: int) -> int:
    """The part size of a file of ``size`` bytes: PART_BYTES, or more (whole MiB) when
    the file would need more than MAX_PARTS parts."""
    mib = 1024 * 1024
    return max(PART_BYTES, -(-size // MAX_PARTS // mib) * mib)


@dataclass
class _File:
    """One file being received."""

    spool: int  # descriptor of its spool file
    size: int
    written: RangeSet = field(default_factory=RangeSet)
    hasher: FileHash = field(default_factory=file_hash)
    hashed: int = 0
    upload_id: str | None = None
    old_parts: dict[int, PartInfo] = field(default_factory=dict)  # from an earlier session
    etags: dict[int, str] = field(default_factory=dict)
    next_part: int = 0  # index (from 0) of the next part to upload


class Carry:
    """What the sessions of transfers into S3 that ended leave for the next session of
    the same transfer in this process: per file, its spool file (kept on disk) and what
    was written, hashed and stored of it (a part leaves the spool only once S3 has it).
    It lives as long as the process: a restarted server receives those files again."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, int], tuple[str, _File]] = {}

    def put(self, transfer_id: str, index: int, key: str, opened: _File) -> None:
        """Keep file ``index`` (its spool descriptor already closed)."""
        self._files[(transfer_id, index)] = (key, opened)

    def take(self, transfer_id: str, index: int, key: str) -> _File | None:
        """What an earlier session left of file ``index``, if it was stored as ``key``."""
        carried = self._files.pop((transfer_id, index), None)
        return carried[1] if carried is not None and carried[0] == key else None

    def drop(self, transfer_id: str) -> list[int]:
        """Forget what was kept of a transfer; the indexes of its files."""
        gone = [i for t, i in self._files if t == transfer_id]
        for index in gone:
            del self._files[(transfer_id, index)]
        return gone


class S3Sink:
    def __init__(self, bucket: Bucket, meta: Metadata, transfer_id: str, spool_dir: Path,
                 keep: set[int] | None = None, carry: Carry | None = None) -> None:
        """``keep``: the files an earlier session received a part of; ``carry``: where
        sessions leave what they have for the next one."""
        self.bucket = bucket
        self.meta = meta
        self.transfer_id = transfer_id
        self.spool_dir = spool_dir
        self.keep = set(keep or ())
        self.carry = carry or Carry()
        #: files of ``keep`` nothing is left of (found by :meth:`prepare`): received again
        self.lost: set[int] = set()
        self.paths: list[str] = []
        self._keys: list[str] = []
        self._files: dict[int, _File] = {}
        self._uploads: dict[int, tuple[str, str]] = {}  # file -> (key, upload id)
        self._pool: ThreadPoolExecutor | None = None
        self._ledger = UploadLedger(spool_dir, transfer_id)
        #: part uploads under way, oldest first
        self._pending: list[tuple[_File, Future[tuple[int, str]]]] = []

    # -- preparing ----------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Check every key and the bucket; return the ``s3://`` URL of each entry."""
        for entry in self.meta.files:
            try:
                parts = written_parts(self.meta.destination_path, entry.path)
            except PathError as exc:
                raise DiskError(f"Path refused: {exc.message}") from None
            key = self.bucket.sandbox.key(parts)
            if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                raise DiskError(f"Path {quoted(entry.path)} makes an S3 key longer than "
                                f"{MAX_KEY_BYTES} bytes.")
            if "\n" in key or "\r" in key:
                raise DiskError(f"Path {entry.path!r} contains a line break, which "
                                "trigger file lists cannot carry.")
            self._keys.append(key)
            self.paths.append(self.bucket.url(key))
        self.bucket.check()
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        for index, (key, upload_id) in self._ledger.load().items():
            if index < len(self._keys) and self._keys[index] == key:
                self._uploads[index] = (key, upload_id)
            else:  # of other metadata (the sender's files changed): not ours to resume
                self.bucket.abort(key, upload_id)
        self._ledger.save(self._uploads)
        for index in sorted(self.keep):
            carried = self.carry.take(self.transfer_id, index, self._keys[index])
            if carried is not None:
                try:
                    carried.spool = os.open(self._spool_path(index), os.O_RDWR | os.O_CLOEXEC)
                    self._files[index] = carried
                    continue
                except OSError:
                    pass
            self.lost.add(index)
        self.keep -= self.lost
        for index in self.carry.drop(self.transfer_id):  # (of files not in the checkpoint)
            self._spool_path(index).unlink(missing_ok=True)
        return self.paths

    def keep_existing(self, block_size: int) -> tuple[set[int], dict[int, list[int]]]:
        """The files the metadata's overwrite rule keeps as they are (an object being
        replaced as a whole or not at all, none is received in part)."""
        rule, skipped = self.meta.overwrite, set()
        for index, entry in enumerate(self.meta.files):
            if entry.size is None:
                continue
            found = self.bucket.head(self._keys[index])
            if found is None:
                continue
            if rule == "never" or (rule == "ifNewer" and entry.mtime_us <= found.mtime_us) \
                    or (rule == "ifDifferent" and (found.size, found.mtime_us) == (
                        entry.size, entry.mtime_us)) \
                    or (rule == "ifChecksumDiffers" and self._same_sums(index, found.size)):
                skipped.add(index)
        return skipped, {}

    def _same_sums(self, index: int, size: int) -> bool:
        entry, sums, chunk = self.meta.files[index], self.meta.sums, self.meta.chunk_bytes
        if sums is None or size != entry.size:
            return False
        wanted = sums[index] or b""
        for k, offset in enumerate(range(0, size, chunk)):
            data, _, _ = self.bucket.read(self._keys[index], offset, min(chunk, size - offset))
            if chunk_sum(data) != wanted[k * SUM_BYTES:(k + 1) * SUM_BYTES]:
                return False
        return True

    # -- writing ------------------------------------------------------------------------

    def _file(self, index: int) -> _File:
        opened = self._files.get(index)
        if opened is None:
            try:
                fd = os.open(self._spool_path(index),
                             os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise DiskError(f"Cannot spool {self.paths[index]} in {self.spool_dir}: "
                                f"{exc.strerror}.", True) from None
            opened = self._files[index] = _File(fd, self.meta.files[index].size or 0)
        return opened

    def write(self, writes: list[tuple[int, int, bytes]]) -> None:
        touched: set[int] = set()
        writes.sort(key=lambda w: (w[0], w[1]))
        for index, offset, data in writes:
            opened = self._file(index)
            try:
                os.pwrite(opened.spool, data, offset)
            except OSError as exc:
                raise DiskError(f"Cannot spool {self.paths[index]} in {self.spool_dir}: "
                                f"{exc.strerror}.", True) from None
            opened.written.add_range(offset, offset + len(data))
            if offset == opened.hashed:  # in order (the usual case): hashed at once
                opened.hasher.update(data)
                opened.hashed += len(data)
            touched.add(index)
        for index in touched:
            opened = self._files[index]
            self._hash(opened, opened.written.first_missing(opened.hashed))
            self._upload_ready(index, opened)

    def _hash(self, opened: _File, end: int) -> None:
        while opened.hashed < end:
            chunk = os.pread(opened.spool, min(_READ_CHUNK, end - opened.hashed),
                             opened.hashed)
            if not chunk:
                raise DiskError("A spool file is shorter than what was written to it.")
            opened.hasher.update(chunk)
            opened.hashed += len(chunk)

    def _upload_ready(self, index: int, opened: _File, last: bool = False) -> None:
        """Upload the parts hashed so far (``last``: the file's last part too)."""
        size = self.meta.files[index].size or 0
        part = part_bytes_for(size)
        if size <= PART_BYTES:
            return  # one PUT once verified
        while True:
            start = opened.next_part * part
            end = min(start + part, size)
            if start >= size or opened.hashed < end or (end == size and not last):
                break
            opened.next_part += 1
            number = opened.next_part
            if number in opened.etags:  # stored in an earlier session (see close_keeping)
                continue
            self._reap()
            data = os.pread(opened.spool, end - start, start)
            if opened.upload_id is None:
                opened.upload_id, opened.old_parts = self._start_upload(index)
            old = opened.old_parts.get(number)
            if old is not None and old.size == len(data) and \
                    old.etag == content_md5(data)[1]:
                self._stored_part(opened, number, old.etag)  # S3 has this part already
                continue
            self._pending.append((opened, self._executor().submit(
                self._send_part, self._keys[index], opened.upload_id, number, data)))

    def _send_part(self, key: str, upload_id: str, number: int, data: bytes
                   ) -> tuple[int, str]:
        return number, self.bucket.upload_part(key, upload_id, number, data)

    def _reap(self, wait: bool = False) -> None:
        """Collect the finished part uploads (raising the first failure); wait for all
        (``wait``), or while UPLOADS_AT_ONCE are under way."""
        pending = self._pending
        while pending and (wait or pending[0][1].done() or len(pending) >= UPLOADS_AT_ONCE):
            opened, future = pending.pop(0)
            self._stored_part(opened, *future.result())

    def _stored_part(self, opened: _File, number: int, etag: str) -> None:
        """Part ``number`` is in S3: its space in the spool is given back."""
        opened.etags[number] = etag
        if _fallocate is not None and opened.spool >= 0:
            part = part_bytes_for(opened.size)
            _fallocate(opened.spool, _PUNCH_HOLE, (number - 1) * part, part)

    def _start_upload(self, index: int) -> tuple[str, dict[int, PartInfo]]:
        """The file's multipart upload: an earlier session's (with its parts) or new."""
        key = self._keys[index]
        known = self._uploads.get(index)
        if known is not None:
            parts = self.bucket.parts(key, known[1])
            if parts is not None:
                return known[1], parts
        entry = self.meta.files[index]
        upload_id = self.bucket.start_upload(key, entry.mtime_us, _content_type(key))
        self._uploads[index] = (key, upload_id)
        self._ledger.save(self._uploads)
        return upload_id, {}

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(UPLOADS_AT_ONCE, PUTS_AT_ONCE), "jetstream-s3")
        return self._pool

    # -- committing -----------------------------------------------------------------------

    def commit_many(self, items: list[tuple[int, bytes, int]]) -> list[str | DiskError]:
        """Verify files and store them under their keys; per file, its URL or why not.
        Small files are PUT PUTS_AT_ONCE at a time (many small files are as many
        requests); a larger file's upload is completed once its parts are in."""
        results: dict[int, str | DiskError] = {}
        puts: deque[tuple[int, Future[None]]] = deque()
        try:
            for index, digest, size in items:
                try:
                    opened = self._verified(index, digest, size)
                    if size <= PART_BYTES:
                        while len(puts) >= PUTS_AT_ONCE:
                            self._stored(*puts.popleft(), results)
                        entry, key = self.meta.files[index], self._keys[index]
                        data = os.pread(opened.spool, size, 0) if size else b""
                        puts.append((index, self._executor().submit(
                            self.bucket.put, key, data, entry.mtime_us, _content_type(key))))
                    else:
                        self._upload_ready(index, opened, last=True)
                        self._reap(wait=True)
                        assert opened.upload_id is not None
                        self.bucket.complete(self._keys[index], opened.upload_id,
                                             opened.etags)
                        self._uploads.pop(index, None)
                        self._ledger.save(self._uploads)
                        self._close_file(index)
                        results[index] = self.paths[index]
                except DiskError as exc:
                    if isinstance(exc, StorageUnavailable):
                        raise  # the session pauses: the next one stores the file
                    self._drop(index)
                    results[index] = exc
            while puts:
                self._stored(*puts.popleft(), results)
        finally:
            for _, future in puts:  # (only when the endpoint went away)
                future.exception()
        return [results[index] for index, _, _ in items]

    def _stored(self, index: int, put: Future[None], results: dict[int, str | DiskError]
                ) -> None:
        """The outcome of a small file's PUT (StorageUnavailable raised: see commit_many)."""
        try:
            put.result()
        except DiskError as exc:
            if isinstance(exc, StorageUnavailable):
                raise
            self._drop(index)
            results[index] = exc
            return
        if index in self._uploads:  # (an earlier session's, of a larger file)
            self.bucket.abort(*self._uploads.pop(index))
            self._ledger.save(self._uploads)
        self._close_file(index)
        results[index] = self.paths[index]

    def _verified(self, index: int, digest: bytes, size: int) -> _File:
        """File ``index``, all ``size`` bytes of it received and matching ``digest``."""
        opened = self._file(index)
        if opened.written.end != size or opened.written.first_missing(0) < size:
            raise DiskError(f"{self.paths[index]}: received {opened.written.end} bytes, "
                            f"expected {size}.")
        self._hash(opened, size)
        if opened.hasher.digest() != digest:
            raise DiskError(f"{self.paths[index]}: the checksum of the received data does "
                            "not match the sender's; the object was not stored.")
        return opened

    def _drop(self, index: int) -> None:
        """Forget a file that is not delivered: its upload aborted, its spool removed."""
        self._settle()
        known = self._uploads.pop(index, None)
        if known is not None:
            try:
                self.bucket.abort(*known)
            except DiskError:
                self._uploads[index] = known  # tried again when the transfer is aborted
        self._ledger.save(self._uploads)
        self._close_file(index)

    def _settle(self) -> None:
        """Wait for the part uploads under way, whatever their outcome."""
        for _, future in self._pending:
            future.exception()
        self._pending.clear()

    def _spool_path(self, index: int) -> Path:
        return self.spool_dir / f"{self.transfer_id}-{index}.spool"

    def _close_file(self, index: int) -> None:
        opened = self._files.pop(index, None)
        if opened is not None:
            os.close(opened.spool)
            self._spool_path(index).unlink(missing_ok=True)

    # -- ending -----------------------------------------------------------------------------

    def sync(self) -> None:
        """A checkpoint: raise what failed meanwhile (uploads are recorded as they start)."""
        self._reap()

    def release(self) -> None:
        """End the session, keeping the uploads (and their parts) for a later one."""
        self.close_keeping()

    def close_keeping(self) -> None:
        """End the session, keeping the uploads, and carrying what it has of each file
        whose uploads all went through to the next session."""
        for opened, future in self._pending:
            if future.exception() is None:
                self._stored_part(opened, *future.result())
        self._pending.clear()
        for index, opened in list(self._files.items()):
            # (a part whose upload failed is still in the spool: it goes again)
            opened.next_part = min(
                [n - 1 for n in range(1, opened.next_part + 1) if n not in opened.etags],
                default=opened.next_part)
            os.close(opened.spool)
            opened.spool = -1
            self.carry.put(self.transfer_id, index, self._keys[index], opened)
            del self._files[index]
        self.close()

    def abort(self) -> None:
        """Abort every unfinished upload (none is left behind) and remove the spool."""
        for index in list(self._files):
            self._drop(index)
        for index in list(self._uploads):
            self._drop(index)
        self.close()

    def close(self) -> None:
        """Release the threads and the spool (the ledger holds what is still open)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for index in list(self._files):
            self._close_file(index)


def _content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"
