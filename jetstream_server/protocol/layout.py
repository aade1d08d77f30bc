"""How a transfer's files map onto one sequence of numbered blocks.

Blocks ``[0, meta_blocks)`` carry the transfer's metadata (JSON). Then each file in
manifest order gets ``ceil(size / block_size)`` data blocks followed by one digest block
(the file's BLAKE3 digest and size), except a file small enough to share a block with its
digest (``size + 40 <= block_size``, a zero-byte file too): its one block carries the
file's bytes, then the digest and size. An empty directory has no block at all. Offsets
are 64-bit; a DATA datagram carries its block number in 40 bits, so a transfer has fewer
than ``MAX_BLOCKS`` blocks.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["DIGEST", "MAX_BLOCKS", "TCP_BLOCK_SIZE", "UDP_BLOCK_SIZE", "Layout", "Slot"]

DIGEST = struct.Struct("!32sQ")  # BLAKE3 digest, size
#: Payload bytes per block: over UDP when the route's MTU is not known (fits a 1500-byte
#: MTU), and in the TCP data mode.
UDP_BLOCK_SIZE = 1400
TCP_BLOCK_SIZE = 64 * 1024
MAX_BLOCKS = 1 << 40  # 1.6 PB in 1454-byte blocks (72 PB in TCP mode's 64 KiB)


class Slot(NamedTuple):
    """What one block holds (a tuple: one is made for every datagram sent)."""

    file: int  # -1 for metadata
    offset: int  # byte offset in the file (or in the metadata)
    length: int  # payload bytes
    #: the file's digest block: its payload ends with DIGEST; the bytes before it, if any,
    #: are the whole file (a small one)
    digest: bool = False


class Layout:
    """Where each block of a transfer lies: metadata, a file's data or its digest."""
    def __init__(self, block_size: int, meta_size: int, sizes: list[int | None]) -> None:
        """``sizes``: per manifest entry, the file size, or None for an empty directory."""
        if block_size <= 0:
            raise ValueError("block size must be positive")
        self.block_size = block_size
        self.meta_size = meta_size
        self.meta_blocks = -(-meta_size // block_size)
        self.sizes = sizes
        self.first: list[int] = []  # first block of each file with blocks
        self.files: list[int] = []  # their manifest indexes
        self.data_blocks: dict[int, int] = {}
        self._first_of: dict[int, int] = {}
        block = self.meta_blocks
        for index, size in enumerate(sizes):
            if size is None:
                continue
            self.first.append(block)
            self.files.append(index)
            self._first_of[index] = block
            count = 0 if size + DIGEST.size <= block_size else -(-size // block_size)
            self.data_blocks[index] = count
            block += count + 1
        self.total_blocks = block

    def file_range(self, index: int) -> tuple[int, int]:
        """[first, end) blocks of file ``index``, its digest block included."""
        first = self._first_of[index]
        return first, first + self.data_blocks[index] + 1

    def data_bytes(self, start: int, end: int) -> int:
        """Bytes of file data the blocks [start, end) carry (metadata and digests not
        counted; a small file's bytes count with its digest block)."""
        return sum(n for _, n in self.data_bytes_by_file(start, end))

    def data_bytes_by_file(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Per file with blocks in [start, end): its index and the data bytes there."""
        for index in self.files_in(start, end):
            first, count, size = self._first_of[index], self.data_blocks[index], \
                self.sizes[index]
            assert size is not None
            if count == 0:  # (its one block is in the range)
                yield index, size
            else:
                low, high = max(start, first) - first, min(end, first + count) - first
                yield index, max(min(size, high * self.block_size) - low * self.block_size, 0)

    def files_in(self, start: int, end: int) -> Iterator[int]:
        """The files (manifest indexes) with blocks in [start, end), in order."""
        if start >= end:
            return
        i = max(bisect_right(self.first, start) - 1, 0)
        while i < len(self.first) and self.first[i] < end:
            index = self.files[i]
            if self.first[i] + self.data_blocks[index] >= start:  # (its digest block)
                yield index
            i += 1

    def locate(self, block: int) -> Slot:
        """What ``block`` holds: whose bytes, at which offset, how many."""
        if not 0 <= block < self.total_blocks:
            raise IndexError(block)
        if block < self.meta_blocks:
            offset = block * self.block_size
            return Slot(-1, offset, min(self.block_size, self.meta_size - offset))
        i = bisect_right(self.first, block) - 1
        index = self.files[i]
        relative = block - self.first[i]
        count, size = self.data_blocks[index], self.sizes[index]
        assert size is not None
        if relative == count:  # (with the file's bytes before it when it has no others)
            return Slot(index, 0, (0 if count else size) + DIGEST.size, digest=True)
        offset = relative * self.block_size
        return Slot(index, offset, min(self.block_size, size - offset))
