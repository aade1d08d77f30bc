"""Nothing lost: restarts, crashes (SIGKILL), outages, draining, a full disk.

Two real server processes; the receiver keeps fixed ports so that it can come back at
the same address."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, ServerProcess, write_users
from tests.transfer_helpers import leftovers

RATE_KBPS = 200_000  # 200 Mbit/s: fast enough, slow enough to interrupt halfway


def _blocks_per_s(done: dict[str, Any], rate_kbps: int = RATE_KBPS) -> float:
    """Blocks a second at ``rate_kbps`` with this transfer's block size."""
    return rate_kbps * 1000 / 8 / int(done["blockSize"])


def _free_port() -> int:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        return int(port)


def _home(path: Path) -> Path:
    (path / "sandbox").mkdir(parents=True, exist_ok=True)
    if not (path / "users").exists():
        write_users(path / "users")
    return path


class Pair:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.a_home, self.b_home = _home(tmp_path / "a"), _home(tmp_path / "b")
        self.b_port = _free_port()
        self.a = ServerProcess(self.a_home)
        self.b = self.start_b()

    def start_b(self, *extra: str) -> ServerProcess:
        return ServerProcess(self.b_home, "--api-port", str(self.b_port), "--recv-port",
                             str(self.b_port), *extra)

    def restart_a(self) -> None:
        self.a = ServerProcess(self.a_home)

    def api(self, server: ServerProcess, *args: str, user: str = "alice") -> Any:
        done = server.api(*args, user=user, password=PASSWORDS[user])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def start_transfer(self, mapping: str, *extra: str) -> str:
        destination = self.api(self.a, "createDestination",
                               f"--destinationAddress=127.0.0.1:{self.b_port}",
                               "--destinationUser=bob",
                               f"--destinationPassword={PASSWORDS['bob']}")
        manifest = self.api(self.a, "createManifest", f"--fileMappings={mapping}")
        deadline = time.monotonic() + 60
        while self.api(self.a, "getManifest",
                       f"--manifestId={manifest['manifestId']}")["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        transfer = self.api(self.a, "createTransfer",
                            f"--destinationId={destination['destinationId']}",
                            f"--manifestId={manifest['manifestId']}", *extra)
        return str(transfer["transferId"])

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api(self.a, "getTransfer", f"--transferId={transfer_id}")
        return result

    def wait_acked(self, transfer_id: str, fraction: float) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while True:
            got = self.transfer(transfer_id)
            if got["blocksAcked"] >= fraction * got["totalBlocks"]:
                return got
            assert got["status"] in ("pending", "sending"), got
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def wait_done(self, transfer_id: str, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (got := self.transfer(transfer_id))["status"] not in ("complete", "error",
                                                                    "cancelled"):
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        return got

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    servers = Pair(tmp_path)
    try:
        yield servers
    finally:
        servers.stop()


def _big_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _resent(done: dict[str, Any]) -> int:
    return int(done["blocksSent"]) - int(done["totalBlocks"])


@pytest.mark.timeout(240)
def test_a_receiver_killed_mid_transfer_resumes_from_its_checkpoint(pair: Pair) -> None:
    data = _big_file(pair.a_home / "sandbox" / "big.bin", 300 * 2**20)
    tid = pair.start_transfer("/big.bin:/big.bin", f"--sendRateMax={RATE_KBPS}",
                              "--checkpointFrequencySeconds=1")
    pair.wait_acked(tid, 0.4)
    pair.b.proc.send_signal(signal.SIGKILL)
    pair.b.proc.wait(10)
    pair.b.stream.close()
    assert not (pair.b_home / "sandbox" / "big.bin").exists()  # nothing partial shown
    time.sleep(1.0)
    pair.b = pair.start_b()
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "big.bin").read_bytes() == data
    assert leftovers(pair.b_home / "sandbox") == []
    # resent at most what was not yet checkpointed (1 s of data) plus what was in flight
    assert _resent(done) <= 2 * _blocks_per_s(done) + 200, done


@pytest.mark.timeout(240)
def test_a_sender_killed_mid_transfer_resumes_after_its_restart(pair: Pair) -> None:
    data = _big_file(pair.a_home / "sandbox" / "big.bin", 300 * 2**20)
    tid = pair.start_transfer("/big.bin:/big.bin", f"--sendRateMax={RATE_KBPS}",
                              "--checkpointFrequencySeconds=1")
    before = pair.wait_acked(tid, 0.4)
    pair.a.proc.send_signal(signal.SIGKILL)
    pair.a.proc.wait(10)
    pair.a.stream.close()
    pair.restart_a()
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "big.bin").read_bytes() == data
    # the restarted sender did not start over: what it sent again is bounded by what the
    # receiver had not made durable, and what the sender had not yet recorded
    assert done["blocksSent"] <= done["totalBlocks"] + 3 * _blocks_per_s(done) + 200, \
        (before, done)
    received = pair.api(pair.b, "recv.getTransfers", user="bob")
    assert [r["status"] for r in received] == ["complete"]


