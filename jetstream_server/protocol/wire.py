"""Datagram formats of the data protocol (see docs/protocol.md), sans-I/O.

Every datagram starts with a 9-byte header, all integers big-endian::

    0  u8   version (4) in the high 4 bits, type in the low 4
    1  u32  session id (chosen at random by the sender)
    5  u32  CRC-32C of the whole datagram, computed with this field zero

A DATA datagram adds 9 bytes (block number u40, the low 32 bits of the sender's clock in
us): 18 bytes before the payload, so that a 1500-byte packet carries 1454 bytes of file
(a TCP segment with timestamps carries 1448).
A datagram whose version, length or CRC is wrong is garbage: it is dropped and counted,
never acted on. Over the TCP data mode the same datagrams travel as frames, each
preceded by its length (u32), after a 4-byte preface ``JSTD``.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import Garbage
from .checksums import crc32c

__all__ = [
    "CLOSE_FINAL",
    "CLOSE_PAUSE",
    "DATA_HEADER",
    "DATA_OVERHEAD",
    "DEFAULT_PORT",
    "ERROR_BUSY",
    "ERROR_REFUSED",
    "ERROR_UNKNOWN_SESSION",
    "FRAME",
    "HEADER",
    "MAX_DATAGRAM",
    "TCP_PREFACE",
    "TS_MASK",
    "VERSION",
    "Ack",
    "Challenge",
    "Hello",
    "Kind",
    "decode_ack",
    "decode_challenge",
    "decode_error",
    "decode_hello",
    "encode",
    "encode_ack",
    "encode_challenge",
    "encode_error",
    "encode_frames",
    "encode_hello",
    "first_byte",
    "new_session_id",
    "parse_header",
    "seal",
]

#: The protocol version (the versions before it: docs/protocol.md).
VERSION = 4
#: JetStream's port number, of both the control API (TCP) and the data port (UDP and TCP).
DEFAULT_PORT = 8886
_NO_CRC = bytes(4)
TCP_PREFACE = b"JSTD"
#: Largest datagram or TCP frame accepted (TCP frames carry bigger blocks).
MAX_DATAGRAM = 1024 * 1024 + 64

#: Length prefix of a datagram carried as a TCP frame.
FRAME = struct.Struct("!I")
HEADER = struct.Struct("!BII")  # version << 4 | type, session, crc
_CRC_AT = 5
#: block index (u40: high u8, low u32), sender timestamp (us, low 32 bits)
DATA_HEADER = struct.Struct("!BII")
#: Bytes of a DATA datagram before its payload.
DATA_OVERHEAD = HEADER.size + DATA_HEADER.size
TS_MASK = 0xFFFFFFFF
_HELLO = struct.Struct("!16sIQQB")  # transfer id, block size, meta size, meta blocks, flags
_CHALLENGE = struct.Struct("!16sBBBB")  # nonce, log2 n, r, p, salt length
_ACK = struct.Struct("!QQQQQIQBH")  # cum, packets, bytes, recv ts, echo ts, echo delay,
#                                     committed files, flags, range count
_RANGE = struct.Struct("!II")  # gap from the previous range's end, length
_ERROR = struct.Struct("!H")


class Kind(IntEnum):
    """The message types."""
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    ACCEPT = 4
    ERROR = 5
    DATA = 6
    ACK = 7
    CLOSE = 8
    PING = 9


def encode_frames(datagrams: list[bytes] | list[bytes | bytearray]) -> bytes:
    """Datagrams as TCP data-mode frames: each preceded by its length."""
    return b"".join(FRAME.pack(len(d)) + d for d in datagrams)


def seal(buffer: bytearray | memoryview, length: int) -> None:
    """Write the CRC of ``buffer[:length]`` into its header (CRC field zero on entry)."""
    crc = crc32c(memoryview(buffer)[:length])
    struct.pack_into("!I", buffer, _CRC_AT, crc)


def new_session_id() -> int:
    """A random session id, as the sender picks one for each attempt."""
    return secrets.randbits(32)


def first_byte(kind: Kind) -> int:
    """The header's first byte: the version and the message type."""
    return VERSION << 4 | kind


def encode(kind: Kind, session: int, body: bytes = b"") -> bytes:
    """A datagram of ``kind`` for ``session`` with ``body``, sealed with its CRC."""
    buffer = bytearray(HEADER.size + len(body))
    HEADER.pack_into(buffer, 0, first_byte(kind), session, 0)
    buffer[HEADER.size:] = body
    seal(buffer, len(buffer))
    return bytes(buffer)


def parse_header(data: bytes | memoryview) -> tuple[Kind, int]:
    """(kind, session) of a datagram, after checking version and CRC."""
    if len(data) < HEADER.size:
        raise Garbage("short datagram")
    first, session, crc = HEADER.unpack_from(data, 0)
    if first >> 4 != VERSION:
        raise Garbage("bad version")
    view = memoryview(data)
    check = crc32c(view[HEADER.size:], crc32c(_NO_CRC, crc32c(view[:_CRC_AT])))
    if check != crc:
        raise Garbage("bad checksum")
    try:
        return Kind(first & 0x0F), session
    except ValueError:
        raise Garbage("unknown type") from None


@dataclass(frozen=True)
class Hello:
    """The sender's first message: the transfer, its block size and metadata size, the user."""
    transfer_id: bytes  # 16 bytes
    block_size: int
    meta_size: int
    meta_blocks: int
    user: str
    flags: int = 0


