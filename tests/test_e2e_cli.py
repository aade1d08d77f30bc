"""End to end: the installed `jetstream-server` and `jetstream` commands as separate processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, ServerProcess, command

Start = Callable[..., ServerProcess]


def _run(*argv: str, env: dict[str, str] | None = None,
         timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "JETSTREAM_API_PASSWORD"}
    full_env.update(env or {})
    return subprocess.run(list(argv), capture_output=True, text=True, env=full_env,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


def test_console_prints_sorted_json_with_one_space_indent(server_process: Start) -> None:
    server = server_process("--server-name", "edge-1")
    done = server.api("getServerInfo")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["apiControlPort"] == server.api_port
    assert info["serverName"] == "edge-1"
    assert done.stdout == json.dumps(info, indent=1, sort_keys=True) + "\n"


def test_console_exit_codes(server_process: Start, home: Path) -> None:
    server = server_process()
    ok = server.api("getDestinations", user="alice", password=PASSWORDS["alice"])
    assert (ok.returncode, json.loads(ok.stdout)) == (0, [])
    api_error = server.api("getDestination", "--destinationId=" + "0" * 32, user="alice",
                           password=PASSWORDS["alice"])
    assert api_error.returncode == 1
    assert api_error.stdout == "" and "No destination with id" in api_error.stderr
    usage = server.api("createDestination", "stray", user="alice",
                       password=PASSWORDS["alice"])
    assert usage.returncode == 2 and "--name=value" in usage.stderr
    bad_login = server.api("getDestinations", user="alice", password="wrong")
    assert bad_login.returncode == 3 and "Authentication failed" in bad_login.stderr
    no_password = server.api("getDestinations", user="alice")
    assert no_password.returncode == 3 and "JETSTREAM_API_PASSWORD" in no_password.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = _run(command("jetstream"), "api", "--api-control-port", str(closed_port),
                       "getServerInfo")
    assert unreachable.returncode == 3 and "Cannot connect" in unreachable.stderr
    no_auth = server.api("getDestinations")
    assert no_auth.returncode == 1 and "auth" in no_auth.stderr


def test_users_are_managed_from_the_command_line(server_process: Start, home: Path) -> None:
    users = str(home / "users")
    server_bin = command("jetstream-server")
    added = _run(server_bin, "user", "add", "carol", "--users-file", users,
                 env={"JETSTREAM_API_PASSWORD": "c-pw"})
    assert added.returncode == 0, added.stderr
    assert "c-pw" not in (home / "users").read_text()
    again = _run(server_bin, "user", "add", "carol", "--users-file", users,
                 env={"JETSTREAM_API_PASSWORD": "c-pw"})
    assert again.returncode != 0 and "already exists" in again.stderr
    listed = _run(server_bin, "user", "list", "--users-file", users)
    assert listed.stdout.split() == ["alice", "bob", "carol", "root"]
    server = server_process()  # the running server sees changes to the file
    assert server.api("getManifests", user="carol", password="c-pw").returncode == 0
    changed = _run(server_bin, "user", "passwd", "carol", "--users-file", users,
                   env={"JETSTREAM_API_PASSWORD": "new-pw"})
    assert changed.returncode == 0, changed.stderr
    assert server.api("getManifests", user="carol", password="c-pw").returncode == 3
    assert server.api("getManifests", user="carol", password="new-pw").returncode == 0
    removed = _run(server_bin, "user", "del", "carol", "--users-file", users)
    assert removed.returncode == 0
    assert server.api("getManifests", user="carol", password="new-pw").returncode == 3


def test_a_manifest_from_the_console_with_repeated_mappings(server_process: Start,
                                                            home: Path) -> None:
    src = home / "sandbox" / "media"
    src.mkdir()
    (src / "clip one.mov").write_bytes(b"m" * 4096)
    (src / "notes.txt").write_text("hello")
    server = server_process()
    created = server.api("createManifest", "--fileMappings=/media/clip one.mov:/in/clip.mov",
                         "--fileMappings", "/media/notes.txt:/in/notes.txt",
                         "--userData={\"job\": 42}", user="alice",
                         password=PASSWORDS["alice"])
    assert created.returncode == 0, created.stderr
    manifest = json.loads(created.stdout)
    assert manifest["status"] == "pending" and manifest["userData"] == {"job": 42}
    got = server.call("waitForManifest", "--manifestId", manifest["manifestId"],
                      "--timeoutSeconds=20")
    assert (got["status"], got["totalFiles"], got["totalSize"]) == ("complete", 2, 4101)
    files = json.loads(server.api("getManifestFiles", "--manifestId", manifest["manifestId"],
                                  user="alice", password=PASSWORDS["alice"]).stdout)
    assert sorted(f["destPath"] for f in files["fileMappings"]) == ["/in/clip.mov",
                                                                   "/in/notes.txt"]


def test_superuser_raises_the_session_before_the_command(server_process: Start) -> None:
    server = server_process("--superuser", "root")
    root = PASSWORDS["root"]
    refused = server.api("garbageCollect", user="root", password=root)
    assert refused.returncode == 1 and "call superuser first" in refused.stderr
    done = server.api("--superuser", "garbageCollect", user="root", password=root)
    assert done.returncode == 0, done.stderr
    not_one = server.api("--superuser", "garbageCollect", user="alice",
                         password=PASSWORDS["alice"])
    assert not_one.returncode == 1 and "alice is not a superuser" in not_one.stderr


def _start_fails(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = _run(command("jetstream-server"), *args, env=env, timeout_s=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_bad_settings_stop_the_server_with_one_line(home: Path) -> None:
    base = ["--api-port", "0", "--recv-port", "0", "--users-file", str(home / "users"),
            "--persistent-state-dir", str(home / "state")]
    line = _start_fails(home, *base, "--sandbox-dir", str(home / "nope"))
    assert "Sandbox folder" in line and "does not exist" in line
    (home / "users-dir").mkdir()
    line = _start_fails(home, *base[:4], "--users-file", str(home / "users-dir"),
                        "--sandbox-dir", str(home / "sandbox"))
    assert "Cannot read users file" in line
    line = _start_fails(home, *base, "--sandbox-dir", str(home / "sandbox"),
                        "--users-file", str(home / "missing-users"))
    assert "does not exist" in line and "user add" in line
    config = home / "bad.toml"
    config.write_text("api-prot = 1\n")
    line = _start_fails(home, "--config", str(config))
    assert "Unknown setting 'api-prot'" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _start_fails(home, *base, "--sandbox-dir", str(home / "sandbox"),
                            "--api-host", "127.0.0.1", "--api-port", str(port))
    assert "address already in use" in line and "--api-port" in line
    line = _start_fails(home, "--api-port", "x")
    assert "Invalid value" in line


def test_settings_come_from_environment_and_toml(server_process: Start, home: Path) -> None:
    config = home / "server.toml"
    config.write_text('server-name = "from-toml"\nsuperuser = ["root"]\n')
    server = server_process("--config", str(config),
                            env={"JETSTREAM_API_ALLOW_REMOTE_CONTROL": "true"})
    info = json.loads(server.api("getServerInfo").stdout)
    assert info["serverName"] == "from-toml"
    assert info["allowRemoteControl"] is True


def test_sigterm_stops_the_server_cleanly(server_process: Start) -> None:
    server = server_process()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    assert "stopped" in server.log_path.read_text()


def test_jetstream_server_subcommand_is_the_same_daemon(home: Path) -> None:
    proc = ServerProcess.__new__(ServerProcess)
    proc.log_path = home / "server2.log"
    proc.stream = proc.log_path.open("wb")
    proc.proc = subprocess.Popen(
        [command("jetstream"), "server", "--api-host", "127.0.0.1", "--api-port", "0",
         "--recv-port", "0", "--users-file", str(home / "users"), "--sandbox-dir",
         str(home / "sandbox"), "--persistent-state-dir", str(home / "state")],
        stdout=proc.stream, stderr=subprocess.STDOUT)
    try:
        proc.api_port = proc._wait_port()
        assert json.loads(proc.api("getServerInfo").stdout)["apiControlPort"] == proc.api_port
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("flag", ["--version"])
def test_version(flag: str) -> None:
    for name in ("jetstream-server", "jetstream"):
        done = _run(command(name), flag)
        assert done.returncode == 0 and "0.1.0" in done.stdout


def test_api_help_lists_every_command_and_an_unknown_one_exits_2() -> None:
    from jetstream_server.console import REGISTRY

    listed = _run(command("jetstream"), "api", "--help")
    assert listed.returncode == 0
    for each in REGISTRY.commands():
        assert each.name in listed.stdout, each.name
    assert "send.createTransfer" in listed.stdout and "Queue a manifest's files" in \
        listed.stdout
    one = _run(command("jetstream"), "api", "getTransfer", "--help")
    assert one.returncode == 0 and "--transferId=TEXT" in one.stdout
    unknown = _run(command("jetstream"), "api", "getTransfr")
    assert unknown.returncode == 2
    assert unknown.stderr == ("jetstream api: Unknown command 'getTransfr'. Did you mean "
                              "getTransfer or getTransfers?\n")


def test_importing_the_entry_points_derives_no_password_hash() -> None:
    probe = ("import hashlib\n"
             "calls = []\n"
             "real = hashlib.scrypt\n"
             "hashlib.scrypt = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
             "import jetstream_server.cli, jetstream_server.console\n"
             "import sys\n"
             "print(len(calls))\n"
             "print(' '.join(m for m in sys.modules if m.startswith('jetstream_server')))\n")
    done = _run(sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    hashes, loaded = done.stdout.splitlines()
    assert hashes == "0"
    daemon = {"jetstream_server.server", "jetstream_server.core.service",
              "jetstream_server.core.store", "jetstream_server.dataplane",
              "jetstream_server.commands.dispatch"}
    assert daemon.isdisjoint(loaded.split())  # the console loads the commands' table only
