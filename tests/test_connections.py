"""Every TCP connection is owned from accept to close: limits, timeouts, no leaks."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import orjson
import pytest

from jetstream_server import server as server_module
from jetstream_server.client import AsyncClient
from jetstream_server.core.connections import ConnectionGuard, ConnectionLimits, Tracked
from jetstream_server.protocol.wire import TCP_PREFACE
from jetstream_server.server import Server
from tests.attacks import HOW, churn, fd_count
from tests.conftest import PASSWORDS, ServerProcess, make_home, make_settings
from tests.transfer_helpers import send, wait_transfer


def _conn(address: str = "10.0.0.1") -> tuple[Tracked, list[str]]:
    closed: list[str] = []
    return Tracked(address, 0.0, closed.append), closed


def test_the_oldest_unauthenticated_connection_makes_room_for_a_new_one() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_unauthenticated_per_address=2))
    first, second, third = _conn()[0], _conn()[0], _conn()[0]
    assert guard.admit(first, now=0) == []
    assert guard.admit(second, now=1) == []
    assert guard.admit(third, now=2) == [first]  # the oldest goes
    other = _conn("10.0.0.2")[0]
    assert guard.admit(other, now=3) == []  # another address has its own room
    assert len(guard) == 3


def test_when_every_connection_in_a_limit_is_logged_in_the_new_one_is_refused() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_per_address=2))
    a, b = _conn()[0], _conn()[0]
    guard.admit(a, now=0)
    guard.admit(b, now=0)
    a.spoke(1, authenticated=True)
    c = _conn()[0]
    assert guard.admit(c, now=2) == [b]  # b had not logged in: it makes room
    c.spoke(3, authenticated=True)
    d = _conn()[0]
    assert guard.admit(d, now=4) is None  # a and c are logged in
    guard.release(a)
    assert guard.admit(d, now=5) == []


def test_the_total_limit_evicts_across_addresses() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_total=3))
    conns = [_conn(f"10.0.0.{i}")[0] for i in range(3)]
    for i, conn in enumerate(conns):
        guard.admit(conn, now=i)
    conns[0].spoke(5, authenticated=True)
    newcomer = _conn("10.0.0.9")[0]
    assert guard.admit(newcomer, now=6) == [conns[1]]


def test_silent_idle_and_long_idle_logged_in_connections_expire_busy_ones_do_not(
        ) -> None:
    guard = ConnectionGuard(ConnectionLimits(first_message_s=10, unauthenticated_idle_s=30,
                                             idle_s=3600))
    silent, idle, busy, logged_in = (_conn()[0] for _ in range(4))
    for conn in (silent, idle, busy, logged_in):
        guard.admit(conn, now=0)
    idle.spoke(5, authenticated=False)
    busy.spoke(5, authenticated=False)
    busy.busy = 1
    logged_in.spoke(5, authenticated=True)
    assert guard.expired(9.9) == []
    assert [c for c, _ in guard.expired(10)] == [silent]
    assert [c for c, _ in guard.expired(35)] == [silent, idle]
    assert "No request within 10 s" in guard.expired(35)[0][1]
    assert [c for c, _ in guard.expired(3605)] == [silent, idle, logged_in]  # an hour idle
    assert guard.expired(3605)[2][1] == "Idle for 3600 s; the connection is closed."


def _server_fds(pid: int, baseline: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (count := fd_count(pid)) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


@pytest.mark.timeout(120)
def test_connections_opened_and_closed_in_every_way_leave_no_descriptor(
        server_process: type[ServerProcess]) -> None:
    proc = server_process()
    pid = proc.proc.pid
    assert proc.api("getServerInfo").returncode == 0  # warmed up: its lazy fds are open
    baseline = fd_count(pid)
    for how in HOW:
        churn(proc.api_port, 5000, how)
        assert _server_fds(pid, baseline) == baseline, how
    # the server still answers
    assert proc.api("getServerInfo").returncode == 0


async def _answer(reader: asyncio.StreamReader) -> dict[str, object]:
    line = await asyncio.wait_for(reader.readline(), 10)
    answer: dict[str, object] = orjson.loads(line)
    return answer


async def test_silent_and_half_line_connections_are_closed_with_a_reason(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "SWEEP_S", 0.1)
    async with Server(make_settings(home)) as srv:
        srv.guard.limits = ConnectionLimits(first_message_s=0.5, unauthenticated_idle_s=1.0)
        before = fd_count(os.getpid())
        silent = await asyncio.open_connection("127.0.0.1", srv.api_port)
        half = await asyncio.open_connection("127.0.0.1", srv.api_port)
        half[1].write(b'{"request": "getSer')
        idle = await asyncio.open_connection("127.0.0.1", srv.api_port)
        idle[1].write(b'{"request": "getServerInfo"}\n')
        assert (await _answer(idle[0]))["status"] == "success"
        data = await asyncio.open_connection("127.0.0.1", srv.api_port)
        data[1].write(TCP_PREFACE)  # a data stream that never says HELLO
        for reader, _ in (silent, half):
            answer = await _answer(reader)
            assert answer["code"] == "connection_closed"
            assert "No request within 0.5 s of connecting" in str(answer["message"])
            assert await asyncio.wait_for(reader.read(), 10) == b""
        answer = await _answer(idle[0])
        assert answer["code"] == "connection_closed" and "Idle for 1 s" in str(
            answer["message"])
        closed = await _answer(data[0])  # a data stream is told too: its sender retries
        assert closed["code"] == "connection_closed"
        assert await asyncio.wait_for(data[0].read(), 10) == b""
        # a logged-in connection is not closed for being quiet
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        await asyncio.sleep(1.5)
        assert (await client.call("getServerInfo"))["apiControlPort"] == srv.api_port
        await client.close()
        for _, writer in (silent, half, idle, data):
            writer.close()
        await asyncio.sleep(0.2)
        assert len(srv.guard) == 0
        assert fd_count(os.getpid()) <= before


async def test_a_flood_of_silent_connections_never_keeps_a_client_out(home: Path) -> None:
    async with Server(make_settings(home)) as srv:
        srv.guard.limits = ConnectionLimits(max_unauthenticated_per_address=8)
        flood = [await asyncio.open_connection("127.0.0.1", srv.api_port) for _ in range(40)]
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        await client.auth("alice", PASSWORDS["alice"])  # got in, and logged in
        more = [await asyncio.open_connection("127.0.0.1", srv.api_port) for _ in range(20)]
        assert (await client.call("getServerInfo"))["apiControlPort"] == srv.api_port
        evicted = await _answer(flood[0][0])
        assert evicted["code"] == "connection_closed"
        assert "make room" in str(evicted["message"])
        assert len(srv.guard) <= 8 + 1
        await client.close()
        for _, writer in flood + more:
            writer.close()


async def test_beyond_the_limit_of_logged_in_connections_the_new_one_is_told_why(
        home: Path) -> None:
    async with Server(make_settings(home)) as srv:
        srv.guard.limits = ConnectionLimits(max_per_address=2)
        clients = [await AsyncClient.connect("127.0.0.1", srv.api_port) for _ in range(2)]
        for client in clients:
            await client.auth("bob", PASSWORDS["bob"])
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.api_port)
        answer = await _answer(reader)
        assert answer["code"] == "busy"
        assert answer["message"] == "Too many connections to this server; try again later."
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await clients[0].close()
        await asyncio.sleep(0.1)
        again = await AsyncClient.connect("127.0.0.1", srv.api_port)
        assert (await again.call("getServerInfo"))["apiControlPort"] == srv.api_port
        await again.close()
        await clients[1].close()


async def test_before_login_lines_are_short_and_few(home: Path) -> None:
    async with Server(make_settings(home)) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.api_port)
        writer.write(b'{"request": "getServerInfo", "parameters": {"x": "' + b"a" * 20000)
        answer = await _answer(reader)
        assert answer["code"] == "line_too_long"
        assert "16384 bytes" in str(answer["message"])
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.api_port)
        writer.write(b'{"request": "getServerInfo"}\n' * 50)
        answers = []
        while line := await asyncio.wait_for(reader.readline(), 10):
            answers.append(orjson.loads(line))
        assert len(answers) <= 10
        assert answers[-1]["code"] == "busy" and "before logging in" in answers[-1]["message"]
        writer.close()
        # once logged in, the long limit applies
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        done = await client.request("updateObjectUserData", {
            "objectId": "0" * 32, "userData": {"x": "a" * 30000}})
        assert done["code"] == "not_found"
        await client.close()


def test_a_port_scan_of_the_data_listener_leaves_no_descriptor(tmp_path: Path) -> None:
    make_home(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        data_port = probe.getsockname()[1]
    proc = ServerProcess(tmp_path, "--recv-port", str(data_port))
    try:
        assert proc.recv_port != proc.api_port
        baseline = fd_count(proc.proc.pid)
        for how in HOW:
            churn(proc.recv_port, 2000, how)
        assert _server_fds(proc.proc.pid, baseline) == baseline
    finally:
        proc.stop()


async def test_a_refused_tcp_data_connection_is_tried_again_later(tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_home(tmp_path / name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        data_port = probe.getsockname()[1]
    async with Server(make_settings(tmp_path / "a")) as a, \
            Server(make_settings(tmp_path / "b", recv_port=data_port)) as b:
        b.guard.limits = ConnectionLimits(max_per_address=0)  # every connection refused
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"], dataTransport="tcp")
        (tmp_path / "a" / "sandbox" / "f.txt").write_text("later")
        transfer = await send(client, destination["destinationId"], {"/f.txt": "/f.txt"})
        async with asyncio.timeout(20):
            while not (got := await client.call(
                    "getDestination", destinationId=destination["destinationId"]))[
                    "lastErrorMessage"]:
                await asyncio.sleep(0.05)
        assert got["lastErrorMessage"] == ("The receiver closed the TCP data connection: Too "
                                           "many connections to this server; try again later.")
        b.guard.limits = ConnectionLimits()
        done = await wait_transfer(client, transfer["transferId"], timeout_s=30)
        assert done["status"] == "complete"
        assert (tmp_path / "b" / "sandbox" / "f.txt").read_text() == "later"
        await client.close()
