"""Attacks on a running server, as a port scanner, a flooder or a password guesser would
make them: used by the tests (at CI size) and runnable by hand at full size, each printing
the figures docs/security.md quotes::

    python -m tests.attacks all            # starts its own servers in a temporary folder
    python -m tests.attacks churn --count 20000

Only loopback addresses are used.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["churn", "fd_count"]

HOW = ("no-byte", "half-line", "reset")


def fd_count(pid: int) -> int:
    """Open descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def churn(port: int, count: int, how: str, host: str = "127.0.0.1") -> None:
    """Open and close ``count`` TCP connections to ``port``: closing at once (``no-byte``),
    after half a request line (``half-line``), or with a reset (``reset``: SO_LINGER 0)."""
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect((host, port))
            if how == "half-line":
                sock.sendall(b'{"request": "getServerI')
            elif how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS")


def server_key(port: int, host: str = "127.0.0.1") -> bytes:
    """The public key a data port gives a KEY_REQUEST (as any attacker may ask it)."""
    from jetstream_server.protocol.sender import KeyProbe

    probe = KeyProbe(0.0, tries=10, wait_s=0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        sock.settimeout(0.5)
        while not probe.finished:
            for datagram in probe.datagrams_to_send(0.0):
                sock.send(datagram)
            try:
                probe.receive_datagram(sock.recv(2048), 0.0)
            except TimeoutError:
                pass
    assert probe.key is not None, "the data port gave no key"
    return probe.key


def hello_flood(port: int, rate: float, seconds: float, addresses: int = 32,
                pool: int = 2048) -> int:
    """Send HELLOs that open sessions (each a valid handshake, sealed to the server's real
    key, made ahead: ``pool`` of them, sent again and again) to ``port`` at ``rate`` a
    second for ``seconds``, from ``addresses`` loopback source addresses (127.0.0.2 and
    up) that never read an answer, so never show a cookie; how many were sent."""
    import secrets
    import time

    from tests.protocol_link import make_hello

    key = server_key(port)
    hellos = [make_hello(secrets.randbits(32), key, user="bob")[0] for _ in range(pool)]
    socks = []
    for i in range(addresses):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + i}", 0))
        sock.setblocking(False)
        socks.append(sock)
    sent = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                index = sent % pool
                try:
                    socks[index % addresses].sendto(hellos[index], ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                sent += 1
            time.sleep(0.002)
    finally:
        for sock in socks:
            sock.close()
    return sent


def close_wait(port: int) -> int:
    """TCP connections to local ``port`` left half-closed by the server (CLOSE-WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as stream:
                next(stream)
                for line in stream:
                    fields = line.split()
                    if fields[3] == "08" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def _wait_fds(pid: int, baseline: int, timeout_s: float = 20.0) -> int:
    import time

    deadline = time.monotonic() + timeout_s
    while (count := fd_count(pid)) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def run_all(guesses: int) -> list[tuple[str, str]]:
    """Every attack of docs/security.md against two servers of this checkout, started in
    a temporary folder; (attack, what it now gives) lines."""
    import asyncio
    import json
    import secrets
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tests.conftest import PASSWORDS, ServerProcess, make_home
    from tests.protocol_link import make_hello
    from tests.raw_sender import raw_send

    out: list[tuple[str, str]] = []

    def api(server: ServerProcess, *args: str, user: str | None = "alice",
            password: str | None = None) -> dict[str, object]:
        done = server.api(*args, user=user, password=password or PASSWORDS.get(user or "", ""))
        return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr}

    with tempfile.TemporaryDirectory() as tmp:
        homes = [make_home(Path(tmp) / name) for name in ("a", "b")]
        a, b = (ServerProcess(home) for home in homes)
        try:
            assert b.api("getServerInfo").returncode == 0
            pid = b.proc.pid
            before = fd_count(pid)
            for how in HOW:
                churn(b.api_port, 20_000, how)
            out.append(("descriptor leak: 60,000 TCP connections opened and closed "
                        "(20,000 each: no byte, half a line, reset)",
                        f"descriptors {before} before, {_wait_fds(pid, before)} after; "
                        f"{close_wait(b.api_port)} in CLOSE-WAIT"))
            rss = rss_bytes(pid)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            key = server_key(b.recv_port)
            for _ in range(16):
                sock.sendto(make_hello(secrets.randbits(32), key, user="bob",
                                       meta_size=256 * 2**20)[0], ("127.0.0.1", b.recv_port))
            sock.close()
            time.sleep(1)
            out.append(("memory before login: 16 HELLOs each announcing 256 MiB of "
                        "metadata", f"receiver RSS {rss / 2**20:.0f} MiB -> "
                        f"{rss_bytes(pid) / 2**20:.0f} MiB"))
            data = os.urandom(20 * 2**20)
            (homes[0] / "sandbox" / "big.bin").write_bytes(data)
            destination = api(a, "createDestination",
                              f"--destinationAddress=127.0.0.1:{b.recv_port}",
                              "--destinationUser=bob",
                              f"--destinationPassword={PASSWORDS['bob']}")
            manifest = api(a, "createManifest", "--fileMappings=/big.bin:/big.bin")
            time.sleep(0.5)
            rss = rss_bytes(pid)
            cpu_before = cpu_seconds(pid)
            flood = subprocess.Popen(
                [sys.executable, "-m", "tests.attacks", "hello-flood", "--port",
                 str(b.recv_port), "--rate", "10000", "--seconds", "15"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(3)
            transfer = api(a, "createTransfer",
                           f"--destinationId={destination['destinationId']}",
                           f"--manifestId={manifest['manifestId']}")
            peak = rss
            while (got := api(a, "getTransfer", f"--transferId={transfer['transferId']}"))[
                    "status"] in ("pending", "sending"):
                peak = max(peak, rss_bytes(pid))
                time.sleep(0.05)
            seconds = (int(str(got["endTime"])) - int(str(got["requestTime"]))) / 1e6
            sent = flood.communicate()[0].split()[0]
            cpu = cpu_seconds(pid) - cpu_before
            info = api(b, "getServerInfo", user=None)["receiver"]
            assert isinstance(info, dict)
            same = (homes[1] / "sandbox" / "big.bin").read_bytes() == data
            out.append(("slot exhaustion: 10,000 HELLOs a second (valid handshakes sealed "
                        "to the server's key) from 32 addresses, a 20 MiB transfer started 3 s "
                        "into it",
                        f"{got['status']} ({'identical' if same else 'DIFFERENT'}) in "
                        f"{seconds:.2f} s from createTransfer; {sent} HELLOs, "
                        f"{info['datagramsDropped'].get('cookieRequired', 0)} answered with "
                        f"a cookie, {info['handshakesOpened']} handshakes opened, "
                        f"{info['unauthenticatedSessionsEvicted']} sessions "
                        f"evicted; receiver RSS {rss / 2**20:.0f} MiB, peak "
                        f"{peak / 2**20:.0f} MiB, CPU {cpu:.1f} s"))

            async def guess_data(count: int) -> float:
                started = time.monotonic()
                for _ in range(count):
                    await raw_send(b.recv_port, [("x", b"x")], password="wrong",
                                   timeout_s=60)
                return time.monotonic() - started

            seconds = asyncio.run(guess_data(guesses))
            log = (homes[1] / "server.log").read_text()
            out.append((f"guessing over the data port: {guesses} wrong transfer logins "
                        "one after another", f"{seconds:.1f} s; "
                        f"{log.count('failed transfer login')} WARNING lines"))
            time.sleep(9)  # (the throttle's last delay passes)
            api(b, "getServerInfo", user="bob")  # a success clears the counters

            async def guess_api(count: int, concurrent: bool) -> float:
                from jetstream_server.client import AsyncClient
                from jetstream_server.errors import CommandFailed

                clients = [await AsyncClient.connect("127.0.0.1", b.api_port)
                           for _ in range(count if concurrent else 1)]

                async def one(client: AsyncClient) -> None:
                    try:
                        await client.auth("alice", "wrong")
                    except CommandFailed:
                        pass

                started = time.monotonic()
                if concurrent:
                    await asyncio.gather(*(one(c) for c in clients))
                else:
                    for _ in range(count):
                        await one(clients[0])
                elapsed = time.monotonic() - started
                for client in clients:
                    await client.close()
                return elapsed

            sequential = asyncio.run(guess_api(guesses, False))
            time.sleep(9)
            api(b, "getServerInfo", user="alice")
            together = asyncio.run(guess_api(min(guesses, 16), True))
            out.append((f"guessing over the API: {guesses} wrong passwords one after "
                        f"another, then {min(guesses, 16)} at once on as many connections "
                        "(one address may keep 16 that have not logged in)",
                        f"{sequential:.1f} s one after another, {together:.1f} s at once"))
            crash = api(a, "createDestination", "--destinationAddress=" + "a" * 300)
            out.append(("a 300-character host name in createDestination",
                        str(crash.get("error", crash)).strip()[:120]))
        finally:
            a.stop()
            b.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.attacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="attack", required=True)
    one = sub.add_parser("churn", help="open and close TCP connections in every way")
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--count", type=int, default=5000)
    flood = sub.add_parser("hello-flood", help="bogus HELLOs at the data port")
    flood.add_argument("--port", type=int, required=True)
    flood.add_argument("--rate", type=float, default=10_000)
    flood.add_argument("--seconds", type=float, default=10)
    flood.add_argument("--addresses", type=int, default=32)
    every = sub.add_parser("all", help="every attack, against servers of this checkout")
    every.add_argument("--guesses", type=int, default=12,
                       help="wrong passwords per guessing attack (each after the 6th "
                            "waits 8 s)")
    args = parser.parse_args(argv)
    if args.attack == "all":
        for attack, figure in run_all(args.guesses):
            print(f"- {attack}:\n  {figure}")
    elif args.attack == "churn":
        for how in HOW:
            churn(args.port, args.count, how)
            print(f"{args.count} connections ({how}) opened and closed")
    elif args.attack == "hello-flood":
        sent = hello_flood(args.port, args.rate, args.seconds, args.addresses)
        print(f"{sent} HELLOs sent in {args.seconds:g} s from {args.addresses} addresses")


if __name__ == "__main__":
    main()
