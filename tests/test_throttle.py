"""One login throttle for the API and the data port: attempts wait in line, before they
are checked."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.core.connections import ConnectionLimits
from jetstream_server.core.throttle import BUSY_WAIT_S, LoginThrottle
from jetstream_server.errors import CommandFailed
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, make_home, make_settings
from tests.raw_sender import raw_send


def test_the_wait_grows_per_address_and_per_name_from_the_last_failure_then_is_forgotten(
        ) -> None:
    throttle = LoginThrottle(base_delay_s=0.25, max_delay_s=8.0, forget_after_s=900)
    assert throttle.wait_s("1.2.3.4", "alice", now=0) == 0
    throttle.end("1.2.3.4", "alice", ok=False, now=0)
    assert throttle.wait_s("1.2.3.4", "alice", now=0) == 0.25
    assert throttle.wait_s("1.2.3.4", "alice", now=0.1) == pytest.approx(0.15)
    throttle.end("1.2.3.4", "alice", ok=False, now=1)
    throttle.end("1.2.3.4", "alice", ok=False, now=2)
    assert throttle.wait_s("1.2.3.4", "zed", now=2) == 1.0  # same address
    assert throttle.wait_s("5.6.7.8", "alice", now=2) == 1.0  # same name
    assert throttle.wait_s("5.6.7.8", "zed", now=2) == 0
    for i in range(10):
        throttle.end("1.2.3.4", "alice", ok=False, now=3 + i)
    assert throttle.wait_s("1.2.3.4", "alice", now=12) == 8.0
    assert throttle.wait_s("1.2.3.4", "alice", now=12 + 901) == 0
    throttle.end("9.9.9.9", "carol", ok=False, now=0)
    throttle.end("9.9.9.9", "carol", ok=True, now=0.5)
    assert throttle.wait_s("9.9.9.9", "carol", now=0.5) == 0


def test_an_attempt_being_checked_makes_the_others_wait_and_too_many_waiting_are_refused(
        ) -> None:
    throttle = LoginThrottle(max_waiting=2)
    throttle.begin("1.2.3.4", "alice", now=0)
    assert throttle.wait_s("1.2.3.4", "bob", now=0) == BUSY_WAIT_S  # same address
    assert throttle.wait_s("5.6.7.8", "alice", now=0) == BUSY_WAIT_S  # same name
    assert throttle.join("1.2.3.4", "bob", now=0)
    assert throttle.join("1.2.3.4", "carol", now=0)
    assert not throttle.join("1.2.3.4", "dave", now=0)  # two wait for this address
    assert throttle.join("5.6.7.8", "dave", now=0)
    throttle.end("1.2.3.4", "alice", ok=True, now=0.1)
    assert throttle.wait_s("1.2.3.4", "bob", now=0.1) == 0
    for user in ("bob", "carol"):
        throttle.leave("1.2.3.4", user)
    throttle.leave("5.6.7.8", "dave")
    assert throttle._keys == {}  # nothing counted is kept


def test_the_throttle_keeps_a_bounded_number_of_counters() -> None:
    throttle = LoginThrottle(max_keys=10)
    for i in range(100):
        throttle.end(f"10.0.0.{i}", f"user{i}", ok=False, now=i)
    assert len(throttle._keys) <= 10
    assert throttle.wait_s("10.0.0.99", "x", now=99) > 0  # the newest are the ones kept


FAST = {"base_delay_s": 0.01, "max_delay_s": 0.08}


def _delays(throttle: LoginThrottle, failures: int) -> float:
    """The least time ``failures`` failures in a row take: the wait before each but the first."""
    return sum(throttle.delay_s(n) for n in range(1, failures))


@pytest.mark.timeout(120)
async def test_fifty_concurrent_wrong_guesses_take_as_long_as_fifty_in_a_row(
        home: Path) -> None:
    async with Server(make_settings(home)) as srv:
        assert srv.service is not None
        throttle = srv.service.throttle = LoginThrottle(**FAST)
        # (one address may keep 16 connections that have not logged in: let it have 51)
        srv.guard.limits = ConnectionLimits(max_unauthenticated_per_address=64)
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        started = time.monotonic()
        for _ in range(50):
            with pytest.raises(CommandFailed) as failed:
                await client.auth("alice", "guess")
            assert failed.value.code == "auth_failed"
        sequential = time.monotonic() - started
        await client.auth("alice", PASSWORDS["alice"])  # a success clears the counters

        clients = [await AsyncClient.connect("127.0.0.1", srv.api_port) for _ in range(50)]

        answered: list[float] = []

        async def guess(each: AsyncClient) -> str:
            try:
                await each.auth("alice", "guess")
            except CommandFailed as exc:
                return exc.message
            finally:
                answered.append(time.monotonic())
            return "accepted"

        started = time.monotonic()
        answers = await asyncio.gather(*(guess(c) for c in clients))
        concurrent = time.monotonic() - started
        assert answers == ["Authentication failed: wrong user name or password."] * 50
        assert concurrent >= _delays(throttle, 50)
        assert sequential >= _delays(throttle, 50)
        # taken in turn as the ones in a row were: each answer comes at least the wait
        # after n failures after the one before (and a password check more). (Comparing
        # the two runs' times instead failed when the machine slowed down between them:
        # most of each is the password hash's CPU time.)
        answered.sort()
        gaps = [later - earlier for earlier, later in itertools.pairwise(answered)]
        assert all(gap >= throttle.delay_s(n) - 0.005 for n, gap in enumerate(gaps, 1)), gaps
        for each in [client, *clients]:
            await each.close()


async def test_transfer_logins_wait_in_line_are_logged_and_slow_api_logins(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_home(tmp_path)
    async with Server(make_settings(tmp_path)) as srv:
        assert srv.service is not None
        throttle = srv.service.throttle = LoginThrottle(base_delay_s=0.1, max_delay_s=0.4)
        caplog.set_level(logging.WARNING, logger="jetstream.api")
        started = time.monotonic()
        cores = await asyncio.gather(*(
            raw_send(srv.recv_port, [("a.txt", b"x")], user="bob", password="guess",
                     timeout_s=30) for _ in range(6)))
        elapsed = time.monotonic() - started
        for core in cores:
            assert core.error == ("The receiving server refused user 'bob': wrong user "
                                  "name or password.")
        assert elapsed >= _delays(throttle, 6)  # 0.1 + 0.2 + 0.4 + 0.4 + 0.4
        failures = [r for r in caplog.records if "failed transfer login" in r.message]
        assert failures and "127.0.0.1 for bob (data port)" in failures[0].message
        assert all("guess" not in r.message for r in caplog.records)
        # the same counters slow a login on the API
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        started = time.monotonic()
        await client.auth("bob", PASSWORDS["bob"])
        assert time.monotonic() - started >= 0.3
        await client.close()
        # and a right password gets through on the data port once its turn comes
        core = await raw_send(srv.recv_port, [("a.txt", b"x")], user="bob",
                              password=PASSWORDS["bob"], timeout_s=30)
        assert core.error is None
        assert (tmp_path / "sandbox" / "a.txt").read_bytes() == b"x"
