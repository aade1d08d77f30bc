"""Speed of the data protocol's checksums on this machine, beside the ones they replaced.

    .venv/bin/python bench/checksums.py

Per datagram: CRC-32C (``crc32c``) against zlib's CRC-32, over 1440-byte and 63 KiB
datagrams. Per file: BLAKE3 against SHA-256, fed in 4 MiB chunks. One core, 256 MiB of
random bytes, best of three.
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from collections.abc import Callable

from jetstream_server.protocol.checksums import crc32c, file_hash

DATA = os.urandom(256 << 20)


def per_chunk(function: Callable[[memoryview], object], size: int) -> Callable[[], None]:
    view = memoryview(DATA)

    def run() -> None:
        for start in range(0, len(view), size):
            function(view[start:start + size])
    return run


def streamed(new: Callable[[], hashlib._Hash]) -> Callable[[], None]:
    def run() -> None:
        hasher = new()
        per_chunk(hasher.update, 4 << 20)()
        hasher.digest()
    return run


def speed(run: Callable[[], None]) -> float:
    """MB/s, best of three."""
    best = min(_timed(run) for _ in range(3))
    return len(DATA) / best / 1e6


def _timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    rows = [
        ("datagram, 1440 B", speed(per_chunk(crc32c, 1440)),
         speed(per_chunk(zlib.crc32, 1440)), "CRC-32C vs zlib CRC-32"),
        ("datagram, 63 KiB", speed(per_chunk(crc32c, 63 << 10)),
         speed(per_chunk(zlib.crc32, 63 << 10)), "CRC-32C vs zlib CRC-32"),
        ("file, 4 MiB chunks", speed(streamed(file_hash)),  # type: ignore[arg-type]
         speed(streamed(hashlib.sha256)), "BLAKE3 vs SHA-256"),
    ]
    print("| checksum over | ours (MB/s) | baseline (MB/s) | x | compared |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, ours, base, what in rows:
        print(f"| {name} | {ours:.0f} | {base:.0f} | {ours / base:.1f} | {what} |")


if __name__ == "__main__":
    main()
