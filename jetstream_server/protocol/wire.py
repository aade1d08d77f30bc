"""Datagram formats of the data protocol (see docs/protocol.md), sans-I/O.

Every datagram starts with a 5-byte header, all integers big-endian::

    0  u8   version (5) in the high 4 bits, type in the low 4
    1  u32  session id (chosen at random by the sender)

What follows depends on the type: the two handshake messages (HELLO, REPLY) carry Noise
IK messages (``protocol/noise.py``); the messages of a session after it (AUTH, ACCEPT,
ERROR, DATA, ACK, CLOSE, PING) are *sealed* by its channel (``protocol/channel.py``): a
48-bit packet number, then the body encrypted and authenticated with an AEAD, the header,
packet number and any clear fields (a DATA's block number and send time) being its
associated data; the few messages sent outside a session (KEY_REQUEST, KEY, COOKIE,
UNKNOWN) and a DATA of a session that does not encrypt (PLAIN_DATA) end with a CRC-32C
instead, which catches accidents and nothing else. Over the TCP data mode the same
datagrams travel as frames, each preceded by its length (u32), after a 4-byte preface
``JSTD``.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import Garbage, Truncated
from .checksums import crc32c

__all__ = [
    "ACK_COMPLETE",
    "ACK_DELAY_S",
    "ACK_ECHO",
    "ACK_READY",
    "CLOSE_FINAL",
    "CLOSE_PAUSE",
    "COOKIE_LEN",
    "DATA_HEADER",
    "DEFAULT_PORT",
    "ERROR_BUSY",
    "ERROR_REFUSED",
    "FRAME",
    "HEADER",
    "HELLO_ENCRYPT",
    "HELLO_PASSWORD",
    "HELLO_TOKEN",
    "KEY_ENCRYPTS",
    "MAX_ACK_RANGES",
    "MAX_DATAGRAM",
    "PLAIN_DATA_OVERHEAD",
    "RECEIVE_HOLD_S",
    "SEALED_KINDS",
    "TCP_PREFACE",
    "TS_MASK",
    "VERSION",
    "Ack",
    "Hello",
    "Kind",
    "check_key_request",
    "decode_ack",
    "decode_error",
    "decode_hello",
    "decode_hello_payload",
    "decode_key",
    "encode_ack",
    "encode_error",
    "encode_frames",
    "encode_hello",
    "encode_hello_payload",
    "encode_key",
    "encode_key_request",
    "encode_plain",
    "first_byte",
    "hello_prologue",
    "new_session_id",
    "open_plain",
    "parse_header",
]

#: The protocol version (the versions before it: docs/protocol.md).
VERSION = 6
#: JetStream's port number, of both the control API (TCP) and the data port (UDP and TCP).
DEFAULT_PORT = 8886
TCP_PREFACE = b"JSTD"
#: Largest datagram or TCP frame accepted (TCP frames carry bigger blocks).
MAX_DATAGRAM = 1024 * 1024 + 64

#: Length prefix of a datagram carried as a TCP frame.
FRAME = struct.Struct("!I")
HEADER = struct.Struct("!BI")  # version << 4 | type, session
#: block index (u40: high u8, low u32), sender timestamp (us, low 32 bits)
DATA_HEADER = struct.Struct("!BII")
_CRC = struct.Struct("!I")
#: Bytes of a PLAIN_DATA datagram besides its payload (header, DATA header, CRC).
PLAIN_DATA_OVERHEAD = HEADER.size + DATA_HEADER.size + _CRC.size
TS_MASK = 0xFFFFFFFF
COOKIE_LEN = 16
_HELLO_CLEAR = struct.Struct(f"!B{COOKIE_LEN}s")  # cipher, cookie
_HELLO = struct.Struct("!16sIQQB")  # transfer id, block size, meta size, meta blocks, flags
_ACK = struct.Struct("!QQQQQIQIBH")  # cum, packets, bytes, recv ts, echo ts, echo delay,
#                                      committed files, rate (kbit/s), flags, range count
_RANGE = struct.Struct("!II")  # gap from the previous range's end, length
_ERROR = struct.Struct("!H")
#: A KEY_REQUEST is at least as long as the KEY it asks for (no amplification).
_KEY_REQUEST_PADDING = 40


class Kind(IntEnum):
    """The message types."""
    HELLO = 1
    REPLY = 2
    AUTH = 3
    ACCEPT = 4
    ERROR = 5
    DATA = 6
    ACK = 7
    CLOSE = 8
    PING = 9
    KEY_REQUEST = 10
    KEY = 11
    COOKIE = 12
    UNKNOWN = 13
    PLAIN_DATA = 14


#: Each type number's Kind (None: no such type): a look-up, not Kind()'s call, per datagram.
_KIND_OF: list[Kind | None] = [None] * 16
for _kind in Kind:
    _KIND_OF[_kind] = _kind

#: The messages a session's channel seals.
SEALED_KINDS = frozenset({Kind.AUTH, Kind.ACCEPT, Kind.ERROR, Kind.DATA, Kind.ACK,
                          Kind.CLOSE, Kind.PING})


def encode_frames(datagrams: list[bytes] | list[bytes | bytearray]) -> bytes:
    """Datagrams as TCP data-mode frames: each preceded by its length."""
    return b"".join(FRAME.pack(len(d)) + d for d in datagrams)


def new_session_id() -> int:
    """A random session id, as the sender picks one for each attempt."""
    return secrets.randbits(32)


def first_byte(kind: Kind) -> int:
    """The header's first byte: the version and the message type."""
    return VERSION << 4 | kind


