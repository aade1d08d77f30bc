"""``jetstream cp``: its TARGET forms, and real copies between two server processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jetstream_server.cp import Target, parse_target
from jetstream_server.errors import UsageError
from jetstream_server.watch import PROGRESS_FIELDS
from tests.conftest import PASSWORDS, ServerProcess, command
from tests.transfer_helpers import make_tree, tree_listing


@pytest.mark.parametrize(("text", "target"), [
    ("bob@serverb:/incoming", Target("/incoming", address="serverb", user="bob")),
    ("serverb:9000:/in/x", Target("/in/x", address="serverb:9000")),
    ("serverb:in", Target("/in", address="serverb")),
    ("[::1]:8887:/in", Target("/in", address="[::1]:8887")),
    ("bob@[2001:db8::1]:/in", Target("/in", address="[2001:db8::1]", user="bob")),
    ("0123456789abcdef0123456789abcdef:/in",
     Target("/in", destination_id="0123456789abcdef0123456789abcdef")),
])
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["serverb", "/local/path", "[::1/in", "[::1]"])
def test_a_target_without_a_server_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_target(text)


def cp(a: ServerProcess, *args: str, password: str = PASSWORDS["bob"],
       timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    env.update(JETSTREAM_API_PASSWORD=PASSWORDS["alice"],
               JETSTREAM_DESTINATION_PASSWORD=password)
    return subprocess.run([command("jetstream"), "cp", "--api-control-port",
                           str(a.api_port), "--user", "alice", *args],
                          capture_output=True, text=True, env=env, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)


def test_one_command_copies_files_and_folders_and_reports_progress(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    media = tmp_path / "a" / "sandbox" / "media"
    make_tree(media / "tree", small_files=20, big_bytes=3_000_000)
    (media / "clip one.mov").write_bytes(os.urandom(700_000))
    target = f"bob@127.0.0.1:{b.recv_port}:/incoming"
    done = cp(a, "--json", "/media/clip one.mov", "/media/tree/", target)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    total = (media / "clip one.mov").stat().st_size + sum(
        p.stat().st_size for p in (media / "tree").rglob("*") if p.is_file())
    last = lines[-1]
    assert last["status"] == "complete"
    assert last["bytesComplete"] == last["totalBytes"] == total
    assert last["bytesToSend"] == 0 and last["estimatedTimeRemaining"] == 0
    files = 1 + sum(1 for p in (media / "tree").rglob("*") if p.is_file())
    assert last["filesComplete"] == last["totalFiles"] == files and last["filesSkipped"] == 0
    assert last["averageRate"] > 0
    assert set(last) == set(PROGRESS_FIELDS)
    incoming = tmp_path / "b" / "sandbox" / "incoming"
    assert (incoming / "clip one.mov").read_bytes() == (media / "clip one.mov").read_bytes()
    assert tree_listing(incoming / "tree") == tree_listing(media / "tree")
    again = cp(a, "/media/clip one.mov", target)  # the same destination, reused
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Transfer ") and \
        "complete: 1 file(s) delivered, 700000 bytes" in again.stdout
    assert len(a.call("send.getDestinations")) == 1


def test_a_refused_login_exits_1_with_the_receivers_reason(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    (tmp_path / "a" / "sandbox" / "a.txt").write_text("hello")
    done = cp(a, "/a.txt", f"bob@127.0.0.1:{b.recv_port}:/in", password="wrong")
    assert done.returncode == 1
    assert "error" in done.stderr and "refused" in done.stderr
    assert not (tmp_path / "b" / "sandbox" / "in").exists()
    usage = cp(a, "/a.txt", "nowhere")
    assert usage.returncode == 2 and "names no server" in usage.stderr


@pytest.mark.parametrize("detach", [False, True])
def test_ctrl_c_cancels_the_transfer_or_leaves_it_running(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path, detach: bool) -> None:
    a, b = two_servers
    (tmp_path / "a" / "sandbox" / "big.bin").write_bytes(os.urandom(4_000_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    env.update(JETSTREAM_API_PASSWORD=PASSWORDS["alice"],
               JETSTREAM_DESTINATION_PASSWORD=PASSWORDS["bob"])
    proc = subprocess.Popen(
        [command("jetstream"), "cp", "--api-control-port", str(a.api_port), "--user",
         "alice", "--json", "--send-rate-max", "2000", *(["--detach"] if detach else []),
         "/big.bin", f"bob@127.0.0.1:{b.recv_port}:/in"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        stdin=subprocess.DEVNULL,  # (Ctrl-C's signal acts even where the tests run with
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # it ignored)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # (the transfer exists)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    transfer = a.call("send.getTransfer", f"--transferId={first['transferId']}")
    if detach:
        assert "goes on in the server" in err
        assert transfer["status"] in ("pending", "sending")
        a.call("send.cancelTransfer", f"--transferId={first['transferId']}")
    else:
        assert f"transfer {first['transferId']} cancelled." in err
        deadline = time.monotonic() + 10
        while transfer["status"] != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.1)
            transfer = a.call("send.getTransfer", f"--transferId={first['transferId']}")
        assert transfer["status"] == "cancelled"
