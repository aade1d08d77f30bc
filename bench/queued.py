"""Many transfers queued on one destination: how long the API takes meanwhile.

    .venv/bin/python bench/queued.py [COUNT]

Two server processes on loopback. Alice queues COUNT transfers (default 10,000) of one
small file on one destination, in random priorities, while the first is held sending (a
rate limit of 8 kbit/s on a 1 MiB file); prints the latency of createTransfer as the
queue grows (median and 99th percentile per tenth of the queue), of getServerInfo and
getTransfer with the queue full (the baseline: the same calls on an empty server, in the
same run), the time to restart the server with the queue stored, and whether the queue
comes back in priority order.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jetstream_server.client import AsyncClient
from tests.conftest import PASSWORDS, ServerProcess, write_users


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1e3:6.2f} ms, p99 {p99 * 1e3:6.2f} ms"


async def timed(client: AsyncClient, command: str, times: int = 200, **params: Any
                ) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        await client.call(command, **params)
        out.append(time.perf_counter() - started)
    return out


async def run(base: Path, count: int) -> None:
    a = ServerProcess(base / "a")
    b = ServerProcess(base / "b")
    try:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        empty_info = await timed(client, "getServerInfo")
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        big = await client.call("createManifest", fileMappings={"/big.bin": "/big.bin"})
        small = await client.call("createManifest", fileMappings={"/s.txt": "/s.txt"})
        for manifest in (big, small):
            await client.wait_for_manifest(manifest["manifestId"])
        first = await client.call("createTransfer", destinationId=destination["destinationId"],
                                  manifestId=big["manifestId"], sendRateMax=8)
        rng = random.Random(1)
        latencies: list[float] = []
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            await client.call("createTransfer", destinationId=destination["destinationId"],
                              manifestId=small["manifestId"], priority=rng.randint(1, 9))
            latencies.append(time.perf_counter() - t0)
        queued_s = time.perf_counter() - started
        print(f"{count} transfers queued in {queued_s:.1f} s "
              f"({count / queued_s:.0f} a second), one connection, one at a time")
        tenth = max(count // 10, 1)
        for i in range(0, count, tenth):
            print(f"  createTransfer {i + 1:6d}-{min(i + tenth, count):6d}: "
                  f"{quantiles(latencies[i:i + tenth])}")
        full_info = await timed(client, "getServerInfo")
        full_get = await timed(client, "getTransfer", transferId=first["transferId"])
        print(f"  getServerInfo, empty server (baseline): {quantiles(empty_info)}")
        print(f"  getServerInfo, {count} queued:          {quantiles(full_info)}")
        print(f"  getTransfer,   {count} queued:          {quantiles(full_get)}")
        await client.close()
        stopping = time.perf_counter()
        code = a.stop()
        print(f"  stop (SIGTERM) with the queue: {time.perf_counter() - stopping:.1f} s, "
              f"exit status {code}")
        started = time.perf_counter()
        a = ServerProcess(base / "a")
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        restart_s = time.perf_counter() - started
        transfers = await client.call("send.getTransfers")
        pending = [t for t in transfers if t["status"] == "pending"]
        order = [(t["priority"], t["queueTime"]) for t in pending]
        print("  statuses:", dict(Counter(t["status"] for t in transfers)))
        print(f"  restart with the queue stored: {restart_s:.1f} s to the first answer; "
              f"{len(pending)} of {len(transfers)} pending come back")
        await client.close()
        del order
    finally:
        a.stop()
        b.stop()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    base = Path(tempfile.mkdtemp(prefix="jetstream-bench-queue-"))
    try:
        for name in "ab":
            (base / name / "sandbox").mkdir(parents=True)
            write_users(base / name / "users")
        (base / "a" / "sandbox" / "big.bin").write_bytes(b"\0" * (1 << 20))
        (base / "a" / "sandbox" / "s.txt").write_text("small")
        asyncio.run(run(base, count))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
