"""Writing a received transfer into the sandbox, safely (blocking code for one worker thread).

Every path is opened one component at a time from a descriptor of the sandbox folder, with
``O_NOFOLLOW``: a symlink anywhere under the sandbox, existing or swapped in while the
transfer runs, is never followed, so nothing is written outside it. Each file is written
to a hidden temporary name beside its target (``.jetstream-<transfer>-<n>.part``), then
fsynced, checked against the sender's BLAKE3 digest, given its mode and modification time,
renamed into place, and its folder fsynced. Files are created in the folder descriptor
they share (opened once for a run of files in one folder); before the rename the folder is
looked up again from the sandbox, and a file whose folder was moved or replaced meanwhile
is not delivered.

The digest of a file is computed as its data is written: whenever the bytes written from
the start of the file grow, the new bytes are hashed (from the buffers just written, or
read back for parts that arrived earlier out of order), so at the end only what was not
yet hashed is read back, and verification does not cost a second pass over the file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..core.sandbox import MAX_NAME_BYTES, long_name, virtual_parts, written_parts
from ..errors import DiskError, PathError, quoted
from ..protocol.checksums import FileHash, chunk_sum, file_hash
from ..protocol.layout import DIGEST
from ..protocol.metadata import SUM_BYTES, Metadata
from ..protocol.ranges import RangeSet

__all__ = ["FileSink"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IOV_MAX = 512
_READ_CHUNK = 4 * 1024 * 1024


def _allocate(fd: int, size: int) -> None:
    """Reserve the file's blocks up front: a full disk shows at once, not half way, and
    the file system lays the file out in one go. Only where the file system can do it
    without writing (fallocate(2)), and not for a small file (a few blocks, written at
    once: the call would cost more than it saves)."""
    if size < _ALLOCATE_FROM or _fallocate is None:
        return
    if _fallocate(fd, 0, 0, ctypes.c_int64(size)) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(code, os.strerror(code))


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to disk now, without
    waiting: the fsync at the end then has little left to do, and the page cache does
    not fill with dirty pages that stall every writer on the machine at once."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_fallocate: Callable[..., int] | None
_sync_file_range: Callable[..., int] | None
_syncfs: Callable[..., int] | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _syncfs = _libc.syncfs
    _syncfs.argtypes = [ctypes.c_int]
except (AttributeError, OSError):  # not glibc/Linux
    _fallocate = _sync_file_range = _syncfs = None
#: Files committed together from which one syncfs replaces an fsync each.
GROUP_SYNC = 8
_SYNC_FILE_RANGE_WRITE = 2
#: Files from this size on get their blocks reserved when created.
_ALLOCATE_FROM = 64 * 1024
#: Written bytes of a file after which its write-back is started.
_WRITEBACK_BYTES = 32 * 1024 * 1024


def _process_umask() -> int | None:
    """This process's umask, read without changing it (Linux 4.7+), if it can be."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


_UMASK = _process_umask()


#: Write errors the operator can cure (free space, fix permissions): the transfer keeps
#: what it has on disk and can be resumed.
_CURABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


@dataclass(eq=False)
class _Folder:
    """A folder files are created in: open while a file in it is, or while it is the
    last folder opened (the next file most likely goes there too)."""
    fd: int
    ident: tuple[int, int]  # (st_dev, st_ino), to see whether its path still leads here
    users: int = 0


@dataclass
class _Open:
    folder: _Folder
    fd: int
    temp: str
    name: str
    written: RangeSet  # byte ranges written in this session
    hasher: FileHash  # of the bytes [0, hashed)
    #: created empty in this session, with its final mode (the umask allowing it)
    fresh: bool
    hashed: int = 0
    unflushed: int = 0  # bytes written since the disk was last asked to write back


