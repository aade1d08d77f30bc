"""The sealed messages of one session, after its handshake, sans-I/O.

A :class:`Channel` holds the two keys :meth:`Handshake.split` gave (one per direction)
and seals and opens the session's messages::

    header (5)  packet number (u48)  clear fields  ciphertext of the body  tag (16)

The packet number counts this direction's messages from 0 and is the AEAD's nonce (never
used twice with one key); the header, packet number and clear fields are the associated
data (authenticated, not encrypted). Only a DATA message has clear fields: its block
number and send time (9 bytes), so that its payload is encrypted straight from the file's
buffer into the datagram.

Every 2^24 packets of a direction the key moves on (Noise's REKEY of the last key), so
that no key seals more than 2^24 messages (the AEAD limits RFC 9001 section 6.6 keeps
to). The receiving side keeps a window of the last :data:`WINDOW` packet numbers: a
message seen before, or older than the window, is dropped as replayed. Nothing about a
message is trusted, and the window does not move, until its tag has verified.

In a session that does not encrypt (both servers run with ``--no-data-encryption``),
DATA travels as PLAIN_DATA: the same clear fields and the payload as it is, with a
CRC-32C; every other message is still sealed.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from ..errors import Garbage, Replayed, Truncated, Unauthenticated
from .checksums import crc32c
from .noise import TAG_LEN, Aead, Cipher
from .wire import (
    DATA_HEADER,
    HEADER,
    PLAIN_DATA_OVERHEAD,
    SEALED_KINDS,
    TS_MASK,
    Kind,
    first_byte,
    open_plain,
)

__all__ = ["DATA_OVERHEAD", "SEALED_OVERHEAD", "WINDOW", "Channel"]

_PN = struct.Struct("!HI")  # u48: high 16, low 32
_SEALED_HEADER = HEADER.size + _PN.size
#: Bytes of a sealed message besides its body (header, packet number, tag).
SEALED_OVERHEAD = _SEALED_HEADER + TAG_LEN
#: Bytes of a sealed DATA message besides its payload.
DATA_OVERHEAD = SEALED_OVERHEAD + DATA_HEADER.size
_DATA_CLEAR = _SEALED_HEADER + DATA_HEADER.size
#: A sealed DATA's clear part in one go: header, packet number, block number, send time.
_DATA_CLEAR_FIELDS = struct.Struct("!BIHIBII")
_DATA_FIRST_BYTE = first_byte(Kind.DATA)
_CRC = struct.Struct("!I")
#: Packets sealed with one key before the next (a power of two).
EPOCH_BITS = 24
#: How far behind the newest packet an older one may arrive and still be taken.
WINDOW = 4096
_WINDOW_MASK = (1 << WINDOW) - 1
_MAX_PN = 1 << 48


class _Sealing:
    """One direction's keys, by epoch: the current one is kept, the next made on need."""

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        self.cipher = cipher
        self.epoch = 0
        self._key = key
        self.aead: Aead = cipher.aead(key)
        self._previous: Aead | None = None
        self._next: tuple[bytes, Aead] | None = None

    def for_epoch(self, epoch: int) -> Aead | None:
        """The AEAD of ``epoch`` if it is the current one, the one before or the one
        after; None for any other (too old, or too far ahead to be real)."""
        if epoch == self.epoch:
            return self.aead
        if epoch == self.epoch - 1:
            return self._previous
        if epoch == self.epoch + 1:
            if self._next is None:
                key = self.cipher.rekey(self._key)
                self._next = (key, self.cipher.aead(key))
            return self._next[1]
        return None

    def advance(self) -> None:
        """Move to the next epoch's key (its first packet has been sealed or opened)."""
        self.for_epoch(self.epoch + 1)
        assert self._next is not None
        self._previous = self.aead
        self._key, self.aead = self._next
        self._next = None
        self.epoch += 1


