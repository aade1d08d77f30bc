"""Reading a manifest's files for sending: read-ahead in a thread, hashing on the way.

A reader thread reads the files in manifest order in chunks (a whole number of blocks,
about 4 MiB; a small file is one chunk), hashes each file (BLAKE3) as it goes, and
keeps a window of about 32 MiB ahead of and behind the send position (so many small
files are read ahead as well as one large one). It wakes the event loop only when the
sender is waiting for it. :meth:`FileSource.block` answers from that window; for a
block that has fallen behind it (a late retransmission) it reads the block directly, from
the page cache as a rule. A file whose size or modification time differs from the
manifest, or that changes while it is read, fails the transfer with a message naming it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ..core.objects import FileMapping
from ..core.s3store import Bucket
from ..core.sandbox import open_in_sandbox, real_sandbox, virtual_parts
from ..core.sandboxes import S3Sandbox, Sandbox
from ..errors import DiskError, PathError, SourceError, SourceUnavailable, StorageUnavailable
from ..protocol.checksums import FileHash, chunk_sum, file_hash
from ..protocol.layout import DIGEST, Slot

__all__ = ["FileSource", "LocalFiles", "ObjectFiles", "Reader", "chunk_sums", "reader_for"]

CHUNK_TARGET = 4 * 1024 * 1024
AHEAD_BYTES = 32 * 1024 * 1024
BEHIND_BYTES = 32 * 1024 * 1024
MAX_AHEAD_CHUNKS = 16384  # (zero-byte files are chunks of no bytes)
MAX_OPEN_FILES = 64


class Reader(Protocol):
    """Reads the manifest's files where they are (a local folder, an S3 bucket); any
    failure is a SourceError naming the file."""

    def read(self, index: int, length: int, offset: int) -> bytes:
        """``length`` bytes of file ``index`` at ``offset``, as the manifest saw it."""
        ...

    def check(self, index: int) -> None:
        """After its last byte was read: that file ``index`` did not change meanwhile."""
        ...

    def close(self) -> None:
        ...


class FileSource:
    def __init__(self, reader: Reader, files: list[FileMapping], block_size: int,
                 on_ready: Callable[[], None]) -> None:
        self.reader = reader
        self.files = files
        self.chunk = max(CHUNK_TARGET // block_size, 1) * block_size
        self.on_ready = on_ready
        # the sequence of chunks to read: (file index, chunk index)
        self._order: list[tuple[int, int]] = []
        self._position: dict[tuple[int, int], int] = {}
        self._start: list[int] = [0]  # bytes before each chunk of the order
        for index, entry in enumerate(files):
            if entry.is_empty_dir:
                continue
            count = max(-(-entry.file_size // self.chunk), 1)  # zero-byte: one empty chunk
            for c in range(count):
                self._position[(index, c)] = len(self._order)
                self._order.append((index, c))
                self._start.append(self._start[-1] + min(
                    self.chunk, max(entry.file_size - c * self.chunk, 0)))
        self._cache: dict[int, bytes] = {}
        self._evicted = 0  # chunks before this position have left the cache
        self._waiting = False  # the sender waits for the reader
        self._digests: dict[int, bytes] = {}
        self._hashes: dict[int, FileHash] = {}
        self._error: SourceError | None = None
        self._wanted = 0
        self._read_pos = 0
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._reader, name="jetstream-source",
                                        daemon=True)
        self._thread.start()

    # -- the event loop side --------------------------------------------------------------

    def block(self, slot: Slot) -> bytes | memoryview | None:
        if self._error is not None:
            raise type(self._error)(self._error.message)
        if slot.digest:
            digest = self._digests.get(slot.file)
            if digest is None:
                last = self._position[(slot.file, max(
                    -(-self.files[slot.file].file_size // self.chunk) - 1, 0))]
                return self.block(slot) if self._wait_for(last) else None
            tail = DIGEST.pack(digest, self.files[slot.file].file_size)
            if slot.length == DIGEST.size:
                return tail
            data = self.block(Slot(slot.file, 0, slot.length - DIGEST.size))  # a small file
            return None if data is None else bytes(data) + tail
        chunk_index, within = divmod(slot.offset, self.chunk)
        position = self._position[(slot.file, chunk_index)]
        data = self._cache.get(position)
        if data is not None:
            self._want(position)
            return memoryview(data)[within:within + slot.length]
        if position < self._read_pos:  # behind the window: read it directly
            return self.reader.read(slot.file, slot.length, slot.offset)
        return self.block(slot) if self._wait_for(position) else None

    def _wait_for(self, position: int) -> bool:
        """The sender needs chunk ``position``: True if it was read meanwhile, else the
        reader will call on_ready once it has read another chunk."""
        self._want(position)
        with self._lock:
            if self._read_pos > position:
                return True
            self._waiting = True
            return False

    def _want(self, position: int) -> None:
        if position > self._wanted:
            with self._lock:
                self._wanted = position
                floor = self._start[position] - BEHIND_BYTES
                while self._evicted < position and self._start[self._evicted + 1] < floor:
                    self._cache.pop(self._evicted, None)
                    self._evicted += 1
                self._lock.notify()

    def _ahead(self) -> bool:
        """The reader is far enough ahead of the sender (under the lock)."""
        position, wanted = self._read_pos, self._wanted
        return position - wanted > MAX_AHEAD_CHUNKS or \
            (position > wanted and self._start[position] - self._start[wanted] > AHEAD_BYTES)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self.reader.close()

    # -- the reader thread ----------------------------------------------------------------

    def _reader(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (
                        self._ahead() or self._read_pos >= len(self._order)):
                    self._lock.wait()
                if self._closed:
                    return
                position = self._read_pos
            try:
                data = self._read(*self._order[position])
            except SourceError as exc:
                self._error = exc
                self.on_ready()
                return
            with self._lock:
                self._cache[position] = data
                self._read_pos = position + 1
                wake, self._waiting = self._waiting, False
            if wake:
                self.on_ready()

    def _read(self, index: int, chunk_index: int) -> bytes:
        entry = self.files[index]
        if chunk_index == 0:
            self._hashes[index] = file_hash()
        offset = chunk_index * self.chunk
        length = min(self.chunk, entry.file_size - offset)
        data = self.reader.read(index, length, offset) if length > 0 else b""
        self._hashes[index].update(data)
        if offset + length >= entry.file_size:
            self.reader.check(index)
            self._digests[index] = self._hashes.pop(index).digest()
        return data


class LocalFiles:
    """The files of a local sandbox folder, ``root`` (a Reader)."""

    def __init__(self, root: str, files: list[FileMapping]) -> None:
        self.root = root
        self.files = files
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._real_root: str | None = None  # the sandbox's real path, once known
        self._lock = threading.Lock()

    def read(self, index: int, length: int, offset: int) -> bytes:
        data = os.pread(self._fd(index), length, offset)
        if len(data) != length:
            raise SourceError(f"Source file {self.files[index].src_path} is shorter than "
                              "when the manifest was built; nothing more was sent from it.")
        return data

    def check(self, index: int) -> None:
        entry = self.files[index]
        st = os.fstat(self._fd(index))
        if st.st_size != entry.file_size or \
                st.st_mtime_ns // 1000 != entry.modification_time_us:
            raise SourceError(f"Source file {entry.src_path} changed while it was "
                              "being sent.")

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _fd(self, index: int) -> int:
        """An open descriptor of file ``index``; at most MAX_OPEN_FILES stay open."""
        with self._lock:
            fd = self._fds.get(index)
            if fd is not None:
                self._fds.move_to_end(index)
                return fd
        if self._real_root is None:
            self._real_root = _real_root(self.root)
        fd = _open_source(self._real_root, self.files[index])
        with self._lock:
            self._fds[index] = fd
            while len(self._fds) > MAX_OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        return fd


class ObjectFiles:
    """The objects of an S3 sandbox (a Reader): each read is a ranged GET, which also
    tells the object's size and time, so a changed object is noticed at once."""

    def __init__(self, bucket: Bucket, files: list[FileMapping]) -> None:
        self.bucket = bucket
        self.files = files

    def read(self, index: int, length: int, offset: int) -> bytes:
        entry = self.files[index]
        key = self.bucket.sandbox.key(virtual_parts(entry.src_path))
        try:
            data, size, stored_us = self.bucket.read(key, offset, length)
        except DiskError as exc:
            failed = SourceUnavailable if isinstance(exc, StorageUnavailable) else SourceError
            raise failed(f"Cannot read source object {entry.src_path}: {exc.message}"
                         ) from None
        if (size, stored_us) != (entry.file_size, entry.modification_time_us) or \
                len(data) != length:
            raise SourceError(f"Source object {entry.src_path} changed since the manifest "
                              "was built (size or modification time differs).")
        return data

    def check(self, index: int) -> None:
        """(Every read checked it.)"""

    def close(self) -> None:
        """(The bucket's client is shared.)"""


