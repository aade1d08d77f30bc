"""A transfer's progress as users read it: the Transfer structure's progress fields,
getTransferFiles, the client's wait_for_transfer and progress iterator, and
``jetstream status`` (two server processes)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import Client, TransferFailed
from tests.conftest import PASSWORDS, ServerProcess, command

pytestmark = pytest.mark.timeout(90)


def _send(a: ServerProcess, b: ServerProcess, mappings: list[str], *extra: str,
          password: str = PASSWORDS["bob"]) -> str:
    destination = a.call("send.createDestination",
                         f"--destinationAddress=127.0.0.1:{b.recv_port}",
                         "--destinationUser=bob", f"--destinationPassword={password}")
    manifest = a.call("send.createManifest", *(f"--fileMappings={m}" for m in mappings))
    transfer = a.call("send.createTransfer", f"--destinationId={destination['destinationId']}",
                      f"--manifestId={manifest['manifestId']}", *extra)
    return str(transfer["transferId"])


def status(a: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")},
           "JETSTREAM_API_PASSWORD": PASSWORDS["alice"]}
    return subprocess.run([command("jetstream"), "status", "--api-control-port",
                           str(a.api_port), "--user", "alice", *args],
                          capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_progress_rates_time_left_and_each_files_state(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    media = tmp_path / "a" / "sandbox" / "media"
    media.mkdir()
    big = os.urandom(3_000_000)
    (media / "big.bin").write_bytes(big)
    (media / "small.txt").write_bytes(b"small")
    (media / "empty").mkdir()
    # 8 Mbit/s: about 3 s, long enough to be seen under way
    transfer_id = _send(a, b, ["/media/big.bin:/in/big.bin", "/media/small.txt:/in/small.txt",
                               "/media/empty:/in/empty"], "--sendRateMax=8000")
    seen: list[dict[str, Any]] = []
    with Client.connect("localhost", a.api_port) as api:
        api.auth("alice", PASSWORDS["alice"])
        final = api.wait_for_transfer(transfer_id, timeout=60, on_progress=seen.append,
                                      interval_s=0.5)
        files = api.send.getTransferFiles(transferId=transfer_id)
    total = len(big) + 5
    assert final["status"] == "complete" and seen[-1] == final
    assert final["bytesComplete"] == final["totalBytes"] == total
    assert final["bytesToSend"] == 0 and final["filesComplete"] == 2
    assert final["filesSkipped"] == 0 and final["overwrite"] == "always"
    assert 6000 <= final["averageRate"] <= 8800, final["averageRate"]
    under_way = [t for t in seen if 0 < t["bytesComplete"] < total]
    assert under_way, [t["bytesComplete"] for t in seen]
    middle = under_way[len(under_way) // 2]
    assert middle["status"] == "sending"
    assert middle["bytesToSend"] == total - middle["bytesComplete"]
    assert 3000 <= middle["currentRate"] <= 9000, middle["currentRate"]
    # time left, at the current rate
    left = middle["bytesToSend"] * 8 / 1000 / middle["currentRate"]
    assert middle["estimatedTimeRemaining"] == pytest.approx(left, abs=0.1)
    assert [(f["destPath"], f["status"], f["bytesComplete"]) for f in files["fileMappings"]] \
        == [("/in/big.bin", "complete", len(big)), ("/in/small.txt", "complete", 5),
            ("/in/empty", "complete", 0)]
    assert (tmp_path / "b" / "sandbox" / "in" / "big.bin").read_bytes() == big
    done = status(a, "--json", transfer_id)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert (line["transferId"], line["status"], line["bytesComplete"]) == (
        transfer_id, "complete", total)
    idle = status(a)
    assert idle.returncode == 0 and "No transfers running." in idle.stderr


def test_files_under_way_and_a_failed_transfer(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    media = tmp_path / "a" / "sandbox" / "media"
    media.mkdir()
    (media / "first.bin").write_bytes(os.urandom(200_000))
    (media / "second.bin").write_bytes(os.urandom(1_200_000))
    slow = _send(a, b, ["/media/first.bin:/in/first.bin", "/media/second.bin:/in/second.bin"],
                 "--sendRateMax=2000")
    with Client.connect("localhost", a.api_port) as api:
        api.auth("alice", PASSWORDS["alice"])
        for _ in range(100):
            files = api.send.getTransferFiles(transferId=slow)["fileMappings"]
            if files[1]["status"] == "sending":
                break
            time.sleep(0.1)
        assert files[0]["status"] in ("sent", "complete"), files
        assert files[0]["bytesComplete"] == 200_000
        assert files[1]["status"] == "sending" and 0 < files[1]["bytesComplete"] < 1_200_000
        running = status(a, "--json")  # every unfinished transfer, until it ends
        assert running.returncode == 0, running.stderr
        lines = [json.loads(line) for line in running.stdout.splitlines()]
        assert {line["transferId"] for line in lines} == {slow}
        assert lines[-1]["status"] == "complete"
        refused = _send(a, b, ["/media/first.bin:/in/x.bin"], password="wrong")
        with pytest.raises(TransferFailed) as failed:
            api.wait_for_transfer(refused, timeout=60)
    assert failed.value.transfer["status"] == "error"
    assert "password" in failed.value.transfer["errorMessage"].lower()
    done = status(a, refused)
    assert done.returncode == 1 and "error" in done.stderr
