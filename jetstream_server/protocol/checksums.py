"""The data protocol's two checksums (see docs/protocol.md, "Integrity").

- Every datagram carries a CRC-32C (Castagnoli), computed in hardware where the CPU has it
  (SSE 4.2, ARMv8 CRC): it catches a datagram damaged on the way, so the block is dropped
  and resent instead of written.
- Every file is verified end to end with its BLAKE3 digest (256 bits), a cryptographic hash
  about five times faster than SHA-256 on one core.
"""

from __future__ import annotations

from blake3 import blake3
from crc32c import crc32c

__all__ = ["FileHash", "crc32c", "file_hash"]

FileHash = blake3


def file_hash() -> blake3:
    """A new, empty hash of a file's bytes (its ``digest()`` is 32 bytes)."""
    return blake3()
