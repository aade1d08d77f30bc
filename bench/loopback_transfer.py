"""One transfer between two jetstream-server processes on loopback, timed.

    PYTHONPATH=. .venv/bin/python bench/loopback_transfer.py SIZE_MIB udp|tcp

Prints the goodput from createTransfer to complete (the receiver's verification included)
and the block counters. A quick check, not the benchmark the performance issue asks for.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import PASSWORDS, ServerProcess, write_users


def main() -> None:
    size = int(sys.argv[1]) << 20
    transport = sys.argv[2] if len(sys.argv) > 2 else "udp"
    base = Path(tempfile.mkdtemp(prefix="jetstream-bench-"))
    try:
        for name in "ab":
            (base / name / "sandbox").mkdir(parents=True)
            write_users(base / name / "users")
        with open(base / "a" / "sandbox" / "f.bin", "wb") as stream:
            for _ in range(0, size, 64 << 20):
                stream.write(os.urandom(min(64 << 20, size - stream.tell())))
        a, b = ServerProcess(base / "a"), ServerProcess(base / "b")
        try:
            def api(*args: str) -> Any:
                done = a.api(*args, user="alice", password=PASSWORDS["alice"])
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            destination = api("createDestination", f"--destinationAddress=127.0.0.1:"
                              f"{b.recv_port}", "--destinationUser=bob",
                              f"--destinationPassword={PASSWORDS['bob']}",
                              f"--dataTransport={transport}")
            manifest = api("createManifest", "--fileMappings=/f.bin:/f.bin")
            while api("getManifest", f"--manifestId={manifest['manifestId']}")[
                    "status"] == "pending":
                time.sleep(0.05)
            started = time.monotonic()
            transfer = api("createTransfer",
                           f"--destinationId={destination['destinationId']}",
                           f"--manifestId={manifest['manifestId']}")
            while (got := api("getTransfer", f"--transferId={transfer['transferId']}"))[
                    "status"] not in ("complete", "error"):
                time.sleep(0.05)
            seconds = time.monotonic() - started
        finally:
            a.stop()
            b.stop()
        print(f"{transport} {size >> 20} MiB: {got['status']} in {seconds:.2f} s = "
              f"{size * 8 / seconds / 1e6:.0f} Mbit/s; blocksSent {got['blocksSent']} of "
              f"{got['totalBlocks']}, retransmitted {got['blocksRetransmitted']}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
