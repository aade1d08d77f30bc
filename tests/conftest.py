"""Shared fixtures: real servers on port 0, in this process or as separate processes."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.core.config import Settings, load_settings
from jetstream_server.core.users import hash_password, write_users_file
from jetstream_server.server import Server

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
BIN = Path(sys.executable).parent


@functools.cache
def _hash(password: str) -> str:
    return hash_password(password)


def write_users(path: Path, users: dict[str, str] | None = None) -> Path:
    write_users_file(path, {name: _hash(pw) for name, pw in (users or PASSWORDS).items()})
    return path


def make_home(path: Path, users: dict[str, str] | None = None) -> Path:
    """A server home: a sandbox folder, and a users file (alice, bob and root by default)."""
    (path / "sandbox").mkdir(parents=True)
    write_users(path / "users", users)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A server home: users file with alice, bob and root, and a sandbox folder."""
    return make_home(tmp_path)


def make_settings(home: Path, **overrides: Any) -> Settings:
    given: dict[str, Any] = {
        "api_host": "127.0.0.1", "api_port": 0, "recv_port": 0,
        "users_file": home / "users", "sandbox_dir": str(home / "sandbox"),
        "persistent_state_dir": home / "state", "superuser": ("root",),
        "secret_key_file": home / "secret.key",
    }
    given.update(overrides)
    return load_settings(given, None)


def make_ca_signed_certificate(folder: Path, *names: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for ``names`` (host names or IP addresses), as an
    operator's own (--api-cert/--api-key): (CA file, certificate file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on loopback where datagrams arrive and nothing ever answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
async def server(home: Path) -> AsyncIterator[Server]:
    async with Server(make_settings(home)) as srv:
        yield srv


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Callable[..., Any]]:
    """connect(user=None) -> an AsyncClient, logged in as ``user`` when given."""
    clients: list[AsyncClient] = []

    async def _connect(user: str | None = None) -> AsyncClient:
        client = await AsyncClient.connect("127.0.0.1", server.api_port)
        clients.append(client)
        if user is not None:
            await client.auth(user, PASSWORDS[user])
        return client

    yield _connect
    for client in clients:
        await client.close()


def command(name: str) -> str:
    """The installed console script ``name`` (beside this Python)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


class ServerProcess:
    """``jetstream-server`` run as a separate process, the way an operator would."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None,
                 paths: bool = True, umask: int = -1) -> None:
        """``paths`` False: the server's files at their defaults (``$JETSTREAM_HOME``)."""
        self.log_path = home / "server.log"
        self.stream = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        where = ["--users-file", str(home / "users"), "--sandbox-dir", str(home / "sandbox"),
                 "--persistent-state-dir", str(home / "state"),
                 "--secret-key-file", str(home / "secret.key")] if paths else []
        self.proc = subprocess.Popen(
            [command("jetstream-server"), "--api-host", "127.0.0.1", "--api-port", "0",
             "--recv-port", "0", *where, *args],
            stdout=self.stream, stderr=subprocess.STDOUT, env=full_env, umask=umask)
        self.api_port = self._wait_port()

    def _wait_port(self, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = re.search(r"listening on TCP \S+:(\d+); data port UDP and TCP (\d+)",
                              text)
            if match:
                self.recv_port = int(match.group(2))
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise AssertionError("server did not start:\n" + self.log_path.read_text())

    def api(self, *args: str, user: str | None = None, password: str | None = None,
            timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        argv = [command("jetstream"), "api", "--api-control-port", str(self.api_port)]
        if user is not None:
            argv += ["--user", user]
        env = {k: v for k, v in os.environ.items() if k != "JETSTREAM_API_PASSWORD"}
        if password is not None:
            env["JETSTREAM_API_PASSWORD"] = password
        return subprocess.run([*argv, *args], capture_output=True, text=True, env=env,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)

    def call(self, *args: str, user: str = "alice") -> Any:
        """``jetstream api ARGS`` as ``user``: the result, which must be a success."""
        done = self.api(*args, user=user, password=PASSWORDS[user])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stream.close()
        return self.proc.returncode


@pytest.fixture
def server_process(home: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(home, *args, env=env)
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.stop()


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes, each with its home (users alice and bob) under tmp_path."""
    make_home(tmp_path / "a")
    make_home(tmp_path / "b")
    a = ServerProcess(tmp_path / "a")
    b = ServerProcess(tmp_path / "b")
    yield a, b
    a.stop()
    b.stop()
