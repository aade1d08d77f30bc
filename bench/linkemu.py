"""A user-space link emulator between two TUN devices (this kernel has no netem).

    python bench/linkemu.py --rate-mbps 100 --delay-ms 50 --loss 0.01 --queue-bdp 1 \\
        --tun-a jsbA0 --tun-b jsbB0

Opens two TUN devices in the current network namespace and forwards IP packets between
them, in each direction: a tail-drop bottleneck queue (``--queue-bdp`` bandwidth-delay
products, at least 64 KiB) drained at ``--rate-mbps``, then ``--delay-ms`` of one-way
delay, then random loss with probability ``--loss``. The devices can be moved into other
network namespaces after it prints ``ready`` (a TUN descriptor stays attached to its
device). It prints its counters as a JSON line on SIGUSR1, and on SIGTERM or SIGINT, when
it exits.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Direction:
    def __init__(self, out_fd: int, rate_bps: float, delay_s: float, loss: float,
                 queue_bytes: int, rng: random.Random) -> None:
        self.out_fd = out_fd
        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.loss = loss
        self.queue_bytes = queue_bytes
        self.rng = rng
        self.queue: deque[bytes] = deque()  # the bottleneck queue
        self.queued = 0
        self.link_free = 0.0  # when the bottleneck finishes the packet on it
        self.in_flight: list[tuple[float, int, bytes]] = []  # (arrival, seq, packet)
        self.seq = 0
        self.counters = {"packets": 0, "bytes": 0, "queueDrops": 0, "randomDrops": 0,
                         "delivered": 0}

    def enqueue(self, packet: bytes, now: float) -> None:
        self.counters["packets"] += 1
        self.counters["bytes"] += len(packet)
        if self.queued + len(packet) > self.queue_bytes:
            self.counters["queueDrops"] += 1
            return
        if not self.queue and self.link_free < now:
            self.link_free = now  # the link was idle: this packet starts at once
        self.queue.append(packet)
        self.queued += len(packet)
        self.pump(now)

    def pump(self, now: float) -> None:
        """Move packets off the bottleneck while the link is free."""
        # Departures are spaced by the link rate on the virtual clock (link_free), not by
        # when this loop wakes up, so a coarse wake-up does not slow the link down.
        while self.queue and self.link_free <= now:
            packet = self.queue.popleft()
            self.queued -= len(packet)
            self.link_free += len(packet) * 8 / self.rate_bps
            if self.rng.random() < self.loss:
                self.counters["randomDrops"] += 1
                continue
            self.seq += 1
            heapq.heappush(self.in_flight, (self.link_free + self.delay_s, self.seq, packet))

    def deliver(self, now: float) -> None:
        while self.in_flight and self.in_flight[0][0] <= now:
            _, _, packet = heapq.heappop(self.in_flight)
            try:
                os.write(self.out_fd, packet)
                self.counters["delivered"] += 1
            except BlockingIOError:
                self.counters["writeDrops"] = self.counters.get("writeDrops", 0) + 1
            except OSError:  # the device is down (not yet moved and configured)
                self.counters["downDrops"] = self.counters.get("downDrops", 0) + 1

    def next_time(self) -> float | None:
        times = [t for t in (self.in_flight[0][0] if self.in_flight else None,
                             self.link_free if self.queue else None) if t is not None]
        return min(times) if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tun-a", default="jsbA0")
    parser.add_argument("--tun-b", default="jsbB0")
    parser.add_argument("--rate-mbps", type=float, default=100.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one way")
    parser.add_argument("--loss", type=float, default=0.0, help="0..1, each direction")
    parser.add_argument("--queue-bdp", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rate = args.rate_mbps * 1e6
    delay = args.delay_ms / 1000
    queue = max(int(rate / 8 * max(2 * delay, 0.001) * args.queue_bdp), 64 * 1024)
    rng = random.Random(args.seed)
    fd_a, fd_b = open_tun(args.tun_a), open_tun(args.tun_b)
    a_to_b = Direction(fd_b, rate, delay, args.loss, queue, rng)
    b_to_a = Direction(fd_a, rate, delay, args.loss, queue, rng)
    routes = {fd_a: a_to_b, fd_b: b_to_a}
    stop = False

    report = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    def on_report(*_: object) -> None:
        nonlocal report
        report = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_report)
    print("ready", flush=True)
    poller = select.epoll()
    poller.register(fd_a, select.EPOLLIN)
    poller.register(fd_b, select.EPOLLIN)
    while not stop:
        now = time.monotonic()
        wakes = [t for t in (d.next_time() for d in routes.values()) if t is not None]
        timeout = max(min(wakes) - now, 0) if wakes else 0.1
        try:
            events = poller.poll(min(timeout, 0.1))
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            direction = routes[fd]
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                direction.enqueue(packet, now)
        for direction in routes.values():
            direction.pump(now)
            direction.deliver(now)
        if report:  # a snapshot of the counters, one JSON line
            report = False
            print(json.dumps({"aToB": a_to_b.counters, "bToA": b_to_a.counters}), flush=True)
    json.dump({"aToB": a_to_b.counters, "bToA": b_to_a.counters, "queueBytes": queue},
              sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