@pytest.mark.timeout(240)
def test_a_network_outage_longer_than_the_retry_interval_heals(pair: Pair) -> None:
    data = _big_file(pair.a_home / "sandbox" / "f.bin", 60 * 2**20)
    tid = pair.start_transfer("/f.bin:/f.bin", "--sendRateMax=100000",
                              "--checkpointFrequencySeconds=1")
    pair.wait_acked(tid, 0.3)
    pair.b.proc.send_signal(signal.SIGSTOP)  # B stops answering (no ICMP either)
    time.sleep(12)  # longer than the sender's 10 s silence limit and its 1 s retry
    pair.b.proc.send_signal(signal.SIGCONT)
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "f.bin").read_bytes() == data
    assert done["blocksSent"] <= 1.5 * done["totalBlocks"]


@pytest.mark.timeout(120)
def test_sigterm_drains_and_the_transfer_resumes_after_restart(pair: Pair) -> None:
    data = _big_file(pair.a_home / "sandbox" / "f.bin", 100 * 2**20)
    tid = pair.start_transfer("/f.bin:/f.bin", f"--sendRateMax={RATE_KBPS // 2}")
    pair.wait_acked(tid, 0.3)
    started = time.monotonic()
    pair.b.proc.send_signal(signal.SIGTERM)
    assert pair.b.proc.wait(30) == 0
    drain_s = time.monotonic() - started
    pair.b.stream.close()
    assert "stopped" in pair.b.log_path.read_text()
    assert not (pair.b_home / "sandbox" / "f.bin").exists()
    pair.b = pair.start_b()
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "f.bin").read_bytes() == data
    assert _resent(done) <= 2 * _blocks_per_s(done), (drain_s, done)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    (home / "sandbox" / "f.txt").write_text("x")
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        started.append(ServerProcess(home, *args))
        return started[-1]

    def api(*args: str, user: str = "alice") -> Any:
        done = started[-1].api(*args, user=user, password=PASSWORDS[user])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        try:
            server = start()
            destination = api("createDestination", f"--destinationAddress=127.0.0.1:{port}",
                              "--userData={\"site\": \"paris\"}")
            manifest = api("createManifest", "--fileMappings=/f.txt:/f.txt")
            time.sleep(0.3)
            transfer = api("createTransfer",
                           f"--destinationId={destination['destinationId']}",
                           f"--manifestId={manifest['manifestId']}", "--priority=7")
            queued = api("getDestinationsAsync")
            assert server.stop() == 0
            server = start()
            assert api("getDestination", f"--destinationId={destination['destinationId']}")[
                "userData"] == {"site": "paris"}
            assert api("getManifest", f"--manifestId={manifest['manifestId']}")[
                "totalFiles"] == 1
            restored = api("getTransfer", f"--transferId={transfer['transferId']}")
            assert restored["priority"] == 7 and restored["status"] in ("pending", "sending")
            result = api("getRequestResult", f"--requestId={queued['requestId']}")
            assert [d["destinationId"] for d in result] == [destination["destinationId"]]
            api("cancelTransfer", f"--transferId={transfer['transferId']}")
            # only a raised superuser may collect garbage
            assert server.api("garbageCollect", user="alice",
                              password=PASSWORDS["alice"]).returncode == 1
            assert server.stop() == 0
            start("--persistent-destinations", "false")
            assert api("getDestinations") == []  # not loaded when not persistent
        finally:
            for process in started:
                process.stop()


