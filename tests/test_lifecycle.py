"""The server's lifecycle, as asyncio.Server and websockets' Server have it."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from jetstream_server.errors import ConfigError
from jetstream_server.server import Server
from tests.attacks import fd_count
from tests.conftest import make_settings


async def test_close_is_idempotent_and_wait_closed_may_be_awaited_many_times(
        home: Path) -> None:
    server = Server(make_settings(home))
    await server.start()
    port = server.api_port
    server.close()
    server.close()
    waiters = [asyncio.create_task(server.wait_closed()) for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(*waiters), 30)
    await server.wait_closed()  # and again, after it is done
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert server.service is not None and server.service.state.closed


async def test_wait_closed_before_close_waits_for_it(home: Path) -> None:
    server = Server(make_settings(home))
    await server.start()
    waiting = asyncio.create_task(server.wait_closed())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    server.close()
    await asyncio.wait_for(waiting, 30)


async def test_serve_forever_returns_only_after_the_drain(home: Path) -> None:
    triggers = home / "triggers"
    triggers.mkdir()
    (triggers / "launch").write_text("#!/bin/sh\nsleep 1\necho done > drained\n")
    (triggers / "launch").chmod(0o755)
    server = Server(make_settings(home, trigger_dir=triggers))
    serving = asyncio.create_task(server.serve_forever())
    while server.service is None or server.dispatcher is None:
        await asyncio.sleep(0.01)
    server.close()  # while the launch trigger runs: the drain gives it time
    await asyncio.wait_for(serving, 30)
    assert (triggers / "drained").read_text() == "done\n"
    assert server.service.state.closed


async def test_cancelling_serve_forever_closes_the_server(home: Path) -> None:
    server = Server(make_settings(home))
    serving = asyncio.create_task(server.serve_forever())
    while server.service is None or server.dispatcher is None:
        await asyncio.sleep(0.01)
    port = server.api_port
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, 30)
    assert server.closing
    await asyncio.wait_for(server.wait_closed(), 30)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_start_that_fails_halfway_releases_what_it_took(home: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    await asyncio.sleep(0.1)  # (the loop's own threads and descriptors are made)
    threads, fds = threading.active_count(), fd_count(os.getpid())
    server = Server(make_settings(home, api_port=taken))
    with pytest.raises(ConfigError, match="address already in use"):
        await server.start()  # the state store was opened first
    deadline = time.monotonic() + 10
    while threading.active_count() > threads and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert threading.active_count() == threads
    assert fd_count(os.getpid()) == fds
    busy.close()
    async with Server(make_settings(home)) as again:  # the state file is free to use
        assert again.api_port > 0
