"""Two network namespaces joined by bench/linkemu.c, or one namespace for loopback runs.

Everything it makes is named ``jsb*`` and removed on exit, also when a run fails: the
namespaces (their interfaces and processes go with them), the emulator process, and a
``blackhole`` route in the host namespace for the lab's addresses, so that a packet sent
there by mistake from outside the lab fails on this machine instead of leaving it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NETWORK = "198.18.100.0/24"
ADDR_A, ADDR_B = "198.18.100.1", "198.18.100.2"


def emulator_binary() -> Path:
    """bench/linkemu.c compiled (gcc -O2), once per version of the source."""
    source = HERE / "linkemu.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"jsbench-linkemu-{digest}"
    if not binary.exists():
        partial = binary.with_suffix(f".{os.getpid()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(partial), str(source)], check=True,
                       timeout=120)
        partial.rename(binary)
    return binary


@dataclass
class Link:
    rate_mbps: float
    delay_ms: float  # one way
    loss: float  # 0..1, each direction
    queue_bdp: float = 1.0


@dataclass
class Lab:
    """Where the sender (``ns_a``) and the receiver (``ns_b``) run."""

    ns_a: str
    ns_b: str
    addr_b: str
    link: Link | None  # None: loopback, one namespace
    emulator: subprocess.Popen[bytes] | None = None
    emulator_counters: dict[str, object] = field(default_factory=dict)

    def argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def counters(self) -> dict[str, dict[str, int]]:
        """The emulator's counters now (empty for loopback)."""
        if self.emulator is None or self.emulator.stdout is None:
            return {}
        self.emulator.send_signal(signal.SIGUSR1)
        ready, _, _ = select.select([self.emulator.stdout], [], [], 5)
        if not ready:
            return {}
        counters: dict[str, dict[str, int]] = json.loads(self.emulator.stdout.readline())
        return counters


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=20)


def _clean(*namespaces: str) -> None:
    for ns in namespaces:
        # end what still runs in our namespace (processes we started), then remove it
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=10).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", ns, check=False)


@contextlib.contextmanager
def lab(link: Link | None) -> Iterator[Lab]:
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces, TUN devices)")
    if link is None:
        _clean("jsbL")
        try:
            _ip("netns", "add", "jsbL")
            _ip("-n", "jsbL", "link", "set", "lo", "up")
            yield Lab("jsbL", "jsbL", "127.0.0.1", None)
        finally:
            _clean("jsbL")
        return
    _clean("jsbA", "jsbB")
    emulator: subprocess.Popen[bytes] | None = None
    the_lab = Lab("jsbA", "jsbB", ADDR_B, link)
    try:
        _ip("route", "replace", "blackhole", NETWORK)
        _ip("netns", "add", "jsbA")
        _ip("netns", "add", "jsbB")
        emulator = subprocess.Popen(
            [str(emulator_binary()), "--rate-mbps", str(link.rate_mbps),
             "--delay-ms", str(link.delay_ms), "--loss", str(link.loss),
             "--queue-bdp", str(link.queue_bdp)],
            stdout=subprocess.PIPE)
        the_lab.emulator = emulator
        assert emulator.stdout is not None
        if emulator.stdout.readline().strip() != b"ready":
            raise RuntimeError("the link emulator did not start")
        for ns, dev, addr in (("jsbA", "jsbA0", ADDR_A), ("jsbB", "jsbB0", ADDR_B)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield the_lab
    finally:
        if emulator is not None:
            if emulator.poll() is None:
                emulator.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                out, _ = emulator.communicate(timeout=10)
                with contextlib.suppress(ValueError):
                    the_lab.emulator_counters = json.loads(out or b"{}")
            if emulator.poll() is None:
                emulator.kill()
                emulator.wait()
        _clean("jsbA", "jsbB")
        _ip("route", "del", "blackhole", NETWORK, check=False)


_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

_PING = """
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
rtts = []
for i in range(int(sys.argv[2])):
    t = time.monotonic()
    s.sendto(b"%d" % i, (sys.argv[1], 7))
    try:
        while s.recv(2048) != b"%d" % i:
            pass
        rtts.append(time.monotonic() - t)
    except TimeoutError:
        pass
    time.sleep(0.05)
print(statistics.median(rtts) * 1000 if rtts else -1, len(rtts))
"""


def round_trip_ms(the_lab: Lab, count: int = 20) -> tuple[float, int]:
    """Median round trip (ms) of small UDP datagrams from A to B, and how many came back."""
    echo = subprocess.Popen(the_lab.argv(the_lab.ns_b, sys.executable, "-c", _ECHO),
                            stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        echo.stdout.readline()
        time.sleep(0.1)
        out = subprocess.run(
            the_lab.argv(the_lab.ns_a, sys.executable, "-c", _PING, the_lab.addr_b,
                         str(count)),
            capture_output=True, text=True, timeout=count * 2.5 + 10, check=True).stdout
        median, got = out.split()
        return float(median), int(got)
    finally:
        echo.kill()
        echo.wait()