def encode_hello(session: int, hello: Hello) -> bytes:
    """A HELLO datagram."""
    user = hello.user.encode()
    body = _HELLO.pack(hello.transfer_id, hello.block_size, hello.meta_size,
                       hello.meta_blocks, hello.flags) + user
    return encode(Kind.HELLO, session, body)


def decode_hello(body: bytes | memoryview) -> Hello:
    """The HELLO in a datagram's body; Garbage if malformed."""
    if len(body) < _HELLO.size or len(body) > _HELLO.size + 256:
        raise Garbage("bad HELLO length")
    transfer_id, block_size, meta_size, meta_blocks, flags = _HELLO.unpack_from(body, 0)
    try:
        user = bytes(body[_HELLO.size:]).decode()
    except UnicodeDecodeError:
        raise Garbage("bad HELLO user") from None
    return Hello(transfer_id, block_size, meta_size, meta_blocks, user, flags)


@dataclass(frozen=True)
class Challenge:
    """The receiver's answer to a HELLO with a user: a nonce and the password hash's salt and
    parameters."""
    nonce: bytes
    log2_n: int
    r: int
    p: int
    salt: bytes


def encode_challenge(session: int, challenge: Challenge) -> bytes:
    """A CHALLENGE datagram."""
    body = _CHALLENGE.pack(challenge.nonce, challenge.log2_n, challenge.r, challenge.p,
                           len(challenge.salt)) + challenge.salt
    return encode(Kind.CHALLENGE, session, body)


def decode_challenge(body: bytes | memoryview) -> Challenge:
    """The CHALLENGE in a datagram's body; Garbage if malformed."""
    if len(body) < _CHALLENGE.size:
        raise Garbage("bad CHALLENGE length")
    nonce, log2_n, r, p, salt_len = _CHALLENGE.unpack_from(body, 0)
    salt = bytes(body[_CHALLENGE.size:_CHALLENGE.size + salt_len])
    if len(salt) != salt_len:
        raise Garbage("bad CHALLENGE salt")
    return Challenge(nonce, log2_n, r, p, salt)


@dataclass
class Ack:
    """The receiver's acknowledgement: what it has, its counters and the echoed send time."""
    cum: int  # every block below this is received
    packets: int  # data datagrams received so far in this session
    bytes: int  # datagram bytes received so far
    recv_ts_us: int  # receiver's clock when sent
    echo_ts_us: int  # the newest sender timestamp seen (low 32 bits), if ACK_ECHO
    echo_delay_us: int  # how long ago that datagram arrived
    committed: int  # files verified and under their final names
    flags: int  # ACK_READY, ACK_COMPLETE, ACK_ECHO
    ranges: list[tuple[int, int]]  # received [start, end) ranges above cum


ACK_READY = 1  # the receiver has accepted the metadata: file data may flow
ACK_COMPLETE = 2  # every file is verified, fsynced and under its final name
ACK_ECHO = 4  # the echo fields are set (a DATA datagram has arrived)
#: Ranges in one ACK datagram (keeps it under 1400 bytes).
MAX_ACK_RANGES = 160
#: The receiver acknowledges data within this long (sooner after ACK_EVERY datagrams,
#: or when a block goes missing); a sender waiting for an ACK allows for it.
ACK_DELAY_S = 0.005


def encode_ack(session: int, ack: Ack) -> bytes:
    """An ACK datagram."""
    parts = [_ACK.pack(ack.cum, ack.packets, ack.bytes, ack.recv_ts_us, ack.echo_ts_us,
                       ack.echo_delay_us, ack.committed, ack.flags, len(ack.ranges))]
    previous = ack.cum
    for start, end in ack.ranges:
        parts.append(_RANGE.pack(start - previous, end - start))
        previous = end
    return encode(Kind.ACK, session, b"".join(parts))


def decode_ack(body: bytes | memoryview) -> Ack:
    """The ACK in a datagram's body; Garbage if malformed."""
    if len(body) < _ACK.size:
        raise Garbage("bad ACK length")
    cum, packets, nbytes, recv_ts, echo_ts, echo_delay, committed, flags, count = \
        _ACK.unpack_from(body, 0)
    if len(body) != _ACK.size + count * _RANGE.size:
        raise Garbage("bad ACK range count")
    ranges: list[tuple[int, int]] = []
    previous = cum
    for i in range(count):
        gap, length = _RANGE.unpack_from(body, _ACK.size + i * _RANGE.size)
        start = previous + gap
        ranges.append((start, start + length))
        previous = start + length
    return Ack(cum, packets, nbytes, recv_ts, echo_ts, echo_delay, committed, flags, ranges)


#: ERROR codes: the transfer is refused for good; this session is unknown (the receiver
#: restarted or forgot it): start a new session, which resumes; or the receiver is busy
#: (too many transfers, or logins waiting): try again later.
ERROR_REFUSED, ERROR_UNKNOWN_SESSION, ERROR_BUSY = 0, 1, 2
#: CLOSE codes: the session is over for good (complete, cancelled, failed); or paused
#: (suspended, server stopping): the receiver keeps what it has for a later session.
CLOSE_FINAL, CLOSE_PAUSE = 0, 1


def encode_error(session: int, kind: Kind, message: str, code: int = 0) -> bytes:
    """An ERROR (or CLOSE, with a reason) carrying a code and a message for the operator."""
    return encode(kind, session, _ERROR.pack(code) + message.encode()[:1000])


def decode_error(body: bytes | memoryview) -> tuple[int, str]:
    """The (code, message) of an ERROR or CLOSE body."""
    if len(body) < _ERROR.size:
        return 0, ""
    return _ERROR.unpack_from(body, 0)[0], bytes(body[_ERROR.size:]).decode(errors="replace")