def test_garbage_collection_removes_what_ended(tmp_path: Path) -> None:
    home = _home(tmp_path / "h")
    (home / "sandbox" / "f.txt").write_text("x")
    server = ServerProcess(home, "--superuser", "root")
    try:
        def api(*args: str) -> Any:
            done = server.api(*args, user="root", password=PASSWORDS["root"])
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        assert api("getGarbageCollectSettings") == {"intervalSeconds": 3600,
                                                    "timeLimitSeconds": 172800}
        destination = api("createDestination", "--destinationAddress=127.0.0.1:9")
        manifest = api("createManifest", "--fileMappings=/f.txt:/f.txt")
        time.sleep(0.3)
        transfer = api("createTransfer", f"--destinationId={destination['destinationId']}",
                       f"--manifestId={manifest['manifestId']}")
        api("cancelTransfer", f"--transferId={transfer['transferId']}")
        refused = server.api("updateGarbageCollectSettings", "--timeLimitSeconds=0",
                             user="root", password=PASSWORDS["root"])
        assert refused.returncode == 1 and "superuser" in refused.stderr
    finally:
        server.stop()
    # the console opens one connection per command: raise and collect in one session
    server = ServerProcess(home, "--superuser", "root")
    try:
        from jetstream_server.client import Client

        with Client.connect("127.0.0.1", server.api_port) as api:
            api.auth("root", PASSWORDS["root"])
            api.call("superuser")
            assert api.call("updateGarbageCollectSettings", timeLimitSeconds=0)[
                "timeLimitSeconds"] == 0
            removed = api.call("garbageCollect")
            assert removed["transfers"] == 1 and removed["manifests"] == 1
            assert api.call("send.getTransfers") == []
            assert len(api.call("getDestinations")) == 1  # destinations are kept
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.timeout(180)
def test_a_full_disk_fails_the_transfer_and_once_freed_it_resumes_sending_only_the_rest(
        pair: Pair, tmp_path: Path) -> None:
    sandbox = pair.b_home / "sandbox"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs",
                              str(sandbox)], capture_output=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr!r}")
    try:
        (sandbox / "before.txt").write_text("was here")
        source = pair.a_home / "sandbox" / "six"
        source.mkdir()
        files = {f"f{i}.bin": _big_file(source / f"f{i}.bin", 2 * 2**20) for i in range(6)}
        tid = pair.start_transfer("/six:/six")
        failed = pair.wait_done(tid, timeout_s=60)
        assert failed["status"] == "error"
        assert "No space left on the receiving server's disk" in failed["errorMessage"]
        received = pair.api(pair.b, "recv.getTransfers", user="bob")
        assert received[0]["status"] == "error"
        assert "No space left" in received[0]["errorMessage"]
        assert (sandbox / "before.txt").read_text() == "was here"
        delivered = sorted(p.name for p in (sandbox / "six").iterdir()
                           if not p.name.startswith("."))
        assert 1 <= len(delivered) < 6
        for name in delivered:
            assert (sandbox / "six" / name).read_bytes() == files[name]
        # the operator frees space; the user resumes the failed transfer
        subprocess.run(["mount", "-o", "remount,size=64m", str(sandbox)], check=True,
                       capture_output=True, timeout=30)
        pair.api(pair.a, "resumeTransfer", f"--transferId={tid}")
        done = pair.wait_done(tid, timeout_s=60)
        assert done["status"] == "complete", done["errorMessage"]
        assert done["errorMessage"] is None
        for name, data in files.items():
            assert (sandbox / "six" / name).read_bytes() == data
        assert leftovers(sandbox) == []
        per_file = -(-2 * 2**20 // int(done["blockSize"])) + 1
        sent_again = int(done["blocksSent"]) - int(failed["blocksSent"])
        missing = 6 - len(delivered)
        assert sent_again <= missing * per_file + 16, (sent_again, missing, per_file)
        # and the server goes on serving
        (pair.a_home / "sandbox" / "small.txt").write_text("fits")
        tid = pair.start_transfer("/small.txt:/small.txt")
        assert pair.wait_done(tid, timeout_s=60)["status"] == "complete"
        assert (sandbox / "small.txt").read_text() == "fits"
    finally:
        pair.stop()
        subprocess.run(["umount", "-l", str(sandbox)], capture_output=True, timeout=30)


@pytest.mark.timeout(120)
def test_a_second_signal_exits_at_once_losing_nothing_checkpointed(
        pair: Pair, tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"  # a slow trigger keeps the drain busy
    triggers.mkdir()
    (triggers / "recv.transferStarted").write_text("#!/bin/sh\nsleep 25\n")
    (triggers / "recv.transferStarted").chmod(0o755)
    assert pair.b.stop() == 0
    pair.b = pair.start_b("--trigger-dir", str(triggers))
    data = _big_file(pair.a_home / "sandbox" / "f.bin", 100 * 2**20)
    tid = pair.start_transfer("/f.bin:/f.bin", f"--sendRateMax={RATE_KBPS // 2}",
                              "--checkpointFrequencySeconds=1")
    pair.wait_acked(tid, 0.3)
    time.sleep(1.2)  # at least one checkpoint
    pair.b.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # draining: waiting for the trigger
    assert pair.b.proc.poll() is None
    started = time.monotonic()
    pair.b.proc.send_signal(signal.SIGTERM)
    assert pair.b.proc.wait(10) == 1
    assert time.monotonic() - started < 5
    pair.b.stream.close()
    assert not (pair.b_home / "sandbox" / "f.bin").exists()
    pair.b = pair.start_b()
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "f.bin").read_bytes() == data
    assert _resent(done) <= 3 * _blocks_per_s(done), done


@pytest.mark.timeout(120)
def test_the_tcp_data_mode_resumes_after_a_receiver_restart(pair: Pair) -> None:
    data = _big_file(pair.a_home / "sandbox" / "f.bin", 100 * 2**20)
    tid = pair.start_transfer("/f.bin:/f.bin", "--dataTransport=tcp",
                              f"--sendRateMax={RATE_KBPS}", "--checkpointFrequencySeconds=1")
    pair.wait_acked(tid, 0.3)
    pair.b.proc.send_signal(signal.SIGKILL)
    pair.b.proc.wait(10)
    pair.b.stream.close()
    pair.b = pair.start_b()
    done = pair.wait_done(tid)
    assert done["status"] == "complete", done["errorMessage"]
    assert (pair.b_home / "sandbox" / "f.bin").read_bytes() == data
    # over TCP a block is 64 KiB: 1 s of checkpoint interval is ~380 blocks at 200 Mbit/s
    assert done["blocksSent"] - done["totalBlocks"] <= 3 * RATE_KBPS * 1000 / 8 / 65536 + 64
