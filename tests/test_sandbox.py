"""Sandbox placeholders and confinement, and manifest building from real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jetstream_server.core.manifests import build_file_list, parse_console_mapping
from jetstream_server.core.sandbox import (
    expand_sandbox,
    open_in_sandbox,
    real_sandbox,
    resolve_in_sandbox,
    virtual_parts,
)
from jetstream_server.errors import ManifestError, PathOutside, PathRefused


@pytest.mark.parametrize(("template", "user", "expected"), [
    ("/storage/%u", "alice", "/storage/alice"),
    ("/storage/%d/%u", "alice@corp.example", "/storage/corp.example/alice"),
    ("/storage/%f", "CORP\\alice", "/storage/CORP\\alice"),
    ("/storage/%d-%u", "CORP\\alice", "/storage/CORP-alice"),
    ("/s/100%%/%u%x", "bob", "/s/100%/bob%x"),
    ("/plain", "bob", "/plain"),
])
def test_placeholders_expand(template: str, user: str, expected: str) -> None:
    assert expand_sandbox(template, user) == expected


def test_virtual_paths_refuse_dotdot_and_nul() -> None:
    assert virtual_parts("/a/./b//c/") == ["a", "b", "c"]
    with pytest.raises(PathRefused, match=r"'\.\.'"):
        virtual_parts("/a/../../etc")
    with pytest.raises(PathRefused, match="NUL"):
        virtual_parts("/a\x00b")


def test_paths_resolve_inside_the_sandbox_and_symlinks_cannot_leave(tmp_path: Path) -> None:
    root = tmp_path / "box"
    (root / "in").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", root / "escape")
    os.symlink(root / "in", root / "inner-link")
    assert resolve_in_sandbox(str(root), "/in") == root / "in"
    assert resolve_in_sandbox(str(root), "in") == root / "in"
    assert resolve_in_sandbox(str(root), "/inner-link") == root / "in"
    with pytest.raises(PathOutside, match="outside the sandbox"):
        resolve_in_sandbox(str(root), "/escape")


def test_files_open_inside_the_sandbox_and_symlinks_cannot_leave(tmp_path: Path) -> None:
    root = tmp_path / "box"
    (root / "in").mkdir(parents=True)
    (root / "in" / "f").write_text("inside")
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", root / "escape")
    os.symlink(root / "in" / "f", root / "link")
    real_root = real_sandbox(str(root / ".." / "box"))
    assert real_root == str(root)
    for path in ("/in/f", "in/f", "/link"):
        fd = open_in_sandbox(real_root, path)
        try:
            assert os.read(fd, 100) == b"inside"
        finally:
            os.close(fd)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PathOutside, match="Path /escape leads outside the sandbox"):
        open_in_sandbox(real_root, "/escape")
    assert len(os.listdir("/proc/self/fd")) == before  # the refused file is closed
    with pytest.raises(FileNotFoundError):
        open_in_sandbox(real_root, "/missing")
    with pytest.raises(PathRefused, match="does not exist"):
        real_sandbox(str(tmp_path / "nowhere"))


def _tree(root: Path) -> None:
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "empty").mkdir()
    (root / "data" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "data" / "run.sh", 0o755)
    (root / "data" / "sub" / "name with spaces é.txt").write_bytes(b"12345")
    (root / "data" / "zero").write_bytes(b"")
    os.utime(root / "data" / "zero", ns=(1_600_000_000_123_456_000, 1_600_000_000_123_456_000))


def test_directories_expand_with_sizes_modes_times_and_empty_dirs(tmp_path: Path) -> None:
    _tree(tmp_path)
    files = build_file_list(str(tmp_path), [("/data", "/dst")])
    by_dest = {f.dest_path: f for f in files}
    assert sorted(by_dest) == ["/dst/empty", "/dst/run.sh", "/dst/sub/name with spaces é.txt",
                               "/dst/zero"]
    assert by_dest["/dst/empty"].is_empty_dir and by_dest["/dst/empty"].file_size == 0
    assert by_dest["/dst/run.sh"].executable
    assert not by_dest["/dst/zero"].executable and by_dest["/dst/zero"].file_size == 0
    assert by_dest["/dst/zero"].modification_time_us == 1_600_000_000_123_456
    assert by_dest["/dst/sub/name with spaces é.txt"].file_size == 5
    assert by_dest["/dst/sub/name with spaces é.txt"].src_path == \
        "/data/sub/name with spaces é.txt"


@pytest.mark.parametrize(("mapping", "message"), [
    (("/missing", "/x"), "Cannot read /missing"),
    (("/data/../..", "/x"), r"'\.\.'"),
    (("/data/zero", "/x/../y"), r"'\.\.'"),
    (("/data/zero", "/"), "names no file"),
    (("/data/zero", "/a\nb"), "line break"),
])
def test_bad_mappings_fail_naming_the_path(tmp_path: Path, mapping: tuple[str, str],
                                           message: str) -> None:
    _tree(tmp_path)
    with pytest.raises(ManifestError, match=message):
        build_file_list(str(tmp_path), [mapping])


def test_two_sources_cannot_share_a_destination(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(ManifestError, match="both map to destination /x"):
        build_file_list(str(tmp_path), [("/data/zero", "/x"), ("/data/run.sh", "/x")])


def test_symlink_loops_and_escapes_inside_directories_are_refused(tmp_path: Path) -> None:
    _tree(tmp_path)
    os.symlink(tmp_path / "data", tmp_path / "data" / "sub" / "loop")
    with pytest.raises(ManifestError, match="contains itself"):
        build_file_list(str(tmp_path), [("/data", "/d")])
    os.unlink(tmp_path / "data" / "sub" / "loop")
    os.symlink("/etc", tmp_path / "data" / "sub" / "etc")
    with pytest.raises(ManifestError, match="outside the sandbox"):
        build_file_list(str(tmp_path), [("/data", "/d")])


def test_console_mappings_split_on_the_first_colon_or_on_double_colon() -> None:
    assert parse_console_mapping("/a/b:/c/d") == ("/a/b", "/c/d")
    assert parse_console_mapping("/a:/c:d") == ("/a", "/c:d")
    assert parse_console_mapping("C:\\x::D:\\y") == ("C:\\x", "D:\\y")
    with pytest.raises(ValueError):
        parse_console_mapping("/only-source")
