"""Files at rest: private modes whatever the umask; stored passwords sealed with a key kept
outside the state database."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from jetstream_server.core.atrest import SecretBox
from jetstream_server.core.private import private_dir, private_file
from jetstream_server.core.store import StateStore
from jetstream_server.errors import ConfigError, UnreadableSecret
from tests.conftest import PASSWORDS, ServerProcess, command, make_home

SECRET = "S3cret-destination-password-\u00e9"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_and_folders_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would make a 0600 file 0400 and a 0700 folder 0500
    try:
        private_dir(tmp_path / "a" / "b")
        assert private_file(tmp_path / "a" / "b" / "f")
        assert not private_file(tmp_path / "a" / "b" / "f")  # it exists: left alone
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a" / "b" / "f") == 0o600


def test_a_sealed_secret_opens_only_with_its_key_and_in_its_place(tmp_path: Path) -> None:
    box = SecretBox.from_key_file(tmp_path / "keys" / "secret.key")
    assert _mode(tmp_path / "keys" / "secret.key") == 0o600
    sealed = box.seal(SECRET, "destination-1")
    assert SECRET not in sealed and box.seal(SECRET, "destination-1") != sealed
    assert box.open(sealed, "destination-1") == SECRET
    assert SecretBox.from_key_file(tmp_path / "keys" / "secret.key").open(
        sealed, "destination-1") == SECRET  # the same key read again
    with pytest.raises(UnreadableSecret):
        box.open(sealed, "destination-2")  # moved to another row
    with pytest.raises(UnreadableSecret):
        SecretBox.from_key_file(tmp_path / "other.key").open(sealed, "destination-1")
    flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(UnreadableSecret):
        box.open(flipped, "destination-1")


def test_a_key_file_readable_by_others_or_malformed_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    SecretBox.from_key_file(key)
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\): chmod 600"):
        SecretBox.from_key_file(key)
    os.chmod(key, 0o600)
    key.write_text("not hex\n")
    with pytest.raises(ConfigError, match="must hold 64 hexadecimal digits"):
        SecretBox.from_key_file(key)




def _send(a: ServerProcess, destination_id: str, name: str) -> dict[str, object]:
    manifest = a.call("createManifest", f"--fileMappings=/{name}:/{name}")
    deadline = time.monotonic() + 30
    while a.call("getManifest", f"--manifestId={manifest['manifestId']}")["status"] != \
            "complete":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    transfer = a.call("createTransfer", f"--destinationId={destination_id}",
                    f"--manifestId={manifest['manifestId']}")
    while (got := a.call("getTransfer", f"--transferId={transfer['transferId']}"))[
            "status"] in ("pending", "sending"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return got


@pytest.mark.timeout(120)
def test_with_umask_0_every_file_at_rest_is_private_and_no_password_is_stored(
        tmp_path: Path) -> None:
    b = ServerProcess(make_home(tmp_path / "b", {"bob": SECRET}))
    b_box = tmp_path / "b" / "sandbox"
    home = tmp_path / "a-home"  # made by the server, with everything at its defaults
    a_env = {"JETSTREAM_HOME": str(home)}
    log = tmp_path / "a.log"
    a = ServerProcess(tmp_path, "--log", str(log), env=a_env, paths=False, umask=0)
    try:
        assert a.api("getServerInfo").returncode == 0
        a.stop()
        users = home / "users"
        add = subprocess.run([command("jetstream-server"), "user", "add", "alice",
                              "--users-file", str(users)], capture_output=True, timeout=30,
                             env={**os.environ, "JETSTREAM_API_PASSWORD": PASSWORDS["alice"]},
                             umask=0)
        assert add.returncode == 0, add.stderr
        a = ServerProcess(tmp_path, "--log", str(log), env=a_env, paths=False, umask=0)
        destination = a.call("createDestination",
                           f"--destinationAddress=127.0.0.1:{b.recv_port}",
                           "--destinationUser=bob", f"--destinationPassword={SECRET}")
        assert "destinationPassword" not in destination
        (home / "sandbox" / "one.txt").write_text("one")
        assert _send(a, str(destination["destinationId"]), "one.txt")["status"] == "complete"
        running = sorted((home / "state").iterdir())  # SQLite's own files while it runs
        assert {p.name for p in running} >= {"state.sqlite3-wal", "state.sqlite3-shm"}
        assert all(_mode(p) == 0o600 for p in running), [(p, _mode(p)) for p in running]
        assert a.stop() == 0
        for folder in (home, home / "state"):
            assert _mode(folder) == 0o700, folder
        private = [home / "users", home / "secret.key", log, *(home / "state").iterdir()]
        assert {p.name for p in private} >= {"users", "secret.key", "state.sqlite3"}
        for path in private:
            assert _mode(path) == 0o600, path
        for path in [*home.rglob("*"), log]:
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
        # restarted, it opens the sealed password: the next transfer is authorized
        a = ServerProcess(tmp_path, env=a_env, paths=False)
        (home / "sandbox" / "two.txt").write_text("two")
        assert _send(a, str(destination["destinationId"]), "two.txt")["status"] == "complete"
        assert (b_box / "two.txt").read_text() == "two"
        assert a.stop() == 0
        # with another key, the destination says what to do instead of failing to log in
        (home / "secret.key").unlink()
        a = ServerProcess(tmp_path, env=a_env, paths=False)
        (home / "sandbox" / "three.txt").write_text("three")
        done = _send(a, str(destination["destinationId"]), "three.txt")
        assert done["status"] == "error"
        assert "cannot be read with this server's secret key" in str(done["errorMessage"])
        assert "delete the destination and create it again" in str(done["errorMessage"])
    finally:
        a.stop()
        b.stop()


def test_a_password_stored_in_plain_text_before_is_sealed_at_start(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    (home / "state").mkdir()
    store = StateStore(home / "state")
    store.put("destination", "d" * 32, {
        "id": "d" * 32, "owner": "alice", "create_time_us": 1, "user_data": {},
        "address": "127.0.0.1:9", "host": "127.0.0.1", "ip": "127.0.0.1", "port": 9,
        "send_rate_max_kbps": 0, "data_transport": "tcp", "remote_user": "bob",
        "remote_password": SECRET})
    store.close()
    server = ServerProcess(home)
    try:
        got = server.call("getDestination", f"--destinationId={'d' * 32}")
        assert got["hasCredentials"] is True
    finally:
        server.stop()
    for path in (home / "state").iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
