"""The data protocol's two checksums (see docs/protocol.md, "Integrity").

- Every datagram carries a CRC-32C (Castagnoli), computed in hardware where the CPU has it
  (SSE 4.2, ARMv8 CRC): it catches a datagram damaged on the way, so the block is dropped
  and resent instead of written.
- Every file is verified end to end with its BLAKE3 digest (256 bits), a cryptographic hash
  about five times faster than SHA-256 on one core.
- With the overwrite rule ``ifChecksumDiffers`` the sender sends a checksum of each chunk
  of each file (the first SUM_BYTES of its BLAKE3), and the receiver keeps the chunks of
  the existing file that match.
"""

from __future__ import annotations

from blake3 import blake3
from crc32c import crc32c

from .metadata import SUM_BYTES

__all__ = ["FileHash", "chunk_bytes_for", "chunk_sum", "crc32c", "file_hash"]

FileHash = blake3
#: A chunk's checksum covers about this many bytes (whole blocks) ...
CHUNK_TARGET = 64 * 1024
#: ... and a transfer's checksums are at most this many bytes (larger chunks beyond).
MAX_SUMS_BYTES = 64 * 1024 * 1024


def chunk_sum(data: bytes | memoryview) -> bytes:
    """One chunk's checksum."""
    return blake3(data).digest()[:SUM_BYTES]


def chunk_bytes_for(block_size: int, total_bytes: int) -> int:
    """The bytes each chunk checksum covers: whole blocks, about CHUNK_TARGET, more when
    the checksums of ``total_bytes`` would be over MAX_SUMS_BYTES."""
    chunk = max(CHUNK_TARGET // block_size, 1) * block_size
    while total_bytes // chunk * SUM_BYTES > MAX_SUMS_BYTES:
        chunk *= 2
    return chunk


def file_hash() -> blake3:
    """A new, empty hash of a file's bytes (its ``digest()`` is 32 bytes)."""
    return blake3()
