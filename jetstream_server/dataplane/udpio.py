"""Sending and receiving many UDP datagrams per system call: Linux GSO and GRO.

With generic segmentation offload (``UDP_SEGMENT``, Linux 4.18+) one ``sendmsg`` carries
up to 64 datagrams of one size (the last may be shorter), handed to the kernel as one
buffer list and cut into datagrams below the socket; with generic receive offload
(``UDP_GRO``, Linux 5.0+) one ``recvmsg`` may return several datagrams of one size glued
together, with their size in a control message. On the wire nothing changes.

Either is used only where the kernel accepts it: :class:`GsoSender` falls back to one
``send`` per datagram (for good) the first time the kernel refuses a segmented send, and
:func:`enable_gro` answers False where the option does not exist.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import time
from collections.abc import Sequence

__all__ = ["GsoSender", "arrival_time", "enable_gro", "receive_batch"]

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: Most segments the kernel takes in one send, and most UDP payload in one IP packet.
MAX_SEGMENTS = 64
MAX_PAYLOAD = 65507 - 40  # IPv6 headers are larger: stay below for both families
_INT = struct.Struct("@i")
_GSO_SIZE = struct.Struct("@H")
_ANCILLARY = socket.CMSG_SPACE(_INT.size)
#: room for one read: the largest UDP payload (or datagrams glued by GRO)
MAX_DATAGRAM_BUFFER = 65536
#: <linux/sockios.h>: the arrival time of the last datagram read (a struct timespec)
SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@qq")
_STAMP = bytearray(_TIMESPEC.size)
#: errors that mean "this kernel or device does not do GSO here"
_NO_GSO = {errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO, errno.EPROTO}


def enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def receive_batch(sock: socket.socket, buffer: bytearray, gro: bool
                  ) -> tuple[list[tuple[memoryview, tuple[str, int]]], bool]:
    """The datagrams waiting on ``sock``, read one after another into ``buffer`` (views
    into it, valid until the next call), and whether that was all: reads until nothing
    more is waiting (True) or ``buffer`` has no room for another (False). Datagrams
    glued by GRO are taken apart; an empty one is a view of nothing (garbage, for the
    caller to count)."""
    view = memoryview(buffer)
    out: list[tuple[memoryview, tuple[str, int]]] = []
    offset, room = 0, len(buffer) - MAX_DATAGRAM_BUFFER
    while offset <= room:
        try:
            if gro:
                size, ancillary, _, address = sock.recvmsg_into(
                    [view[offset:offset + MAX_DATAGRAM_BUFFER]], _ANCILLARY)
            else:
                size, address = sock.recvfrom_into(view[offset:offset + MAX_DATAGRAM_BUFFER])
                ancillary = []
        except OSError:  # nothing waiting (BlockingIOError) or an error: stop here
            return out, True
        segment = size
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
                segment = _INT.unpack_from(data)[0] or size
        peer = (address[0], address[1])
        if not size:
            out.append((view[offset:offset], peer))
            continue
        end = offset + size
        for start in range(offset, end, segment):
            out.append((view[start:min(start + segment, end)], peer))
        offset = end
    return out, False


def arrival_time(sock: socket.socket) -> float | None:
    """When the datagram last read from ``sock`` arrived, on ``time.monotonic()``'s
    clock (the kernel's receive stamp, SIOCGSTAMPNS; the first call turns stamping on),
    or None where the kernel has none."""
    try:
        fcntl.ioctl(sock.fileno(), SIOCGSTAMPNS, _STAMP)
    except OSError:
        return None
    seconds, nanoseconds = _TIMESPEC.unpack(_STAMP)
    return float(seconds + nanoseconds * 1e-9 - time.time() + time.monotonic())


class GsoSender:
    """Sends datagrams on a connected UDP socket, a run of equal sizes per system call."""

    def __init__(self, sock: socket.socket, enabled: bool = True) -> None:
        self.sock = sock
        self.enabled = enabled
        self.refused = 0  # sends refused (ICMP port unreachable): nothing listens there

    def send(self, datagrams: Sequence[bytes | bytearray]) -> int:
        """Send datagrams in order; return how many went (fewer when the socket is
        full: BlockingIOError). Other errors lose the datagram (the protocol resends)."""
        i, count = 0, len(datagrams)
        while i < count:
            size = len(datagrams[i])
            j, total = i + 1, size
            if self.enabled:
                limit = min(MAX_SEGMENTS, MAX_PAYLOAD // size) if size else 1
                while j < count and j - i < limit and len(datagrams[j]) <= size and \
                        total + len(datagrams[j]) <= MAX_PAYLOAD:
                    total += len(datagrams[j])
                    j += 1
                    if len(datagrams[j - 1]) < size:
                        break  # only the last segment may be shorter
            try:
                if j - i > 1:
                    self.sock.sendmsg(datagrams[i:j],
                                      [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))])
                else:
                    self.sock.send(datagrams[i])
            except (BlockingIOError, InterruptedError):
                return i
            except OSError as exc:
                if j - i > 1 and exc.errno in _NO_GSO:
                    self.enabled = False  # this path does not do GSO: one by one from now
                    continue
                if isinstance(exc, ConnectionRefusedError):
                    self.refused += 1
            i = j
        return count