def parse_header(data: bytes | bytearray | memoryview) -> tuple[Kind, int]:
    """(kind, session) of a datagram, after checking its version and type."""
    if len(data) < HEADER.size:
        raise Truncated("short datagram")
    first, session = HEADER.unpack_from(data, 0)
    if first >> 4 != VERSION:
        raise Garbage("bad version")
    kind = _KIND_OF[first & 0x0F]
    if kind is None:
        raise Garbage("unknown type")
    return kind, session


# -- messages outside a session: a CRC-32C at the end -------------------------------------

def encode_plain(kind: Kind, session: int, body: bytes = b"") -> bytes:
    """A message that is not sealed, ending with the CRC-32C of what comes before."""
    message = HEADER.pack(first_byte(kind), session) + body
    return message + _CRC.pack(crc32c(message))


def open_plain(data: bytes | bytearray | memoryview) -> memoryview:
    """The body of a message :func:`encode_plain` made; Garbage if its CRC is wrong."""
    view = memoryview(data)
    if len(view) < HEADER.size + _CRC.size:
        raise Truncated("short message")
    end = len(view) - _CRC.size
    if crc32c(view[:end]) != _CRC.unpack_from(view, end)[0]:
        raise Garbage("bad checksum")
    return view[HEADER.size:end]


#: KEY flag: the server encrypts the data of its sessions (not --no-data-encryption).
KEY_ENCRYPTS = 1


def encode_key(session: int, public_key: bytes, flags: int) -> bytes:
    """A KEY: the receiver's public key, unauthenticated (what a sender learns on first
    contact, or is told when its HELLO was sealed to another key)."""
    return encode_plain(Kind.KEY, session, bytes([flags]) + public_key)


