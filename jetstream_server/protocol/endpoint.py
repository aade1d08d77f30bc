"""The receiving side of a data port, sans-I/O: datagrams in, routed to their sessions.

:meth:`ReceiverEndpoint.receive_datagram` checks a datagram's header and hands it to the
:class:`~jetstream_server.protocol.receiver.ReceiverCore` of its session, opened and
checked by the session's channel. A HELLO of a new session is answered here: the Noise IK
handshake's first message is opened with this server's static key (a HELLO sealed to
another key is answered with a KEY, so that its sender can name the mismatch), and a
session is made with the handshake's reply. A KEY_REQUEST is answered with a KEY.

It drops and counts what belongs nowhere (``dropped``: garbage, messages that fail
authentication, replays, truncated messages, unknown sessions, datagrams of a session
from another source address, HELLOs beyond the limits), and answers a message of a
session it does not know with UNKNOWN, so that the sender starts again, which resumes.
What it sends outside sessions (KEY, UNKNOWN, COOKIE) is at most as long as what asked
for it, and KEY and UNKNOWN at most ten times a second per address.

Before its sender has logged in, a session costs a few kilobytes and counts among
``max_unauthenticated`` (``max_unauthenticated_per_address`` from one address): a HELLO
beyond either limit makes the endpoint forget the oldest such session, so that bogus
HELLOs cannot keep a real sender out. At most ``max_sessions`` may be logged in.

Opening a handshake costs a few X25519 operations (about 0.2 ms of CPU). So that a flood
of HELLOs from forged addresses cannot take the CPU, a :class:`HandshakeGate` counts them:
past :data:`LOAD_HANDSHAKES_PER_S` a second the endpoint is *under load*, and answers a
HELLO (of a UDP sender) with a COOKIE, a 16-byte MAC of its address, instead of opening
it; the sender repeats its HELLO with the cookie, which proves it receives at that
address, and only then is the handshake opened, at most :data:`HANDSHAKES_PER_ADDRESS_S`
a second per address (WireGuard's cookie reply, in its simplest form).

The adapter drains :attr:`ReceiverEndpoint.events` (:class:`Opened`, :class:`Evicted`) to
keep its own per-session objects, sends what :meth:`datagrams_to_send` gives, and tells the
endpoint of a session's login (:meth:`logged_in`) and end (:meth:`forget`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Garbage, Unauthenticated
from .channel import SEALED_OVERHEAD, Channel
from .noise import Handshake, KeyPair, cipher_by_code
from .receiver import ReceiverCore
from .wire import (
    COOKIE_LEN,
    HEADER,
    HELLO_ENCRYPT,
    KEY_ENCRYPTS,
    Kind,
    check_key_request,
    decode_hello,
    decode_hello_payload,
    encode_key,
    encode_plain,
    first_byte,
    hello_prologue,
    parse_header,
)

__all__ = ["Address", "Evicted", "HandshakeGate", "Opened", "ReceiverEndpoint"]

Address = tuple[str, int]

#: Sessions logged in at once (transfers being received).
MAX_SESSIONS = 256
#: Sessions not logged in yet, in all and per source address.
MAX_UNAUTHENTICATED = 1024
MAX_UNAUTHENTICATED_PER_ADDRESS = 64
#: An address is answered outside a session (KEY, UNKNOWN) at most this often.
TELL_S = 0.1
#: Handshakes opened in a second beyond which HELLOs must bring a cookie.
LOAD_HANDSHAKES_PER_S = 200
#: Under load, handshakes opened per second for one address (with a valid cookie).
HANDSHAKES_PER_ADDRESS_S = 20
#: The cookie secret changes this often (a cookie of the one before is still good).
COOKIE_SECRET_S = 120.0


@dataclass(frozen=True)
class Opened:
    """A HELLO opened a session."""

    core: ReceiverCore


@dataclass(frozen=True)
class Evicted:
    """A session that had not logged in was forgotten to make room."""

    core: ReceiverCore


class HandshakeGate:
    """Whether a HELLO may cost a handshake now (see the module's docstring): counts the
    handshakes opened per second, and makes and checks the cookies of addresses."""

    def __init__(self, load_per_s: int = LOAD_HANDSHAKES_PER_S,
                 per_address_per_s: int = HANDSHAKES_PER_ADDRESS_S) -> None:
        self.load_per_s = load_per_s
        self.per_address_per_s = per_address_per_s
        self._secrets = [secrets.token_bytes(32)] * 2  # the current one, the one before
        self._secret_until = 0.0
        self._second = 0
        self._counts = [0, 0]  # handshakes opened this second, and the second before
        self._per_host: Counter[str] = Counter()

    def _tick(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._counts = [0, self._counts[0] if second == self._second + 1 else 0]
            self._per_host.clear()
            self._second = second
        if now >= self._secret_until:
            self._secrets = [secrets.token_bytes(32), self._secrets[0]]
            self._secret_until = now + COOKIE_SECRET_S

    def under_load(self, now: float) -> bool:
        """Whether HELLOs must bring a cookie now."""
        self._tick(now)
        return max(self._counts) >= self.load_per_s

    def cookie(self, address: Address, now: float, previous: bool = False) -> bytes:
        """The cookie of ``address`` (a MAC of it under a secret of this server's)."""
        self._tick(now)
        key = self._secrets[1 if previous else 0]
        return hmac.new(key, f"{address[0]}|{address[1]}".encode(),
                        hashlib.sha256).digest()[:COOKIE_LEN]

    def admits(self, cookie: bytes, address: Address, now: float) -> bool:
        """Under load: whether a HELLO with ``cookie`` from ``address`` may be opened."""
        if not any(hmac.compare_digest(cookie, self.cookie(address, now, previous))
                   for previous in (False, True)):
            return False
        return self._per_host[address[0]] < self.per_address_per_s

    def opened(self, address: Address, now: float) -> None:
        """A handshake was opened (or tried) for ``address``."""
        self._tick(now)
        self._counts[0] += 1
        self._per_host[address[0]] += 1


class ReceiverEndpoint:
    """The data port's sessions and their routing (see the module's docstring).
    ``static``: this server's key pair; ``encrypts``: it encrypts data (else it runs
    with --no-data-encryption)."""

    def __init__(self, static: KeyPair, encrypts: bool = True,
                 max_sessions: int = MAX_SESSIONS,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED,
                 max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS,
                 gate: HandshakeGate | None = None) -> None:
        self.static = static
        self.encrypts = encrypts
        self.max_sessions = max_sessions
        self.max_unauthenticated = max_unauthenticated
        self.max_unauthenticated_per_address = max_unauthenticated_per_address
        self.gate = gate or HandshakeGate()
        self.sessions: dict[int, ReceiverCore] = {}
        self.events: deque[Opened | Evicted] = deque()
        self.dropped: Counter[str] = Counter()
        self.evicted = 0
        #: handshakes opened (a few X25519 operations each), whether they succeeded or not
        self.handshakes = 0
        #: the sessions not logged in yet, oldest first, and how many per address
        self._unauthenticated: OrderedDict[int, ReceiverCore] = OrderedDict()
        self._unauthenticated_from: Counter[str] = Counter()
        self._replies: list[tuple[bytes, Address]] = []
        self._told: dict[Address, float] = {}

    def receive_datagram(self, data: bytes | memoryview, address: Address, now: float,
                         verified: bool = False) -> ReceiverCore | None:
        """Route one datagram; the session it touched (or opened), if any.
        ``verified``: it came on a TCP connection, whose source address is proven (no
        cookie), and which delivers what was sent: a message that does not open is then
        re-raised (Garbage, counted), for the stream to be closed."""
        try:
            kind, session_id = parse_header(data)
            core = self.sessions.get(session_id)
            if core is None:
                return self._outside_session(kind, session_id, data, address, now,
                                             verified)
            if core.address != address:
                self.dropped["wrongSource"] += 1
                return None
            if kind is Kind.HELLO:
                core.hello_again()
                return core
            head, body = core.channel.open(kind, data)
            core.receive(kind, head, body, len(data), now)
            return core
        except Garbage as exc:
            self.dropped[exc.counter] += 1
            if verified:
                raise
            return None

    def _outside_session(self, kind: Kind, session_id: int, data: bytes | memoryview,
                         address: Address, now: float, verified: bool
                         ) -> ReceiverCore | None:
        if kind is Kind.HELLO:
            return self._hello(session_id, data, address, now, verified)
        if kind is Kind.KEY_REQUEST:
            check_key_request(data)
            self._tell(self._key(session_id), address, now)
            return None
        self.dropped["unknownSession"] += 1
        if kind in (Kind.DATA, Kind.PLAIN_DATA, Kind.PING, Kind.AUTH) and \
                len(data) >= SEALED_OVERHEAD:  # (the answer is no longer than it)
            self._tell(encode_plain(Kind.UNKNOWN, session_id), address, now)
        return None

    def _key(self, session_id: int) -> bytes:
        return encode_key(session_id, self.static.public,
                          KEY_ENCRYPTS if self.encrypts else 0)

    def _hello(self, session_id: int, data: bytes | memoryview, address: Address,
               now: float, verified: bool) -> ReceiverCore | None:
        if len(self.sessions) - len(self._unauthenticated) >= self.max_sessions:
            self.dropped["tooManySessions"] += 1
            return None
        cipher_code, cookie, message = decode_hello(data)
        cipher = cipher_by_code(cipher_code)
        gate = self.gate
        if not verified and gate.under_load(now):
            if not gate.admits(cookie, address, now):
                self.dropped["cookieRequired"] += 1  # (the cookie costs no handshake)
                self._replies.append((encode_plain(Kind.COOKIE, session_id,
                                                   gate.cookie(address, now)), address))
                return None
        gate.opened(address, now)
        self.handshakes += 1
        handshake = Handshake(cipher, self.static, hello_prologue(session_id, cipher_code))
        try:
            hello = decode_hello_payload(handshake.read_message_1(message))
        except Unauthenticated:
            # sealed to another key (the sender pinned another server's), or damaged:
            # tell it this server's key, so that it can say which (the KEY is shorter
            # than a whole HELLO)
            self.dropped[Unauthenticated.counter] += 1
            self._tell(self._key(session_id), address, now)
            return None
        assert handshake.remote_static is not None
        encrypt_data = self.encrypts and bool(hello.flags & HELLO_ENCRYPT)
        reply = HEADER.pack(first_byte(Kind.REPLY), session_id) + \
            handshake.write_message_2(bytes([HELLO_ENCRYPT if self.encrypts else 0]))
        initiator_key, responder_key = handshake.split()
        channel = Channel(cipher, session_id, responder_key, initiator_key, encrypt_data)
        core = ReceiverCore(session_id, hello, handshake.remote_static, channel, reply, now,
                            address, self.encrypts)
        self._make_room(address[0])
        self._unauthenticated[session_id] = core
        self._unauthenticated_from[address[0]] += 1
        self.sessions[session_id] = core
        self.events.append(Opened(core))
        return core

    def _make_room(self, host: str) -> None:
        """Forget the oldest sessions not logged in while a new one from ``host`` would
        exceed a limit."""
        while self._unauthenticated_from[host] >= self.max_unauthenticated_per_address:
            self._evict(next(c for c in self._unauthenticated.values()
                             if c.address[0] == host))
        while len(self._unauthenticated) >= self.max_unauthenticated:
            self._evict(next(iter(self._unauthenticated.values())))

    def _evict(self, core: ReceiverCore) -> None:
        self.evicted += 1
        self.forget(core)
        self.events.append(Evicted(core))

    def _tell(self, reply: bytes, address: Address, now: float) -> None:
        """Answer ``address`` outside a session (its key; that a session is unknown, after
        this server restarted or forgot it before its login, so that the sender starts a
        new one), at most ten times a second per address."""
        if now - self._told.get(address, -TELL_S) < TELL_S:
            return
        if len(self._told) > 10_000:
            self._told.clear()
        self._told[address] = now
        self._replies.append((reply, address))

    def datagrams_to_send(self) -> Sequence[tuple[bytes, Address]]:
        """The endpoint's own answers (not of a session), with where they go."""
        if not self._replies:  # (asked after every datagram: nothing made, most times)
            return ()
        out, self._replies = self._replies, []
        return out

    def logged_in(self, core: ReceiverCore) -> bool:
        """``core``'s sender has logged in: False if it must be refused for now
        (``max_sessions`` transfers are being received)."""
        others = len(self.sessions) - len(self._unauthenticated) - (
            core.session not in self._unauthenticated)  # logged in, but this one
        if others >= self.max_sessions:
            return False
        self._forget_unauthenticated(core)
        return True

    def forget(self, core: ReceiverCore) -> None:
        """``core``'s session is over (idempotent)."""
        if self.sessions.get(core.session) is core:
            del self.sessions[core.session]
        self._forget_unauthenticated(core)

    def _forget_unauthenticated(self, core: ReceiverCore) -> None:
        if self._unauthenticated.get(core.session) is core:
            del self._unauthenticated[core.session]
            host = core.address[0]
            self._unauthenticated_from[host] -= 1
            if not self._unauthenticated_from[host]:
                del self._unauthenticated_from[host]

    def stats(self) -> dict[str, Any]:
        """Counters for getServerInfo's ``receiver``."""
        return {"activeSessions": len(self.sessions) - len(self._unauthenticated),
                "unauthenticatedSessions": len(self._unauthenticated),
                "unauthenticatedSessionsEvicted": self.evicted,
                "handshakesOpened": self.handshakes,
                "datagramsDropped": dict(self.dropped)}
