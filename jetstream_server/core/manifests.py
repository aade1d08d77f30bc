"""Building a manifest's file list from (source, destination) mappings.

:func:`build_file_list` is plain blocking code; the server runs it in a worker thread.
In an S3 sandbox it lists objects instead (HEAD, then LIST by prefix).
Directories expand recursively (entries in name order); an empty directory becomes one
``isEmptyDir`` entry; symlinks are followed as long as they stay inside the sandbox, and a
directory that contains itself through a symlink is refused. Any problem raises
:class:`ManifestError` with a message that names the path.
"""

from __future__ import annotations

import os
import stat

from ..errors import DiskError, ManifestError, PathError, quoted
from ..protocol.metadata import MAX_FILES
from .objects import FileMapping
from .s3store import Bucket
from .sandbox import MAX_NAME_BYTES, long_name, resolve_in_sandbox, virtual_parts
from .sandboxes import S3Sandbox, Sandbox

__all__ = ["build_file_list", "parse_console_mapping"]

#: A manifest may hold at most this many entries (a bound on memory and on API answers;
#: the most one transfer carries).
MAX_MANIFEST_ENTRIES = MAX_FILES


def parse_console_mapping(text: str) -> tuple[str, str]:
    """Split a console ``SRC:DST`` mapping. ``::`` separates when present (paths with
    drive letters); otherwise the first ``:`` does."""
    sep = "::" if "::" in text else ":"
    src, found, dst = text.partition(sep)
    if not found or not src or not dst:
        raise ValueError(f"File mapping {text!r} must look like SOURCE:DESTINATION.")
    return src, dst


def build_file_list(root: Sandbox, requested: list[tuple[str, str]]) -> list[FileMapping]:
    """The manifest entries for ``requested`` (source, destination) pairs in the sandbox
    ``root``: a folder, or a place in an S3 bucket (see :func:`_add_objects`)."""
    files: list[FileMapping] = []
    try:
        bucket = Bucket(root) if isinstance(root, S3Sandbox) else None
    except DiskError as exc:
        raise ManifestError(exc.message) from None
    for src, dst in requested:
        try:
            long = long_name(virtual_parts(dst))
            if bucket is not None:
                parts = virtual_parts(src)
            else:
                assert isinstance(root, str)
                real = resolve_in_sandbox(root, src)
        except PathError as exc:
            raise ManifestError(exc.message) from None
        if long is not None:
            raise ManifestError(f"Destination path {quoted(dst)} has a name longer than "
                                f"{MAX_NAME_BYTES} bytes: {quoted(long)}.")
        if not dst.strip("/"):
            raise ManifestError(f"Destination path {dst!r} names no file.")
        if "\n" in dst or "\r" in dst:
            raise ManifestError(f"Destination path {dst!r} contains a line break.")
        if bucket is not None:
            try:
                _add_objects(bucket, parts, src, dst, files)
            except DiskError as exc:
                raise ManifestError(f"Cannot list {src}: {exc.message}") from None
        else:
            assert isinstance(root, str)
            _add(root, real, src, dst, files, ())
    seen: dict[str, str] = {}
    for entry in files:
        earlier = seen.setdefault(entry.dest_path, entry.src_path)
        if earlier != entry.src_path:
            raise ManifestError(
                f"{earlier} and {entry.src_path} both map to destination {entry.dest_path}."
            )
    return files


def _add_objects(bucket: Bucket, parts: list[str], src: str, dst: str,
                 files: list[FileMapping]) -> None:
    """The object ``src`` names, or else every object under it as under a folder (S3 has
    no folders: a prefix ending in ``/`` stands for one; its zero-byte marker objects,
    keys ending in ``/``, are left out). An object's time is when it was stored (what a
    listing tells, and what each read checks). A key that no path names (an empty or ``.`` or
    ``..`` component) is refused."""
    key = bucket.sandbox.key(parts)
    found = bucket.head(key) if parts else None
    if found is not None:
        _append(files, FileMapping(src, dst, found.size, False, False, found.stored_us))
        return
    prefix = key + "/" if parts else bucket.sandbox.prefix
    listed = False
    for obj in bucket.list(prefix):
        relative = obj.key[len(prefix):]
        listed = True
        if not relative or relative.endswith("/"):
            continue
        try:
            ok = "/".join(virtual_parts(relative)) == relative
        except PathError:
            ok = False
        if not ok:
            raise ManifestError(f"Object key {quoted(obj.key)} has a component no path can "
                                "name (empty, '.' or '..'): it cannot be sent.")
        _append(files, FileMapping(src.rstrip("/") + "/" + relative,
                                   dst.rstrip("/") + "/" + relative, obj.size, False, False,
                                   obj.stored_us))
    if not listed:
        raise ManifestError(f"Cannot read {src}: no object or prefix "
                            f"{bucket.url(key)} in the S3 sandbox.")


def _add(root: str, real: os.PathLike[str] | str, src: str, dst: str,
         files: list[FileMapping], parents: tuple[tuple[int, int], ...]) -> None:
    try:
        st = os.stat(real)
    except OSError as exc:
        raise ManifestError(f"Cannot read {src}: {exc.strerror}.") from None
    if stat.S_ISREG(st.st_mode):
        _append(files, FileMapping(src, dst, st.st_size, False,
                                   bool(st.st_mode & 0o111), st.st_mtime_ns // 1000))
    elif stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in parents:
            raise ManifestError(f"{src} is a directory that contains itself (symlink loop).")
        try:
            names = sorted(os.listdir(real))
        except OSError as exc:
            raise ManifestError(f"Cannot list {src}: {exc.strerror}.") from None
        if not names:
            _append(files, FileMapping(src, dst, 0, True, False, st.st_mtime_ns // 1000))
        for name in names:
            child_src = src.rstrip("/") + "/" + name
            try:
                child_real = resolve_in_sandbox(root, child_src)
            except PathError as exc:
                raise ManifestError(exc.message) from None
            _add(root, child_real, child_src, dst.rstrip("/") + "/" + name, files,
                 (*parents, key))
    else:
        raise ManifestError(f"{src} is not a regular file or a directory.")


def _append(files: list[FileMapping], entry: FileMapping) -> None:
    if len(files) >= MAX_MANIFEST_ENTRIES:
        raise ManifestError(f"Manifest has more than {MAX_MANIFEST_ENTRIES} entries.")
    files.append(entry)
