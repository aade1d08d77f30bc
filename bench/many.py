"""Many transfers at once into one receiving server, from many sending servers.

    .venv/bin/python bench/many.py [--senders 10] [--transfers 10] [--files 10] [--kib 2048]

Starts one receiving server and SENDERS sending servers (real processes, loopback, UDP,
encrypted, rate policy fair). Each sender queues TRANSFERS transfers at once, each of
FILES files of KIB KiB (one destination object per transfer, so that they run side by
side), into a folder of its own on the receiver. Prints: whether every file arrived
identical, the time the whole took, each transfer's goodput over its own run as a share
of the mean (the fairness: min and max), and the receiving process's resident memory (at
rest before, the peak while it received, and the peak's growth per concurrent transfer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jetstream_server.client import AsyncClient
from tests.conftest import PASSWORDS, ServerProcess, write_users


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def sample_memory(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        await asyncio.sleep(0.1)


async def run(base: Path, args: argparse.Namespace) -> int:
    receiver = ServerProcess(base / "b")
    senders: list[ServerProcess] = []
    clients: list[AsyncClient] = []
    try:
        for s in range(args.senders):
            senders.append(ServerProcess(base / f"a{s}"))
        await asyncio.sleep(1)
        at_rest = rss_bytes(receiver.proc.pid)
        transfers: list[tuple[AsyncClient, str, int, int, str]] = []
        for s, sender in enumerate(senders):
            client = await AsyncClient.connect("127.0.0.1", sender.api_port)
            await client.auth("alice", PASSWORDS["alice"])
            clients.append(client)
            manifest = await client.call("createManifest", fileMappings={"/set": "/set"})
            await client.wait_for_manifest(manifest["manifestId"])
            for t in range(args.transfers):
                destination = await client.call(
                    "createDestination", destinationAddress=f"127.0.0.1:{receiver.recv_port}",
                    destinationUser="bob", destinationPassword=PASSWORDS["bob"])
                transfers.append((client, destination["destinationId"], s, t,
                                  manifest["manifestId"]))
        peak, stop = [at_rest], asyncio.Event()
        sampler = asyncio.create_task(sample_memory(receiver.proc.pid, peak, stop))
        started = time.monotonic()
        ids: list[tuple[AsyncClient, str]] = []
        for client, destination_id, s, t, manifest_id in transfers:
            made = await client.call("createTransfer", destinationId=destination_id,
                                     manifestId=manifest_id, destinationPath=f"/s{s}/t{t}")
            ids.append((client, made["transferId"]))
        done: list[dict[str, Any]] = []
        for client, transfer_id in ids:
            done.append(await client.wait_for_transfer(transfer_id, timeout=1800))
        seconds = time.monotonic() - started
        stop.set()
        await sampler
    finally:
        for client in clients:
            await client.close()
        for server in (*senders, receiver):
            server.stop()
    source = base / "a0" / "sandbox" / "set"
    wanted = {p.name: p.read_bytes() for p in source.iterdir()}
    identical = all(
        (base / "b" / "sandbox" / f"s{s}" / f"t{t}" / name).read_bytes() == data
        for s in range(args.senders) for t in range(args.transfers)
        for name, data in wanted.items())
    rates = [d["totalBytes"] * 8 / max((d["endTime"] - d["startTime"]) / 1e6, 1e-6) / 1e6
             for d in done]
    mean = statistics.mean(rates)
    count = len(done)
    total = sum(d["totalBytes"] for d in done)
    print(f"{count} transfers ({args.senders} senders x {args.transfers}) of {args.files} "
          f"files x {args.kib} KiB into one receiver, loopback")
    print(f"  all complete: {all(d['status'] == 'complete' for d in done)}; every file "
          f"identical: {identical}")
    print(f"  {total / 2**20:.0f} MiB in {seconds:.1f} s = {total * 8 / seconds / 1e6:.0f} "
          f"Mbit/s together")
    print(f"  each transfer's goodput over its own run: mean {mean:.1f} Mbit/s, share of the "
          f"mean min {min(rates) / mean:.2f}, max {max(rates) / mean:.2f}")
    print(f"  receiver memory: {at_rest / 2**20:.0f} MiB at rest, peak {peak[0] / 2**20:.0f} "
          f"MiB, {(peak[0] - at_rest) / count / 2**20:.2f} MiB per concurrent transfer")
    return 0 if identical else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--transfers", type=int, default=10)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--kib", type=int, default=2048)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="jetstream-bench-many-", dir="/var/tmp"))
    try:
        for name in ["b", *(f"a{s}" for s in range(args.senders))]:
            (base / name / "sandbox").mkdir(parents=True)
            write_users(base / name / "users")
        data = [os.urandom(args.kib * 1024) for _ in range(args.files)]
        for s in range(args.senders):
            folder = base / f"a{s}" / "sandbox" / "set"
            folder.mkdir()
            for f, content in enumerate(data):
                (folder / f"f{f}.bin").write_bytes(content)
        code = asyncio.run(run(base, args))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