class FileSink:
    def __init__(self, root: str, meta: Metadata, transfer_id: str,
                 keep: set[int] | None = None) -> None:
        """``keep``: files whose temporary files hold data of an earlier session."""
        self.root = root
        self.meta = meta
        self.transfer_id = transfer_id
        self.keep = keep or set()
        #: files of ``keep`` whose temporary file is gone (found by :meth:`prepare`):
        #: their data must be received again
        self.lost: set[int] = set()
        self._open: dict[int, _Open] = {}
        self._root_fd = -1
        self.paths: list[str] = []  # absolute paths on disk, per manifest entry
        self._parts: list[list[str]] = []
        self._last_folder: tuple[tuple[str, ...], _Folder] | None = None  # see _folder

    # -- preparing ----------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Check every path, create empty folders; return the absolute paths."""
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DiskError(f"Sandbox folder {self.root} does not exist on the receiving "
                            f"server ({exc.strerror}).") from None
        destination_path = self.meta.destination_path or ""
        try:
            long = long_name(virtual_parts(destination_path))
        except PathError as exc:
            raise DiskError(f"destinationPath refused: {exc.message}") from None
        if long is not None:
            raise DiskError(f"destinationPath has a name longer than {MAX_NAME_BYTES} bytes: "
                            f"{quoted(long)}.")
        line_break = "\n" in destination_path
        for entry in self.meta.files:
            try:
                parts = written_parts(self.meta.destination_path, entry.path)
            except PathError as exc:
                raise DiskError(f"Path refused: {exc.message}") from None
            long = long_name(parts)
            if long is not None:
                raise DiskError(f"Path {quoted(entry.path)} has a name longer than "
                                f"{MAX_NAME_BYTES} bytes: {quoted(long)}.")
            if line_break or "\n" in entry.path:
                raise DiskError(f"Path {entry.path!r} contains a line break, which "
                                "trigger file lists cannot carry.")
            self._parts.append(parts)
            self.paths.append(os.path.join(self.root, "/".join(parts)))
        for index, entry in enumerate(self.meta.files):
            if entry.size is None:
                fd = self._dir(self._parts[index], create=True, path=self.paths[index])
                try:
                    os.utime(fd, ns=(entry.mtime_us * 1000, entry.mtime_us * 1000))
                finally:
                    os.close(fd)
        self.lost = {index for index in self.keep if not self._kept(index)}
        self.keep -= self.lost
        return self.paths

    def keep_existing(self, block_size: int) -> tuple[set[int], dict[int, list[int]]]:
        """Apply the metadata's overwrite rule to the files that exist: the files kept as
        they are (not received), and per file received only in part, the chunks of the
        existing file that match the sender's (copied into its temporary file, which is
        then kept like an earlier session's: the rest is received into it)."""
        rule, skipped, reused = self.meta.overwrite, set(), {}
        for index, entry in enumerate(self.meta.files):
            if entry.size is None:
                continue
            found = self._existing(index)
            if found is None:
                continue
            fd, st = found
            try:
                mtime_us = st.st_mtime_ns // 1000
                if rule == "never" or (rule == "ifNewer" and entry.mtime_us <= mtime_us) or (
                        rule == "ifDifferent" and (st.st_size, mtime_us) == (
                            entry.size, entry.mtime_us)):
                    skipped.add(index)
                elif rule == "ifChecksumDiffers":
                    chunks = self._matching_chunks(index, fd, st.st_size)
                    if len(chunks) == self._chunk_count(index) and st.st_size == entry.size:
                        skipped.add(index)
                    elif chunks and entry.size + DIGEST.size > block_size:
                        self._reuse(index, fd, chunks)
                        reused[index] = chunks
            except OSError as exc:
                raise self._write_error(index, exc) from None
            finally:
                os.close(fd)
        return skipped, reused

    def _existing(self, index: int) -> tuple[int, os.stat_result] | None:
        """The regular file at file ``index``'s path (open for reading), if there is one."""
        try:
            folder = self._dir(self._parts[index][:-1], create=False, path=self.paths[index])
        except (DiskError, OSError):
            return None
        try:
            fd = os.open(self._parts[index][-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=folder)
        except OSError:
            return None
        finally:
            os.close(folder)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, st

    def _chunk_count(self, index: int) -> int:
        return -(-(self.meta.files[index].size or 0) // self.meta.chunk_bytes)

    def _matching_chunks(self, index: int, fd: int, existing: int) -> list[int]:
        """The chunks of the file to receive whose bytes the existing file (``existing``
        bytes long) has at the same place."""
        sums, chunk = self.meta.sums, self.meta.chunk_bytes
        assert sums is not None
        wanted, size = sums[index] or b"", self.meta.files[index].size or 0
        out = []
        for k in range(self._chunk_count(index)):
            start, end = k * chunk, min((k + 1) * chunk, size)
            if end > existing:
                break
            if chunk_sum(os.pread(fd, end - start, start)) == \
                    wanted[k * SUM_BYTES:(k + 1) * SUM_BYTES]:
                out.append(k)
        return out

    def _reuse(self, index: int, source: int, chunks: list[int]) -> None:
        """Start file ``index``'s temporary file with the existing file's matching chunks."""
        chunk, size = self.meta.chunk_bytes, self.meta.files[index].size or 0
        folder = self._dir(self._parts[index][:-1], create=False, path=self.paths[index])
        try:
            fd = os.open(self._temp_name(index), os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
        finally:
            os.close(folder)
        try:
            os.ftruncate(fd, size)
            for k in chunks:
                start = k * chunk
                length = min(chunk, size - start)
                os.pwrite(fd, os.pread(source, length, start), start)
            os.fsync(fd)  # (a checkpoint counts these blocks as received)
        finally:
            os.close(fd)
        self.keep.add(index)

    def _kept(self, index: int) -> bool:
        """Whether the temporary file an earlier session wrote for file ``index`` is still
        there (one renamed into place after the last checkpoint is not)."""
        try:
            fd = self._dir(self._parts[index][:-1], create=False, path=self.paths[index])
        except DiskError:
            return False
        try:
            st = os.stat(self._temp_name(index), dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(fd)
        return stat.S_ISREG(st.st_mode)

    def _temp_name(self, index: int) -> str:
        return f".jetstream-{self.transfer_id}-{index}.part"

    def _folder(self, parts: list[str], path: str) -> _Folder:
        """The folder of a file to create (created if need be), one more user counted: the
        last one opened when it is the same path (no path walk per file; a folder moved
        or replaced since then is caught before the rename)."""
        key = tuple(parts)
        last = self._last_folder
        if last is None or last[0] != key:
            fd = self._dir(parts, create=True, path=path)
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            folder = _Folder(fd, (st.st_dev, st.st_ino), users=1)  # the last folder's use
            self._forget_last_folder()
            last = self._last_folder = key, folder
        last[1].users += 1
        return last[1]

    @staticmethod
    def _leave(folder: _Folder) -> None:
        folder.users -= 1
        if folder.users == 0:
            os.close(folder.fd)

    def _forget_last_folder(self) -> None:
        if self._last_folder is not None:
            self._leave(self._last_folder[1])
            self._last_folder = None

    def _dir(self, parts: list[str], create: bool, path: str) -> int:
        fd = os.dup(self._root_fd)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DiskError(f"Cannot write {path}: {part!r} on the way is a symlink or "
                                "not a folder (symlinks are not followed in the sandbox)."
                                ) from None
            if not create:  # looking again before the rename: the folder went away
                raise DiskError(f"Cannot write {path}: a folder on its way was moved or "
                                f"removed while the transfer ran ({exc.strerror}).") from None
            raise DiskError(f"Cannot create the folders of {path}: {exc.strerror}.",
                            exc.errno in _CURABLE) from None
        return fd

    def _file(self, index: int) -> _Open:
        opened = self._open.get(index)
        if opened is None:
            opened = self._open[index] = self._create(index)
        return opened

    def _create(self, index: int) -> _Open:
        """Open file ``index``'s temporary file (creating its folders), its size reserved."""
        parts, path = self._parts[index], self.paths[index]
        folder = self._folder(parts[:-1], path)
        temp = self._temp_name(index)
        mode = self._mode(index)
        # a new file gets its final mode at once (one system call less a file) unless the
        # umask would take bits from it; one kept from an earlier session is as it was
        fresh = index not in self.keep and _UMASK is not None and not mode & _UMASK
        try:
            truncate = 0 if index in self.keep else os.O_TRUNC
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | truncate | os.O_NOFOLLOW |
                         os.O_CLOEXEC, mode if fresh else 0o600, dir_fd=folder.fd)
        except OSError as exc:
            self._leave(folder)
            raise DiskError(f"Cannot write {path}: {exc.strerror}.",
                            exc.errno in _CURABLE) from None
        opened = _Open(folder, fd, temp, parts[-1], RangeSet(), file_hash(), fresh)
        try:
            _allocate(fd, self.meta.files[index].size or 0)
        except OSError as exc:
            self._shut(opened, remove=True)
            raise self._write_error(index, exc) from None
        return opened

    def _shut(self, opened: _Open, remove: bool) -> None:
        """Close a temporary file, and remove it if ``remove``."""
        if remove:
            try:
                os.unlink(opened.temp, dir_fd=opened.folder.fd)
            except OSError:
                pass
        os.close(opened.fd)
        self._leave(opened.folder)

    # -- writing ------------------------------------------------------------------------

    def write(self, writes: list[tuple[int, int, bytes]]) -> None:
        """Write blocks, coalescing contiguous ones into one pwritev each."""
        writes.sort(key=lambda w: (w[0], w[1]))
        i = 0
        while i < len(writes):
            file, offset, data = writes[i]
            buffers = [data]
            end = offset + len(data)
            j = i + 1
            while j < len(writes) and writes[j][0] == file and writes[j][1] == end and \
                    len(buffers) < _IOV_MAX:
                buffers.append(writes[j][2])
                end += len(writes[j][2])
                j += 1
            opened = self._file(file)
            try:
                written = os.pwritev(opened.fd, buffers, offset)
                while written < end - offset:  # short write: finish it
                    rest = b"".join(buffers)[written:]
                    written += os.pwrite(opened.fd, rest, offset + written)
                opened.written.add_range(offset, end)
                self._hash_ahead(opened, offset, end, buffers)
                opened.unflushed += end - offset
                if opened.unflushed >= _WRITEBACK_BYTES:
                    opened.unflushed = 0
                    _start_writeback(opened.fd)
            except OSError as exc:
                raise self._write_error(file, exc) from None
            i = j

    def _hash_ahead(self, opened: _Open, offset: int, end: int, buffers: list[bytes]
                    ) -> None:
        """Hash what is now written contiguously from ``opened.hashed`` on: from
        ``buffers`` (just written at [offset, end)) where they cover it, else from the
        file."""
        if offset == opened.hashed and opened.written.end == end:
            for buffer in buffers:  # in order, nothing written beyond: the usual case
                opened.hasher.update(buffer)
            opened.hashed = end
            return
        contiguous = opened.written.first_missing(opened.hashed)
        if opened.hashed < offset:
            self._hash_from_file(opened, min(offset, contiguous))
        start = offset
        for buffer in buffers:  # one pass: they are contiguous from offset
            stop = start + len(buffer)
            if start <= opened.hashed < stop:
                opened.hasher.update(memoryview(buffer)[opened.hashed - start:])
                opened.hashed = stop
            start = stop
        self._hash_from_file(opened, contiguous)

    @staticmethod
    def _hash_from_file(opened: _Open, end: int) -> None:
        while opened.hashed < end:
            chunk = os.pread(opened.fd, min(_READ_CHUNK, end - opened.hashed), opened.hashed)
            if not chunk:
                raise OSError(errno.EIO, "the file is shorter than what was written")
            opened.hasher.update(chunk)
            opened.hashed += len(chunk)

    def _write_error(self, file: int, exc: OSError) -> DiskError:
        curable = exc.errno in _CURABLE
        if exc.errno == errno.ENOSPC:
            return DiskError(f"No space left on the receiving server's disk writing "
                             f"{self.paths[file]}.", curable)
        return DiskError(f"Cannot write {self.paths[file]}: {exc.strerror}.", curable)

    def commit_many(self, items: list[tuple[int, bytes, int]]) -> list[str | DiskError]:
        """Verify files and put them under their final names, durably; per file, its
        path or why it was not delivered (its temporary file is then removed).

        Each file's data is made durable before its rename, and its folder after it. A
        group of GROUP_SYNC files or more is made durable with one syncfs(2) of the file
        system instead of an fsync per file (many small files cost one flush, not one
        each)."""
        results: dict[int, str | DiskError] = {}
        ready: list[tuple[int, _Open]] = []
        for index, digest, size in items:
            opened = self._file(index)
            try:
                self._verify(index, opened, digest, size)
                ready.append((index, opened))
            except (OSError, DiskError) as exc:
                results[index] = self._discard(index, opened, exc)
        try:
            if len(ready) >= GROUP_SYNC and _syncfs is not None:
                if _syncfs(self._root_fd) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            else:
                for _, opened in ready:
                    os.fsync(opened.fd)
        except OSError as exc:
            for index, opened in ready:
                results[index] = self._discard(index, opened, exc)
            ready = []
        folders: dict[tuple[int, int], int] = {}
        in_place: dict[tuple[int, int], bool] = {}
        renamed: list[int] = []
        for index, opened in ready:
            folder = opened.folder.ident
            # one look per folder while it is in place; each file's own once it moved
            moved = None if in_place.get(folder) else self._moved(index, folder)
            in_place[folder] = moved is None
            if moved is not None:
                results[index] = self._discard(index, opened, moved)
                continue
            try:
                os.rename(opened.temp, opened.name, src_dir_fd=opened.folder.fd,
                          dst_dir_fd=opened.folder.fd)
            except OSError as exc:
                results[index] = self._discard(index, opened, exc)
                continue
            folders.setdefault(folder, opened.folder.fd)
            results[index] = self.paths[index]
            renamed.append(index)
        try:
            for fd in folders.values():
                os.fsync(fd)
        except OSError as exc:  # in place, but not known to be durable: say so
            results.update({i: self._write_error(i, exc) for i in renamed})
        for index, opened in ready:
            self._close(index, opened)
        return [results[index] for index, _, _ in items]

    def _moved(self, index: int, folder: tuple[int, int]) -> DiskError | None:
        """Why file ``index``'s folder, opened as ``folder`` (device, inode) when its
        temporary file was made, is no longer at its path, if it is not: the file would
        be renamed into place where its path no longer leads."""
        path = self.paths[index]
        try:
            fd = self._dir(self._parts[index][:-1], create=False, path=path)
        except DiskError as exc:
            return exc
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != folder:
            return DiskError(f"Cannot write {path}: a folder on its way was moved or "
                             "replaced while the transfer ran.")
        return None

    def _mode(self, index: int) -> int:
        return 0o755 if self.meta.files[index].executable else 0o644

    def _verify(self, index: int, opened: _Open, digest: bytes, size: int) -> None:
        entry, path = self.meta.files[index], self.paths[index]
        # a file created empty in this session holds what was written, no more
        actual = opened.written.end if opened.fresh else os.fstat(opened.fd).st_size
        if actual != size:
            raise DiskError(f"{path}: received {actual} bytes, expected {size}.")
        self._hash_from_file(opened, size)  # what was not hashed on the way
        if opened.hasher.digest() != digest:
            raise DiskError(f"{path}: the checksum of the received data does not match "
                            "the sender's; the file was not delivered.")
        if not opened.fresh:
            os.fchmod(opened.fd, self._mode(index))
        os.utime(opened.fd, ns=(entry.mtime_us * 1000, entry.mtime_us * 1000))

    def _discard(self, index: int, opened: _Open, exc: OSError | DiskError) -> DiskError:
        """Remove a file that will not be delivered; why, as a DiskError."""
        self._close(index, opened, remove=True)
        return exc if isinstance(exc, DiskError) else self._write_error(index, exc)

    def _close(self, index: int, opened: _Open, remove: bool = False) -> None:
        if self._open.pop(index, None) is not None:
            self._shut(opened, remove)

    def sync(self) -> None:
        """Make everything written so far durable (a checkpoint)."""
        for opened in self._open.values():
            try:
                os.fsync(opened.fd)
            except OSError as exc:
                raise self._write_error(self._index(opened), exc) from None

    def _index(self, opened: _Open) -> int:
        return next(i for i, o in self._open.items() if o is opened)

    def release(self) -> None:
        """Make what is written durable and close everything, keeping the temporary
        files for a later session."""
        self.sync()
        self.close_keeping()

    def close_keeping(self) -> None:
        """Close everything, keeping the temporary files (what the last checkpoint
        recorded in them is durable)."""
        for opened in self._open.values():
            self._shut(opened, remove=False)
        self._open.clear()
        self.close()

    def abort(self) -> None:
        """Remove the temporary files of unfinished files."""
        for opened in self._open.values():
            self._shut(opened, remove=True)
        self._open.clear()
        self.close()

    def close(self) -> None:
        self._forget_last_folder()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
