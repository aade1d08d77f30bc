"""API connections from other machines are refused unless --api-allow-remote-control.

The remote client runs in a network namespace of this test's own, joined to the host by a
veth pair on 198.18.0.0/15 (the range set aside for network tests); the host gets a
blackhole route for that range so nothing addressed there can leave the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from jetstream_server.core.netaddr import is_loopback
from jetstream_server.server import Server
from tests.conftest import command, make_ca_signed_certificate, make_settings

NETWORK = "198.18.0.0/15"


def test_loopback_addresses_are_recognised() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::1%lo"):
        assert is_loopback(host), host
    for host in ("198.18.0.2", "::ffff:198.18.0.2", "2001:db8::1", "localhost-ish", ""):
        assert not is_loopback(host), host


async def test_a_dual_stack_listener_accepts_ipv4_and_ipv6_loopback(home: Path) -> None:
    async with Server(make_settings(home, api_host=None)) as server:
        for host in ("127.0.0.1", "::1"):
            reader, writer = await asyncio.open_connection(host, server.api_port)
            writer.write(b'{"request": "getServerInfo"}\n')
            response = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
            assert response["status"] == "success", host
            writer.close()


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, host address, namespace address), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to build a network namespace")
    tag = f"{os.getpid() % 100000}"
    name, veth_host, veth_ns = f"jst{tag}", f"jsth{tag}", f"jstn{tag}"
    third = os.getpid() % 250 + 1
    host_ip, ns_ip = f"198.18.{third}.1", f"198.18.{third}.2"
    try:
        _ip("route", "replace", "blackhole", NETWORK)
        _ip("netns", "add", name)
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_ns)
        _ip("link", "set", veth_ns, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", veth_host)
        _ip("link", "set", veth_host, "up")
        _ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", veth_ns)
        _ip("-n", name, "link", "set", veth_ns, "up")
        _ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        _ip("link", "del", veth_host, check=False)
        _ip("netns", "del", name, check=False)
        pytest.skip(f"cannot build a network namespace here: {exc.stderr!r}")
    try:
        yield name, host_ip, ns_ip
    finally:
        _ip("link", "del", veth_host, check=False)
        _ip("netns", "del", name, check=False)
        _ip("route", "del", "blackhole", NETWORK, check=False)


_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
if sys.argv[3:] != ["silent"]:
    s.sendall(b'{"request": "getServerInfo", "id": 1}\\n')
print(s.makefile("rb").readline().decode(), end="")
"""


async def _remote_answer(namespace: str, host: str, port: int, *how: str
                         ) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, sys.executable, "-c", _CLIENT, host, str(port),
        *how,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    answer: dict[str, object] = orjson.loads(out)
    return answer


async def _remote_console(namespace: str, host: str, port: int, known: Path, *args: str
                          ) -> subprocess.CompletedProcess[str]:
    """``jetstream api --host HOST ...`` run in the namespace, as a user elsewhere would."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, command("jetstream"), "api", "--host", host,
        "--api-control-port", str(port), *args,
        env={**os.environ, "JETSTREAM_KNOWN_SERVERS": str(known)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())


async def test_remote_clients_are_refused_unless_allowed_and_then_must_use_tls(
        home: Path, tmp_path: Path, namespace: tuple[str, str, str]) -> None:
    name, host_ip, _ = namespace
    known = tmp_path / "known_servers"
    async with Server(make_settings(home, api_host=host_ip)) as closed:
        refused = await _remote_answer(name, host_ip, closed.api_port)
        assert refused["status"] == "error"
        assert refused["code"] == "remote_control_refused"
        assert "--api-allow-remote-control" in str(refused["message"])
        over_tls = await _remote_console(name, host_ip, closed.api_port, known,
                                         "getServerInfo")
        assert over_tls.returncode == 3 and "--api-allow-remote-control" in over_tls.stderr
    async with Server(make_settings(home, api_host=host_ip,
                                    api_allow_remote_control=True)) as open_:
        assert open_.service is not None
        plain = await _remote_answer(name, host_ip, open_.api_port)
        assert plain["code"] == "tls_required"
        assert "connect with TLS" in str(plain["message"])
        first = await _remote_console(name, host_ip, open_.api_port, known, "getServerInfo")
        assert first.returncode == 0, first.stderr
        fingerprint = open_.service.api_certificate.fingerprint
        assert orjson.loads(first.stdout)["certificateFingerprint"] == fingerprint
        assert f"{fingerprint} was added to {known}" in first.stderr
        again = await _remote_console(name, host_ip, open_.api_port, known, "getServerInfo")
        assert again.returncode == 0 and again.stderr == ""
        port = open_.api_port
    for made in ("api-cert.pem", "api-key.pem"):  # the server's certificate is replaced
        (home / "state" / made).unlink()
    async with Server(make_settings(home, api_host=host_ip, api_port=port,
                                    api_allow_remote_control=True)) as replaced:
        assert replaced.service is not None
        new = replaced.service.api_certificate.fingerprint
        changed = await _remote_console(name, host_ip, replaced.api_port, known,
                                        "getServerInfo")
        assert changed.returncode == 3
        assert f"has CHANGED: it was {fingerprint}, it is now {new}" in changed.stderr
        line = known.read_text().splitlines().index(f"{host_ip}:{port} {fingerprint}") + 1
        assert f"remove line {line} of {known}" in changed.stderr
        assert f"--api-fingerprint={new}" in changed.stderr
        pinned = await _remote_console(name, host_ip, replaced.api_port, known,
                                       f"--api-fingerprint={new}", "getServerInfo")
        assert pinned.returncode == 0, pinned.stderr
        wrong = await _remote_console(name, host_ip, replaced.api_port, known,
                                      f"--api-fingerprint={fingerprint}", "getServerInfo")
        assert wrong.returncode == 3 and f"has fingerprint {new}, not {fingerprint}" in \
            wrong.stderr


async def test_a_certificate_signed_by_a_ca_is_verified_with_the_ca_file(
        home: Path, tmp_path: Path, namespace: tuple[str, str, str]) -> None:
    name, host_ip, _ = namespace
    ca, cert, key = make_ca_signed_certificate(tmp_path, host_ip)
    other_ca, _, _ = make_ca_signed_certificate(tmp_path / "other", host_ip)
    known = tmp_path / "known_servers"
    async with Server(make_settings(home, api_host=host_ip, api_allow_remote_control=True,
                                    api_cert=cert, api_key=key)) as server:
        trusted = await _remote_console(name, host_ip, server.api_port, known,
                                        f"--api-ca-file={ca}", "getServerInfo")
        assert trusted.returncode == 0, trusted.stderr
        assert not known.exists()  # (a CA needs no remembering)
        untrusted = await _remote_console(name, host_ip, server.api_port, known,
                                          f"--api-ca-file={other_ca}", "getServerInfo")
        assert untrusted.returncode == 3
        assert "is not trusted by the CA" in untrusted.stderr


async def test_with_the_data_port_apart_remote_clients_are_refused_at_accept(
        home: Path, namespace: tuple[str, str, str]) -> None:
    name, host_ip, _ = namespace
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        data_port = probe.getsockname()[1]
    async with Server(make_settings(home, api_host=host_ip, recv_port=data_port)) as srv:
        assert srv.recv_port != srv.api_port
        refused = await _remote_answer(name, host_ip, srv.api_port, "silent")
        assert refused["code"] == "remote_control_refused"  # before sending a byte
        assert len(srv.guard) == 0
