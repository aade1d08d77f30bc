"""Rate policies and server-wide limits through the API, with real server processes: the
parameters and their errors, updateBandwidthLimits (superuser, kept across restarts,
refused for what the configuration sets), and a receiver's incoming limit reaching the
sender of a running transfer. (Rates themselves are measured in bench/.)"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.errors import CommandFailed
from tests.conftest import PASSWORDS, ServerProcess, make_home
from tests.transfer_helpers import send, wait_transfer

Connect = Callable[..., Any]


@pytest.fixture
async def login() -> AsyncIterator[Callable[..., Any]]:
    """login(server, user) -> an AsyncClient logged in to a server process."""
    clients: list[AsyncClient] = []

    async def _login(server: ServerProcess, user: str = "alice") -> AsyncClient:
        client = await AsyncClient.connect("127.0.0.1", server.api_port)
        clients.append(client)
        await client.auth(user, PASSWORDS[user])
        return client

    yield _login
    for client in clients:
        await client.close()


async def _fails(code: str, match: str, call: Any) -> None:
    with pytest.raises(CommandFailed, match=match) as failed:
        await call
    assert failed.value.code == code


async def _rate_limit_becomes(client: AsyncClient, tid: str, kbps: int,
                              or_complete: bool = False) -> dict[str, Any]:
    """The transfer once its rateLimit is ``kbps`` (it must still be queued or sending,
    or, with ``or_complete``, may have completed)."""
    async with asyncio.timeout(20):
        while True:
            got: dict[str, Any] = await client.call("getTransfer", transferId=tid)
            if got["rateLimit"] == kbps or (or_complete and got["status"] == "complete"):
                return got
            assert got["status"] in ("pending", "sending"), got
            await asyncio.sleep(0.05)


async def _send_file(client: AsyncClient, sandbox: Path, to: ServerProcess, name: str,
                     data: bytes, **destination: Any) -> str:
    """Write ``name`` into ``sandbox`` and send it to user bob on ``to``: the transfer id."""
    (sandbox / name).write_bytes(data)
    made = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{to.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"], **destination)
    transfer = await send(client, made["destinationId"], {f"/{name}": f"/{name}"})
    return str(transfer["transferId"])


async def _arrives(client: AsyncClient, tid: str, path: Path, data: bytes,
                   timeout_s: float = 30) -> None:
    """The transfer completes and ``path`` holds ``data``."""
    done = await wait_transfer(client, tid, timeout_s=timeout_s)
    assert done["status"] == "complete", done["errorMessage"]
    assert path.read_bytes() == data


async def test_rate_policies_are_checked_shown_and_changed(
        connect: Connect, silent_port: int, home: Path) -> None:
    alice = await connect("alice")
    address = f"127.0.0.1:{silent_port}"
    await _fails("invalid_parameter", "ratePolicy must be one of fair, low, high, fixed",
                 alice.call("createDestination", destinationAddress=address,
                            ratePolicy="polite"))
    await _fails("invalid_parameter", "fixed sends at sendRateMax",
                 alice.call("createDestination", destinationAddress=address,
                            ratePolicy="fixed"))
    fixed = await alice.call("createDestination", destinationAddress=address,
                             ratePolicy="fixed", sendRateMax=20_000)
    assert (fixed["ratePolicy"], fixed["sendRateMax"]) == ("fixed", 20_000)
    plain = await alice.call("createDestination", destinationAddress=address)
    assert plain["ratePolicy"] == "fair"  # the default
    assert plain["destinationId"] != fixed["destinationId"]  # another policy: another one
    (home / "sandbox" / "f.bin").write_bytes(b"x" * 1000)
    transfer = await send(alice, plain["destinationId"], {"/f.bin": "/f.bin"},
                          ratePolicy="low")
    assert (transfer["ratePolicy"], transfer["sendRateMax"], transfer["rateLimit"]) == \
        ("low", 0, 0)
    await _fails("invalid_parameter", "fixed sends at sendRateMax",
                 send(alice, plain["destinationId"], {"/f.bin": "/g.bin"},
                      ratePolicy="fixed"))
    inherited = await send(alice, fixed["destinationId"], {"/f.bin": "/f.bin"})
    assert inherited["ratePolicy"] == "fixed"  # the destination's
    tid = transfer["transferId"]
    await _fails("invalid_parameter", "Give sendRateMax",
                 alice.call("setSendRate", transferId=tid))
    await _fails("invalid_parameter", "fixed sends at sendRateMax",
                 alice.call("setSendRate", transferId=tid, ratePolicy="fixed"))
    changed = await alice.call("setSendRate", transferId=tid, ratePolicy="fixed",
                               sendRateMax=5000)
    assert (changed["ratePolicy"], changed["sendRateMax"]) == ("fixed", 5000)
    changed = await alice.call("setSendRate", transferId=tid, ratePolicy="high",
                               sendRateMax=0)
    assert (changed["ratePolicy"], changed["sendRateMax"]) == ("high", 0)
    assert (await alice.call("getTransfer", transferId=tid))["ratePolicy"] == "high"


async def test_update_bandwidth_limits_applies_persists_and_respects_the_configuration(
        tmp_path: Path, login: Callable[..., Any]) -> None:
    home = make_home(tmp_path / "a")
    flags = ("--superuser", "root", "--outgoing-rate-limit", "30000")
    server = ServerProcess(home, *flags)
    try:
        root, alice = await login(server, "root"), await login(server, "alice")
        info = await alice.call("getServerInfo")
        assert info["bandwidthLimits"] == {
            "incomingRateLimit": 0, "outgoingRateLimit": 30_000, "borrowIncomingRate": False,
            "borrowOutgoingRate": False, "schedule": [], "activeSchedule": None}
        await _fails("permission_denied", "raised superuser",
                     alice.call("updateBandwidthLimits", incomingRateLimit=1))
        await root.call("superuser")
        await _fails("invalid_parameter", "Give one or more of",
                     root.call("updateBandwidthLimits"))
        await _fails("invalid_parameter", "kbit/s",
                     root.call("updateBandwidthLimits", incomingRateLimit=-1))
        await _fails("set_by_configuration", "outgoingRateLimit is set by "
                     "--outgoing-rate-limit",
                     root.call("updateBandwidthLimits", outgoingRateLimit=1000))
        changed = await root.call("updateBandwidthLimits", incomingRateLimit=20_000,
                                  borrowOutgoingRate=True)
        assert (changed["incomingRateLimit"], changed["outgoingRateLimit"],
                changed["borrowOutgoingRate"]) == (20_000, 30_000, True)
    finally:
        server.stop()
    server = ServerProcess(home, *flags)  # kept across a restart
    try:
        alice = await login(server, "alice")
        limits = (await alice.call("getServerInfo"))["bandwidthLimits"]
        assert (limits["incomingRateLimit"], limits["borrowOutgoingRate"]) == (20_000, True)
    finally:
        server.stop()
    # the configuration wins over what was stored, and a schedule shows
    (home / "config.toml").write_text(
        'incoming-rate-limit = 7000\n[[bandwidth-schedule]]\ndays = "daily"\n'
        'from = "00:00"\nuntil = "24:00"\noutgoing-rate-limit = 5000\n')
    server = ServerProcess(home, "--config", str(home / "config.toml"))
    try:
        alice = await login(server, "alice")
        limits = (await alice.call("getServerInfo"))["bandwidthLimits"]
        assert (limits["incomingRateLimit"], limits["outgoingRateLimit"],
                limits["borrowOutgoingRate"], limits["activeSchedule"]) == \
            (7000, 5000, True, 0)
        assert limits["schedule"] == [{"days": ["mon", "tue", "wed", "thu", "fri", "sat",
                                                "sun"], "from": "00:00", "until": "00:00",
                                       "outgoingRateLimit": 5000}]
    finally:
        server.stop()


async def test_the_receivers_incoming_limit_reaches_the_sender_and_follows_changes(
        tmp_path: Path, login: Callable[..., Any]) -> None:
    """The receiving server's incoming limit is told to the sender in every ACK: the
    running transfer's rateLimit shows it, and changes when the receiver's operator
    changes it; the files arrive identical."""
    a = ServerProcess(make_home(tmp_path / "a"))
    b = ServerProcess(make_home(tmp_path / "b"), "--superuser", "root")
    try:
        alice, root = await login(a, "alice"), await login(b, "root")
        await root.call("superuser")
        await root.call("updateBandwidthLimits", incomingRateLimit=800)
        data = os.urandom(600_000)  # 6 s at 800 kbit/s
        tid = await _send_file(alice, tmp_path / "a" / "sandbox", b, "f.bin", data,
                               sendRateMax=2000)
        got = await _rate_limit_becomes(alice, tid, 800)  # the receiver's, below our own
        assert got["status"] == "sending"
        await root.call("updateBandwidthLimits", incomingRateLimit=1500)
        got = await _rate_limit_becomes(alice, tid, 1500)
        assert got["status"] == "sending"
        await root.call("updateBandwidthLimits", incomingRateLimit=0)
        # no limit there: our own sendRateMax
        await _rate_limit_becomes(alice, tid, 2000, or_complete=True)
        await _arrives(alice, tid, tmp_path / "b" / "sandbox" / "f.bin", data)
    finally:
        a.stop()
        b.stop()


async def test_the_outgoing_limit_is_shared_and_a_lower_own_limit_wins(
        tmp_path: Path, login: Callable[..., Any]) -> None:
    a = ServerProcess(make_home(tmp_path / "a"), "--outgoing-rate-limit", "900")
    b = ServerProcess(make_home(tmp_path / "b"))
    try:
        alice = await login(a, "alice")
        data = os.urandom(400_000)
        tid = await _send_file(alice, tmp_path / "a" / "sandbox", b, "f.bin", data)
        await _rate_limit_becomes(alice, tid, 900)
        await alice.call("setSendRate", transferId=tid, sendRateMax=600)
        await _rate_limit_becomes(alice, tid, 600)
        await alice.call("setSendRate", transferId=tid, sendRateMax=0)
        await _arrives(alice, tid, tmp_path / "b" / "sandbox" / "f.bin", data)
    finally:
        a.stop()
        b.stop()


async def test_borrowing_lends_the_idle_incoming_limit_and_takes_it_back(
        tmp_path: Path, login: Callable[..., Any]) -> None:
    """JetStream's example, scaled down: 400 in and 600 out with borrowing. A sends with
    all 1000 while nothing comes in; when B starts sending to A, A's incoming transfer
    gets its 400 (told to B's sender) and A's outgoing one falls to 600."""
    a = ServerProcess(make_home(tmp_path / "a"), "--outgoing-rate-limit", "600",
                      "--incoming-rate-limit", "400", "--borrow-outgoing-rate")
    b = ServerProcess(make_home(tmp_path / "b"))
    try:
        alice_a, alice_b = await login(a, "alice"), await login(b, "alice")
        out_data, in_data = os.urandom(1_200_000), os.urandom(300_000)
        outgoing = await _send_file(alice_a, tmp_path / "a" / "sandbox", b, "out.bin",
                                    out_data)
        await _rate_limit_becomes(alice_a, outgoing, 1000)  # 600 + the idle 400
        incoming = await _send_file(alice_b, tmp_path / "b" / "sandbox", a, "in.bin",
                                    in_data)
        await _rate_limit_becomes(alice_b, incoming, 400)  # A's incoming limit, via ACKs
        await _rate_limit_becomes(alice_a, outgoing, 600)  # taken back
        await _arrives(alice_b, incoming, tmp_path / "a" / "sandbox" / "in.bin", in_data,
                       timeout_s=40)
        await _arrives(alice_a, outgoing, tmp_path / "b" / "sandbox" / "out.bin", out_data,
                       timeout_s=40)
    finally:
        a.stop()
        b.stop()
