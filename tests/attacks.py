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
