"""Many transfers at once into one receiving server, from many sending servers.

    .venv/bin/python bench/many.py [--senders 10] [--transfers 10] [--files 10] [--kib 2048]
                                   [--limit-mbps 500] [--login key|password]

Starts one receiving server and SENDERS sending servers (real processes, loopback, UDP,
encrypted, rate policy fair). The receiver's incoming limit (LIMIT_MBPS, 0: none) is the
shared bottleneck. Each sender queues TRANSFERS transfers at once, each of FILES files of
KIB KiB, to one destination that sends them side by side (the sender runs with
``--transfers-per-destination TRANSFERS``), into a folder of its own on the receiver.
Prints: whether every file arrived identical, the time the whole took, the fairness
(each transfer's bytes over a 5 s window while all of them run, as a share of the mean:
min and max), and the receiving process's resident memory (at rest before, the peak
while it received, and the peak's growth per concurrent transfer). The senders log in by
their server keys, authorized on the receiver (the setup for many servers), or with
``--login password`` by bob's password: each session's login is then a password hash
(scrypt), taken in turn.
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
    limit = ["--incoming-rate-limit", str(args.limit_mbps * 1000)] if args.limit_mbps else []
    receiver = ServerProcess(base / "b", *limit, "--superuser", "root")
    senders: list[ServerProcess] = []
    clients: list[AsyncClient] = []
    try:
        for s in range(args.senders):
            senders.append(ServerProcess(base / f"a{s}", "--transfers-per-destination",
                                         str(args.transfers)))
        await asyncio.sleep(1)
        at_rest = rss_bytes(receiver.proc.pid)
        transfers: list[tuple[AsyncClient, str, int, int, str]] = []
        admin = await AsyncClient.connect("127.0.0.1", receiver.api_port)
        await admin.auth("root", PASSWORDS["root"])
        await admin.call("superuser")
        clients.append(admin)
        login = {"destinationUser": "bob", "destinationPassword": PASSWORDS["bob"]}
        for s, sender in enumerate(senders):
            client = await AsyncClient.connect("127.0.0.1", sender.api_port)
            await client.auth("alice", PASSWORDS["alice"])
            clients.append(client)
            if args.login == "key":
                info = await client.call("getServerInfo")
                await admin.call("recv.addAuthorizedClient", clientPublicKey=info["publicKey"])
                login = {}
            manifest = await client.call("createManifest", fileMappings={"/set": "/set"})
            await client.wait_for_manifest(manifest["manifestId"])
            destination = await client.call(
                "createDestination", destinationAddress=f"127.0.0.1:{receiver.recv_port}",
                **login)
            for t in range(args.transfers):
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
        window = 5.0
        deadline = time.monotonic() + 120  # (each login waits its turn: a password hash)
        while True:
            first = [await client.call("getTransfer", transferId=i) for client, i in ids]
            if all(t["bytesComplete"] > 0 for t in first) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        logged_in_s = time.monotonic() - started
        await asyncio.sleep(window)
        second = [await client.call("getTransfer", transferId=i) for client, i in ids]
        running = all(t["status"] == "sending" for t in second)
        moved = [b["bytesComplete"] - a["bytesComplete"] for a, b in zip(first, second,
                                                                          strict=True)]
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
        (base / "b" / "sandbox" / f"s{s}" / f"t{t}" / "set" / name).read_bytes() == data
        for s in range(args.senders) for t in range(args.transfers)
        for name, data in wanted.items())
    mean = statistics.mean(moved)
    count = len(done)
    total = sum(d["totalBytes"] for d in done)
    print(f"{count} transfers ({args.senders} senders x {args.transfers}) of {args.files} "
          f"files x {args.kib} KiB into one receiver, loopback")
    print(f"  all complete: {all(d['status'] == 'complete' for d in done)}; every file "
          f"identical: {identical}")
    print(f"  {total / 2**20:.0f} MiB in {seconds:.1f} s = {total * 8 / seconds / 1e6:.0f} "
          f"Mbit/s together")
    print(f"  all {count} moving data {logged_in_s:.1f} s after the first was queued")
    print(f"  over {window:.0f} s while {'all' if running else 'not all'} ran: mean "
          f"{mean * 8 / window / 1e6:.1f} Mbit/s a transfer, share of the mean min "
          f"{min(moved) / mean:.2f}, max {max(moved) / mean:.2f}")
    print(f"  receiver memory: {at_rest / 2**20:.0f} MiB at rest, peak {peak[0] / 2**20:.0f} "
          f"MiB, {(peak[0] - at_rest) / count / 2**20:.2f} MiB per concurrent transfer")
    return 0 if identical else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--transfers", type=int, default=10)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--kib", type=int, default=2048)
    parser.add_argument("--limit-mbps", type=int, default=500)
    parser.add_argument("--login", choices=("key", "password"), default="key")
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
        if os.environ.get("KEEP") is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("kept", base)
    sys.exit(code)


if __name__ == "__main__":
    main()
