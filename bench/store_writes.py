"""Writes to the state database: 10,000 stored objects, then a flush.

    .venv/bin/python bench/store_writes.py
    strace -f -c -e trace=fsync,fdatasync .venv/bin/python bench/store_writes.py

Prints how long submitting the writes took (the event loop's share) and how long until
all were committed; under strace, how many flushes to disk that took.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jetstream_server.core.store import StateStore


async def main() -> None:
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="jetstream-bench-store-"))
    try:
        store = StateStore(folder)
        started = time.perf_counter()
        for i in range(10_000):
            store.put("transfer", f"id{i}", {"id": i, "status": "pending", "pad": "x" * 800})
        submitted = time.perf_counter() - started
        await store.flush()
        committed = time.perf_counter() - started
        store.close()
        print(f"10,000 writes submitted in {submitted * 1e3:.0f} ms, all committed after "
              f"{committed:.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