def reader_for(sandbox: Sandbox, files: list[FileMapping]) -> Reader:
    """The reader of ``files`` in ``sandbox``."""
    if isinstance(sandbox, S3Sandbox):
        try:
            return ObjectFiles(Bucket(sandbox), files)
        except DiskError as exc:
            raise SourceError(f"Cannot read the files to send: {exc.message}") from None
    return LocalFiles(sandbox, files)


def _real_root(root: str) -> str:
    try:
        return real_sandbox(root)
    except PathError as exc:
        raise SourceError(f"Cannot read the files to send: {exc.message}") from None


def _open_source(real_root: str, entry: FileMapping) -> int:
    """A descriptor of the file ``entry`` names, as the manifest saw it (else SourceError)."""
    try:
        fd = open_in_sandbox(real_root, entry.src_path)
    except OSError as exc:
        raise SourceError(f"Cannot read source file {entry.src_path}: "
                          f"{exc.strerror}.") from None
    except PathError as exc:  # the sandbox refused the path
        raise SourceError(f"Cannot read source file {entry.src_path}: "
                          f"{exc.message}") from None
    st = os.fstat(fd)
    if st.st_size != entry.file_size or \
            st.st_mtime_ns // 1000 != entry.modification_time_us:
        os.close(fd)
        raise SourceError(f"Source file {entry.src_path} changed since the manifest "
                          "was built (size or modification time differs).")
    return fd


def chunk_sums(reader: Reader, files: list[FileMapping], chunk_bytes: int
               ) -> list[bytes | None]:
    """Per entry, the checksums of its chunks of ``chunk_bytes`` (None for an empty
    folder), for ``ifChecksumDiffers``: every file is read once more for them."""
    out: list[bytes | None] = []
    try:
        for index, entry in enumerate(files):
            if entry.is_empty_dir:
                out.append(None)
                continue
            sums = bytearray()
            for offset in range(0, entry.file_size, chunk_bytes):
                sums += chunk_sum(reader.read(index, min(chunk_bytes,
                                                         entry.file_size - offset), offset))
            out.append(bytes(sums))
    finally:
        reader.close()
    return out