class Channel:
    """A session's two directions of sealed messages (see the module's docstring).
    ``encrypt_data`` False: DATA goes as PLAIN_DATA (both ends agreed, in the
    handshake, not to encrypt data)."""

    def __init__(self, cipher: Cipher, session: int, send_key: bytes, receive_key: bytes,
                 encrypt_data: bool = True) -> None:
        self.cipher = cipher
        self.session = session
        self.encrypt_data = encrypt_data
        self._nonce = cipher.nonce_maker
        self._out = _Sealing(cipher, send_key)
        self._in = _Sealing(cipher, receive_key)
        #: the next packet number to send
        self.next_pn = 0
        #: the highest packet number received, and the window of those seen: bit i set
        #: when ``highest - i`` was (a bitmap in one int: 512 bytes, not 4096 slots)
        self.highest = -1
        self._seen = 0

    # -- sending ----------------------------------------------------------------------------

    def _pn(self) -> int:
        pn = self.next_pn
        if pn >= _MAX_PN:
            raise OverflowError("the session has sealed 2^48 messages")
        if pn >> EPOCH_BITS != self._out.epoch:
            self._out.advance()
        self.next_pn = pn + 1
        return pn

    def seal(self, kind: Kind, body: bytes | bytearray | memoryview = b"") -> bytes:
        """A sealed message of ``kind`` with ``body``."""
        pn = self._pn()
        clear = HEADER.pack(first_byte(kind), self.session) + _PN.pack(pn >> 32,
                                                                        pn & 0xFFFFFFFF)
        return clear + self._out.aead.encrypt(self._nonce(pn), body, clear)

    def seal_data(self, block: int, sent_us: int, payload: bytes | memoryview
                  ) -> bytes | bytearray:
        """A DATA message (or PLAIN_DATA, when data is not encrypted) of ``block``."""
        if not self.encrypt_data:
            datagram = bytearray(PLAIN_DATA_OVERHEAD + len(payload))
            HEADER.pack_into(datagram, 0, first_byte(Kind.PLAIN_DATA), self.session)
            DATA_HEADER.pack_into(datagram, HEADER.size, block >> 32, block & 0xFFFFFFFF,
                                  sent_us & TS_MASK)
            end = HEADER.size + DATA_HEADER.size + len(payload)
            datagram[HEADER.size + DATA_HEADER.size:end] = payload
            _CRC.pack_into(datagram, end, crc32c(memoryview(datagram)[:end]))
            return datagram
        pn = self._pn()
        clear = _DATA_CLEAR_FIELDS.pack(_DATA_FIRST_BYTE, self.session, pn >> 32,
                                        pn & 0xFFFFFFFF, block >> 32, block & 0xFFFFFFFF,
                                        sent_us & TS_MASK)
        return clear + self._out.aead.encrypt(self._nonce(pn), payload, clear)

    # -- receiving --------------------------------------------------------------------------

    def open(self, kind: Kind, data: bytes | bytearray | memoryview
             ) -> tuple[memoryview, bytes]:
        """(clear fields, body) of a sealed message (or a PLAIN_DATA) of this session,
        whose header says ``kind``. Raises Truncated, Replayed or Unauthenticated (a
        Garbage each); nothing changes then."""
        view = memoryview(data)
        if kind is Kind.PLAIN_DATA:
            return self._open_plain_data(view)
        if kind not in SEALED_KINDS:
            raise Garbage(f"{kind.name} is not sealed")
        clear = _DATA_CLEAR if kind is Kind.DATA else _SEALED_HEADER
        if len(view) < clear + TAG_LEN:
            raise Truncated(f"short {kind.name}")
        high, low = _PN.unpack_from(view, HEADER.size)
        pn = high << 32 | low
        behind = self.highest - pn
        if behind >= WINDOW or (behind >= 0 and self._seen >> behind & 1):
            raise Replayed("packet number seen before")
        epoch = pn >> EPOCH_BITS
        keys = self._in
        aead = keys.aead if epoch == keys.epoch else keys.for_epoch(epoch)
        if aead is None:
            if epoch > keys.epoch:  # (a forged number: no key of it can exist yet)
                raise Unauthenticated("packet number of no key yet")
            raise Replayed("packet number of an old key")
        try:
            body = aead.decrypt(self._nonce(pn), view[clear:], view[:clear])
        except InvalidTag:
            raise Unauthenticated(f"{kind.name} does not authenticate") from None
        if behind < 0:  # the newest yet: the window moves
            self._seen = (self._seen << -behind | 1) & _WINDOW_MASK
            self.highest = pn
            if pn >> EPOCH_BITS > self._in.epoch:
                self._in.advance()
        else:
            self._seen |= 1 << behind
        return view[_SEALED_HEADER:clear], body

    def _open_plain_data(self, view: memoryview) -> tuple[memoryview, bytes]:
        if self.encrypt_data:
            raise Unauthenticated("plain data in an encrypted session")
        if len(view) < PLAIN_DATA_OVERHEAD:
            raise Truncated("short PLAIN_DATA")
        body = open_plain(view)  # (a message outside the seal: a CRC-32C at its end)
        return body[:DATA_HEADER.size], bytes(body[DATA_HEADER.size:])
