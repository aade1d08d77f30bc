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


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS")


def hello_flood(port: int, rate: float, seconds: float, addresses: int = 32,
                user: str = "bob", meta_size: int = 256 * 1024 * 1024) -> int:
    """Send bogus HELLOs (each a new session, announcing ``meta_size`` bytes of metadata)
    to ``port`` at ``rate`` a second for ``seconds``, from ``addresses`` loopback source
    addresses (127.0.0.2 and up); how many were sent."""
    import secrets
    import time

    from jetstream_server.protocol.wire import Hello, encode_hello

    socks = []
    for i in range(addresses):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + i}", 0))
        sock.setblocking(False)
        socks.append(sock)
    block = 1400
    hello = Hello(secrets.token_bytes(16), block, meta_size, -(-meta_size // block), user)
    sent = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                try:
                    socks[sent % addresses].sendto(
                        encode_hello(secrets.randbits(32), hello), ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                sent += 1
            time.sleep(0.002)
    finally:
        for sock in socks:
            sock.close()
    return sent


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
    args = parser.parse_args(argv)
    if args.attack == "churn":
        for how in HOW:
            churn(args.port, args.count, how)
            print(f"{args.count} connections ({how}) opened and closed")
    elif args.attack == "hello-flood":
        sent = hello_flood(args.port, args.rate, args.seconds, args.addresses)
        print(f"{sent} HELLOs sent in {args.seconds:g} s from {args.addresses} addresses")


if __name__ == "__main__":
    main()
