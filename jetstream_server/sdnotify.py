"""The systemd notify protocol: a datagram to ``$NOTIFY_SOCKET`` (no libsystemd needed).

``notify("READY=1")`` after the server listens, ``STOPPING=1`` when it drains, and
``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` while the event loop is alive. Without
``NOTIFY_SOCKET`` (not run by systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["notify", "watchdog"]


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines); False when there is no notify socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def _watchdog_interval_s() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


async def watchdog() -> None:
    """Ping the systemd watchdog for as long as the loop runs (a task; cancel to stop)."""
    interval = _watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
