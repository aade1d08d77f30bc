"""The receiver reads its data socket in batches, holding datagrams up to RECEIVE_HOLD_S
when few come (docs/protocol.md, "Acknowledgements"): the round trip the sender measures
must not grow by that hold, since its rate control reads a longer round trip as a queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetstream_server.protocol.wire import RECEIVE_HOLD_S
from jetstream_server.server import Server
from tests.conftest import make_home, make_settings
from tests.raw_sender import raw_send

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Server]:
    async with Server(make_settings(make_home(tmp_path / "b"))) as b:
        yield b


async def test_a_slow_sender_on_loopback_measures_the_loopback_round_trip(
        receiver: Server) -> None:
    # 4 Mbit/s: a datagram or two each millisecond, so every read is followed by a hold
    data = bytes(range(256)) * 2048  # 512 KiB: about a second
    core = await raw_send(receiver.recv_port, [("f", data)], rate_bps=4e6)
    assert core.error is None
    assert core.srtt_s is not None
    # the sender polls every millisecond in the receiver's own event loop: 0.5-0.7 ms
    # here; with the hold counted in, 2-3 ms
    assert core.srtt_s < 0.3 * RECEIVE_HOLD_S
