"""GSO/GRO batching on real loopback sockets, and its fallback."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from jetstream_server.dataplane.udpio import GsoSender, enable_gro, receive_batches

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    yield sender, receiver
    sender.close()
    receiver.close()


def _drain(receiver: socket.socket, gro: bool, count: int) -> list[bytes]:
    receiver.setblocking(False)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    buffer = bytearray(1 << 20)
    while len(got) < count and time.monotonic() < deadline:
        got += [bytes(d) for d, _ in receive_batches(receiver, buffer, gro, 64)]
        time.sleep(0.001)
    return got


@pytest.mark.parametrize("gso,gro", [(True, True), (True, False), (False, True),
                                     (False, False)])
def test_datagrams_arrive_whole_and_in_order_with_and_without_offload(
        pair: tuple[socket.socket, socket.socket], gso: bool, gro: bool) -> None:
    sender, receiver = pair
    gro = gro and enable_gro(receiver)
    # runs of equal sizes with a shorter last one, then other sizes: every grouping case
    datagrams = [os.urandom(1440) for _ in range(100)] + [os.urandom(700)] + \
        [os.urandom(16_000) for _ in range(9)] + [os.urandom(5)]
    assert GsoSender(sender, gso).send(datagrams) == len(datagrams)
    assert _drain(receiver, gro, len(datagrams)) == datagrams


class _RefusingSocket:
    """A socket whose kernel refuses segmented sends (as an old kernel or odd device
    does); the fault cannot be produced on this machine's loopback, so it is simulated."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.segmented_calls = 0

    def sendmsg(self, *args: object) -> int:
        self.segmented_calls += 1
        raise OSError(errno.EIO, "segmentation offload not supported")

    def send(self, data: bytes) -> int:
        return self.real.send(data)


def test_a_kernel_that_refuses_gso_gets_one_datagram_per_send_from_then_on(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    fake = _RefusingSocket(sender)
    gso = GsoSender(fake, True)  # type: ignore[arg-type]
    first = [os.urandom(1000) for _ in range(10)]
    second = [os.urandom(1000) for _ in range(10)]
    assert gso.send(first) == 10 and not gso.enabled
    assert gso.send(second) == 10
    assert fake.segmented_calls == 1
    assert _drain(receiver, False, 20) == first + second