def decode_key(data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
    """(public key, flags) of a KEY datagram; Garbage if malformed."""
    body = open_plain(data)
    if len(body) != 33:
        raise Garbage("bad KEY length")
    return bytes(body[1:]), body[0]


def encode_key_request(session: int) -> bytes:
    """A KEY_REQUEST: asks a receiver for its public key."""
    return encode_plain(Kind.KEY_REQUEST, session, bytes(_KEY_REQUEST_PADDING))


def check_key_request(data: bytes | bytearray | memoryview) -> None:
    """Garbage unless ``data`` is a whole KEY_REQUEST."""
    if len(open_plain(data)) < _KEY_REQUEST_PADDING:
        raise Truncated("short KEY_REQUEST")


# -- the handshake ---------------------------------------------------------------------------

#: HELLO flags: the sender proves a password (in AUTH); the sender encrypts its data; the
#: AUTH carries a token of the receiver's and its password (``TOKEN\nPASSWORD``).
HELLO_PASSWORD, HELLO_ENCRYPT, HELLO_TOKEN = 1, 2, 4


@dataclass(frozen=True)
class Hello:
    """What the sender's first message says of the session, sealed in its handshake: the
    transfer, its block size and metadata size, the user, and flags."""
    transfer_id: bytes  # 16 bytes
    block_size: int
    meta_size: int
    meta_blocks: int
    user: str
    flags: int = 0


def hello_prologue(session: int, cipher_code: int) -> bytes:
    """What both ends bind into the handshake besides its messages: the protocol, the
    session id and the cipher (so that none of them can be changed on the way)."""
    return b"JetStream data v6" + HEADER.pack(first_byte(Kind.HELLO), session) + \
        bytes([cipher_code])


def encode_hello(session: int, cipher_code: int, cookie: bytes, message: bytes) -> bytes:
    """A HELLO datagram: the cipher, a cookie (zeros unless the receiver asked for one)
    and the Noise handshake's first message."""
    return HEADER.pack(first_byte(Kind.HELLO), session) + \
        _HELLO_CLEAR.pack(cipher_code, cookie) + message


def decode_hello(data: bytes | bytearray | memoryview) -> tuple[int, bytes, bytes]:
    """(cipher code, cookie, handshake message) of a HELLO datagram."""
    if len(data) < HEADER.size + _HELLO_CLEAR.size:
        raise Truncated("short HELLO")
    cipher, cookie = _HELLO_CLEAR.unpack_from(data, HEADER.size)
    return cipher, cookie, bytes(data[HEADER.size + _HELLO_CLEAR.size:])


def encode_hello_payload(hello: Hello) -> bytes:
    """What the handshake's first message carries (encrypted)."""
    return _HELLO.pack(hello.transfer_id, hello.block_size, hello.meta_size,
                       hello.meta_blocks, hello.flags) + hello.user.encode()


def decode_hello_payload(body: bytes) -> Hello:
    """The :class:`Hello` of a handshake payload; Garbage if malformed."""
    if len(body) < _HELLO.size or len(body) > _HELLO.size + 256:
        raise Garbage("bad HELLO length")
    transfer_id, block_size, meta_size, meta_blocks, flags = _HELLO.unpack_from(body, 0)
    try:
        user = body[_HELLO.size:].decode()
    except UnicodeDecodeError:
        raise Garbage("bad HELLO user") from None
    return Hello(transfer_id, block_size, meta_size, meta_blocks, user, flags)


# -- acknowledgements and errors (bodies of sealed messages) --------------------------------

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
    #: the most the sender may send at, kbit/s (0: no limit): the receiver's incoming
    #: limit's share for this transfer
    rate_kbps: int = 0


ACK_READY = 1  # the receiver has accepted the metadata: file data may flow
ACK_COMPLETE = 2  # every file is verified, fsynced and under its final name
ACK_ECHO = 4  # the echo fields are set (a DATA datagram has arrived)
#: Ranges in one ACK datagram (keeps it under 1400 bytes).
MAX_ACK_RANGES = 160
#: The receiver acknowledges data within this long (sooner after ACK_EVERY datagrams,
#: or when a block goes missing); a sender waiting for an ACK allows for it.
ACK_DELAY_S = 0.005
#: A receiver may leave datagrams in its socket this long before reading them (to read
#: several at once: docs/protocol.md, "Acknowledgements"); its ACKs say how long it held
#: the one they echo, so the round trip stays honest, but an ACK may come this much later.
RECEIVE_HOLD_S = 0.005


def encode_ack(ack: Ack) -> bytes:
    """An ACK's body."""
    parts = [_ACK.pack(ack.cum, ack.packets, ack.bytes, ack.recv_ts_us, ack.echo_ts_us,
                       ack.echo_delay_us, ack.committed, ack.rate_kbps, ack.flags,
                       len(ack.ranges))]
    if not ack.ranges:
        return parts[0]
    fields: list[int] = []
    previous = ack.cum
    for start, end in ack.ranges:
        fields += (start - previous, end - start)
        previous = end
    return parts[0] + struct.pack(f"!{len(fields)}I", *fields)


def decode_ack(body: bytes | memoryview) -> Ack:
    """The ACK in a message's body; Garbage if malformed."""
    if len(body) < _ACK.size:
        raise Truncated("bad ACK length")
    cum, packets, nbytes, recv_ts, echo_ts, echo_delay, committed, rate, flags, count = \
        _ACK.unpack_from(body, 0)
    if len(body) != _ACK.size + count * _RANGE.size:
        raise Garbage("bad ACK range count")
    ranges: list[tuple[int, int]] = []
    previous = cum
    fields = iter(struct.unpack_from(f"!{2 * count}I", body, _ACK.size))
    for gap, length in zip(fields, fields, strict=False):
        start = previous + gap
        previous = start + length
        ranges.append((start, previous))
    return Ack(cum, packets, nbytes, recv_ts, echo_ts, echo_delay, committed, flags, ranges,
               rate)


#: ERROR codes: the transfer is refused for good; or the receiver is busy (too many
#: transfers): try again later. (Code 1, "unknown session", is the UNKNOWN message now.)
ERROR_REFUSED, ERROR_BUSY = 0, 2
#: CLOSE codes: the session is over for good (complete, cancelled, failed); or paused
#: (suspended, server stopping): the receiver keeps what it has for a later session.
CLOSE_FINAL, CLOSE_PAUSE = 0, 1


def encode_error(message: str, code: int = 0) -> bytes:
    """The body of an ERROR (or CLOSE, with a reason): a code and a message for the
    operator."""
    return _ERROR.pack(code) + message.encode()[:1000]


def decode_error(body: bytes | memoryview) -> tuple[int, str]:
    """The (code, message) of an ERROR or CLOSE body."""
    if len(body) < _ERROR.size:
        return 0, ""
    return _ERROR.unpack_from(body, 0)[0], bytes(body[_ERROR.size:]).decode(errors="replace")
