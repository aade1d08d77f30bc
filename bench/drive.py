"""Drive jetstream transfers through a server's API; run where that server runs.

    python bench/drive.py API_PORT[,API_PORT...] DEST_HOST:PORT SOURCE [--flows N]
        [--transport udp] [--rate-kbps K] [--policies fair,low] [--deadline S]

Logs in as alice (to each sending server named: the flows go to them in turn), makes one
destination per flow (user bob or alice on the receiving server; with the flow's rate
policy from ``--policies``, in turn), waits (up to 5 s) until each UDP destination's key
is pinned (learned once per destination, on first contact: not part of a transfer's
time), makes one manifest for SOURCE (a sandbox path: a file or a folder), prints
``{"ready": ...}`` and waits for a line on stdin. Then it starts one transfer per flow at
once and polls them every 20 ms until all have ended or DEADLINE
seconds passed, and prints one JSON object: per flow, the seconds from ``createTransfer``
to ``complete`` (the transfer's ``requestTime`` to its ``endTime``, by the sending
server's clock), status, bytes and blocks, and (time, bytesSent, blocksRetransmitted,
file bytes acknowledged) samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from jetstream_server.client import AsyncClient

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}  # as bench/run.py writes them


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("api_ports")
    parser.add_argument("destination")
    parser.add_argument("source")
    parser.add_argument("--flows", type=int, default=1)
    parser.add_argument("--transport", default="udp")
    parser.add_argument("--rate-kbps", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--policies", default="fair")
    args = parser.parse_args()
    clients = [await AsyncClient.connect("127.0.0.1", int(port))
               for port in args.api_ports.split(",")]
    policies = args.policies.split(",")
    destinations = []
    for client in clients:
        await client.auth("alice", PASSWORDS["alice"])
    for n in range(args.flows):
        client = clients[n % len(clients)]
        user = ("bob", "alice")[n % 2]  # distinct destinations (the same ones are merged)
        made = await client.call(
            "send.createDestination", destinationAddress=args.destination,
            destinationUser=user, destinationPassword=PASSWORDS[user],
            dataTransport=args.transport, sendRateMax=args.rate_kbps,
            ratePolicy=policies[n % len(policies)])
        destinations.append(made["destinationId"])
    if args.transport == "udp":  # a destination's key is learned once, on first contact,
        # in the background from createDestination on: the transfers are timed without it
        for n, destination in enumerate(destinations):
            client = clients[n % len(clients)]
            for _ in range(250):
                got = await client.call("send.getDestination", destinationId=destination)
                if got["destinationPublicKey"]:
                    break
                await asyncio.sleep(0.02)
    manifests = []
    for client in clients:
        manifest = await client.call("send.createManifest",
                                     fileMappings=[f"{args.source}:{args.source}"])
        ready = await client.wait_for_manifest(manifest["manifestId"], timeout_s=600)
        manifests.append(manifest["manifestId"])
    print(json.dumps({"ready": ready["status"], "files": ready.get("totalFiles")}),
          flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    started = time.monotonic()
    flows: list[dict[str, Any]] = []
    for n, destination in enumerate(destinations):
        client = clients[n % len(clients)]
        made = await client.call("send.createTransfer", destinationId=destination,
                                 manifestId=manifests[n % len(clients)],
                                 destinationPath=f"/flow{n}")
        flows.append({"id": made["transferId"], "samples": [], "seconds": None,
                      "client": client})
    deadline = started + args.deadline
    while True:
        now = time.monotonic()
        for flow in flows:
            if flow["seconds"] is not None:
                continue
            got = await flow["client"].call("send.getTransfer", transferId=flow["id"])
            flow["samples"].append((round(now - started, 4), got["bytesSent"],
                                    got["blocksRetransmitted"],
                                    got["blocksAcked"] * got["blockSize"]))
            flow["last"] = got
            if got["status"] in ("complete", "error", "cancelled"):
                # the server's own times (us): exact, where polling is up to 20 ms late
                flow["seconds"] = (got["endTime"] - got["requestTime"]) / 1e6 \
                    if got["endTime"] else time.monotonic() - started
        if all(f["seconds"] is not None for f in flows) or now > deadline:
            break
        await asyncio.sleep(0.02)
    result = []
    for flow in flows:
        last = flow["last"]
        result.append({
            "status": last["status"], "error": last["errorMessage"],
            "seconds": flow["seconds"] or (time.monotonic() - started),
            "totalBytes": last["totalBytes"], "bytesSent": last["bytesSent"],
            "blockSize": last["blockSize"], "totalBlocks": last["totalBlocks"],
            "blocksSent": last["blocksSent"],
            "blocksAcked": last["blocksAcked"],
            "blocksRetransmitted": last["blocksRetransmitted"],
            "samples": flow["samples"]})
    print(json.dumps({"flows": result}), flush=True)
    for client in clients:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
