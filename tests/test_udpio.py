"""GSO/GRO batching on real loopback sockets, and its fallback."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from jetstream_server.dataplane.udpio import GsoSender, arrival_time, enable_gro, receive_batch

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
        got += [bytes(d) for d, _ in receive_batch(receiver, buffer, gro)[0]]
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


def test_the_arrival_time_is_when_the_kernel_took_the_datagram_not_when_it_was_read(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    receiver.setblocking(False)
    arrival_time(receiver)  # (the first call turns stamping on, for the next datagram)
    sender.send(b"first")
    time.sleep(0.05)  # (the kernel turns its stamping on a moment later)
    receive_batch(receiver, bytearray(1 << 20), False)
    sent = time.monotonic()
    sender.send(b"x" * 100)
    time.sleep(0.05)
    batch, drained = receive_batch(receiver, bytearray(1 << 20), False)
    read = time.monotonic()
    arrived = arrival_time(receiver)
    assert [bytes(d) for d, _ in batch] == [b"x" * 100] and drained
    assert arrived is not None
    assert sent - 0.001 <= arrived < sent + 0.02 and read - arrived >= 0.04


def test_a_batch_stops_when_its_buffer_is_full_and_the_next_goes_on_in_order(
        pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    receiver.setblocking(False)
    datagrams = [os.urandom(16_000) for _ in range(12)]
    assert GsoSender(sender, False).send(datagrams) == 12
    time.sleep(0.05)
    buffer = bytearray(2 * 65536)  # room for five 16,000-byte reads before the last 64 KiB
    first, drained = receive_batch(receiver, buffer, False)
    assert len(first) == 5 and not drained
    got = [bytes(d) for d, _ in first]
    while True:
        batch, drained = receive_batch(receiver, buffer, False)
        got += [bytes(d) for d, _ in batch]
        if drained:
            break
    assert got == datagrams
