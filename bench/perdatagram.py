"""What one datagram costs in the protocol's Python, beside what cannot be avoided.

    PYTHONPATH=. .venv/bin/python bench/perdatagram.py [--mib 8] [--repeat 5]

Runs the two protocol cores over the tests' in-memory link (tests/protocol_link.py: 100
Mbit/s, 50 ms one way, 1% loss, 1436-byte blocks, encrypted; no sockets, no disk) and
times, per datagram, what each end's core spends: the sender making and sealing a DATA
datagram, the receiver routing, opening and recording one, and each end's work for an
ACK. Beside them, measured in the same run, the floor no Python design avoids: sealing and
opening 1436 bytes with AES-256-GCM (the cryptography package) and one ``sendto`` /
``recvfrom`` system call on loopback. The best of ``--repeat`` runs is printed (the
machine's other load only adds). What the servers spend on top (event loop, disk, system
calls) is bench/run.py's CPU s/GiB.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import timeit
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jetstream_server.protocol import endpoint, receiver, sender
from tests import protocol_link

BLOCK = 1436


class Timed:
    """Wraps a method of a class to add up the time spent in it and the calls."""

    def __init__(self, cls: type, name: str, count: Callable[[Any], int] | None = None) -> None:
        self.cls, self.name, self.original = cls, name, getattr(cls, name)
        self.seconds, self.items, self.calls = 0.0, 0, 0
        original, clock = self.original, time.perf_counter

        def timed(this: object, *args: Any, **kwargs: Any) -> Any:
            start = clock()
            out = original(this, *args, **kwargs)
            self.seconds += clock() - start
            self.calls += 1
            self.items += count(out) if count is not None else 1
            return out

        setattr(cls, name, timed)

    def restore(self) -> None:
        setattr(self.cls, self.name, self.original)

    def per_item_us(self) -> float:
        return self.seconds / max(self.items, 1) * 1e6


def cores(mib: int) -> dict[str, float]:
    data = os.urandom(mib << 20)
    link = protocol_link.LinkConfig(loss=0.01, delay_s=0.05, rate_bps=100e6,
                                    queue_bytes=1_250_000)
    timers = {
        "sender: make and seal a DATA": Timed(
            sender.SenderCore, "datagrams_to_send", lambda out: len(out)),
        "receiver: route, open, record a DATA": Timed(
            endpoint.ReceiverEndpoint, "receive_datagram"),
        "sender: take an ACK": Timed(sender.SenderCore, "receive_datagram"),
        "receiver: make an ACK": Timed(receiver.ReceiverCore, "_acks", lambda out: len(out)),
    }
    try:
        outcome = protocol_link.run([data], link, block_size=BLOCK, max_time_s=600)
    finally:
        for timer in timers.values():
            timer.restore()
    if not outcome.complete or outcome.files != [data]:
        raise SystemExit("the transfer did not complete intact")
    return {name: timer.per_item_us() for name, timer in timers.items()}


def floor() -> dict[str, float]:
    aead = AESGCM(os.urandom(32))
    payload, nonce, clear = os.urandom(BLOCK), bytes(12), bytes(25)
    sealed = aead.encrypt(nonce, payload, clear)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        b.bind(("127.0.0.1", 0))
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        a.connect(b.getsockname())
        buffer = bytearray(65536)
        n = 2000

        def syscalls() -> None:
            for _ in range(n):
                a.send(payload)
            for _ in range(n):
                b.recvfrom_into(buffer)

        def best(stmt: Callable[[], object], number: int) -> float:
            return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6

        return {"AES-256-GCM seal of 1436 bytes": best(
                    lambda: aead.encrypt(nonce, payload, clear), 20000),
                "AES-256-GCM open of 1436 bytes": best(
                    lambda: aead.decrypt(nonce, sealed, clear), 20000),
                "sendto + recvfrom on loopback (both ends' system calls)": best(
                    syscalls, 1) / n}
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [cores(args.mib) for _ in range(args.repeat)]
    base = floor()
    print(f"| per datagram ({BLOCK}-byte blocks) | µs |\n| --- | ---: |")
    for name in runs[0]:
        print(f"| {name} | {min(r[name] for r in runs):.1f} |")
    for name, value in base.items():
        print(f"| floor: {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
