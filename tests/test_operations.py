"""Running it for real: the systemd unit and notify protocol, signals and logs."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, ServerProcess, command, make_home

UNIT = Path(__file__).parent.parent / "systemd" / "jetstream-server.service"



@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_file_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("/usr/local/bin/jetstream-server",
                                    command("jetstream-server"))
    for needed in ("Type=notify", "KillMode=mixed", "ProtectSystem=strict", "ReadWritePaths=",
                   "NoNewPrivileges=true", "StateDirectory=jetstream", "User=jetstream",
                   "Restart=on-failure", "WatchdogSec=", "SystemCallFilter=@system-service",
                   "ProtectProc=invisible", "RestrictAddressFamilies=", "CapabilityBoundingSet="):
        assert needed in text
    unit = tmp_path / "jetstream-server.service"
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    score = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                           capture_output=True, text=True, timeout=60)
    if "--offline" in score.stderr:  # (systemd before 252 cannot rate a unit file)
        pytest.skip("this systemd-analyze cannot rate a unit file")
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", score.stdout)
    assert exposure is not None, score.stdout + score.stderr
    assert float(exposure.group(1)) <= 2.5, score.stdout


def _receive(sock: socket.socket, wanted: str, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        message = sock.recv(4096).decode()
        if wanted in message:
            return message
    raise AssertionError(f"no {wanted!r} from the server")


def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        server = ServerProcess(make_home(tmp_path / "h"), env={
            "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        try:
            ready = _receive(sock, "READY=1")
            assert f"MAINPID={server.proc.pid}" in ready
            assert f"Listening on port {server.api_port}" in ready
            _receive(sock, "WATCHDOG=1")
            _receive(sock, "WATCHDOG=1")
            server.proc.send_signal(signal.SIGTERM)
            _receive(sock, "STOPPING=1")
            assert server.proc.wait(20) == 0
        finally:
            server.stop()


def test_json_log_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "server.jsonl"
    server = ServerProcess(make_home(tmp_path / "h"), "--log-format", "json", "--log",
                           str(log_file))
    server.api("getDestinations", user="alice", password=PASSWORDS["alice"])
    assert server.stop() == 0
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    stamp = dt.datetime.fromisoformat(entries[0]["time"])  # ISO 8601, with its zone
    assert stamp.utcoffset() is not None
    assert abs(stamp.timestamp() - time.time()) < 60
    assert any("listening on TCP" in e["message"] for e in entries)
    # a successful login is a DEBUG record, not an INFO one
    assert not any("logged in from" in e["message"] for e in entries)


def test_log_level_debug_shows_logins_and_trigger_runs(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    triggers = tmp_path / "triggers"
    triggers.mkdir()
    (triggers / "send.destinationCreated").write_text("#!/bin/sh\nexit 0\n")
    (triggers / "send.destinationCreated").chmod(0o755)
    log_file = tmp_path / "server.log"
    server = ServerProcess(home, "--log-level", "debug", "--log", str(log_file),
                           "--trigger-dir", str(triggers))
    server.call("createDestination", "--destinationAddress=127.0.0.1:9")
    deadline = time.monotonic() + 10
    while "trigger send.destinationCreated" not in log_file.read_text() and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stop() == 0
    text = log_file.read_text()
    assert " DEBUG jetstream.api: alice logged in from 127.0.0.1:" in text
    assert " DEBUG jetstream.triggers: trigger send.destinationCreated " in text
    bad = subprocess.run([command("jetstream-server"), "--log-level", "loud"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "--log-level must be one of debug, info, warning, error" in bad.stderr
