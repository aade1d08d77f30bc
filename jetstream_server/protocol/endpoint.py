"""The receiving side of a data port, sans-I/O: datagrams in, routed to their sessions.

:meth:`ReceiverEndpoint.receive_datagram` checks a datagram's header and hands it to the
:class:`~jetstream_server.protocol.receiver.ReceiverCore` of its session, opening one on a
HELLO. It drops and counts what belongs nowhere (``dropped``: garbage, unknown sessions,
datagrams of a session from another source address, HELLOs beyond the limit), and answers
a DATA, PING or AUTH of a session it does not know with ERROR "unknown session" (at most
ten times a second per address), so that the sender starts again, which resumes.

Before its sender has logged in, a session costs a few kilobytes and counts among
``max_unauthenticated`` (``max_unauthenticated_per_address`` from one address): a HELLO
beyond either limit makes the endpoint forget the oldest such session, so that bogus
HELLOs cannot keep a real sender out. At most ``max_sessions`` may be logged in.

The adapter drains :attr:`ReceiverEndpoint.events` (:class:`Opened`, :class:`Evicted`) to
keep its own per-session objects, sends what :meth:`datagrams_to_send` gives, and tells the
endpoint of a session's login (:meth:`logged_in`) and end (:meth:`forget`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Garbage
from .receiver import Authorizer, ReceiverCore
from .wire import ERROR_UNKNOWN_SESSION, HEADER, Kind, decode_hello, encode_error, parse_header

__all__ = ["Address", "Evicted", "Opened", "ReceiverEndpoint"]

Address = tuple[str, int]

#: Sessions logged in at once (transfers being received).
MAX_SESSIONS = 256
#: Sessions not logged in yet, in all and per source address.
MAX_UNAUTHENTICATED = 1024
MAX_UNAUTHENTICATED_PER_ADDRESS = 64
#: An address that sends datagrams of unknown sessions is told so at most this often.
TELL_UNKNOWN_S = 0.1


@dataclass(frozen=True)
class Opened:
    """A HELLO opened a session."""

    core: ReceiverCore


@dataclass(frozen=True)
class Evicted:
    """A session that had not logged in was forgotten to make room."""

    core: ReceiverCore


class ReceiverEndpoint:
    """The data port's sessions and their routing (see the module's docstring)."""
    def __init__(self, authorizer: Authorizer, max_sessions: int = MAX_SESSIONS,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED,
                 max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS
                 ) -> None:
        self.authorizer = authorizer
        self.max_sessions = max_sessions
        self.max_unauthenticated = max_unauthenticated
        self.max_unauthenticated_per_address = max_unauthenticated_per_address
        self.sessions: dict[int, ReceiverCore] = {}
        self.events: deque[Opened | Evicted] = deque()
        self.dropped: Counter[str] = Counter()
        self.evicted = 0
        #: the sessions not logged in yet, oldest first, and how many per address
        self._unauthenticated: OrderedDict[int, ReceiverCore] = OrderedDict()
        self._unauthenticated_from: Counter[str] = Counter()
        self._replies: list[tuple[bytes, Address]] = []
        self._told: dict[Address, float] = {}

    def receive_datagram(self, data: bytes | memoryview, address: Address, now: float
                         ) -> ReceiverCore | None:
        """Route one datagram; the session it touched (or opened), if any."""
        try:
            kind, session_id = parse_header(data)
        except Garbage:
            self.dropped["garbage"] += 1
            return None
        core = self.sessions.get(session_id)
        body = memoryview(data)[HEADER.size:]
        if core is None:
            if kind is Kind.HELLO:
                return self._open(session_id, body, address, now)
            self.dropped["unknownSession"] += 1
            if kind in (Kind.DATA, Kind.PING, Kind.AUTH):
                self._tell_unknown(session_id, address, now)
            return None
        if core.address != address:
            self.dropped["wrongSource"] += 1
            return None
        try:
            core.receive(kind, body, len(data), now)
        except Garbage:
            self.dropped["garbage"] += 1
            return None
        return core

    def _open(self, session_id: int, body: memoryview, address: Address, now: float
              ) -> ReceiverCore | None:
        if len(self.sessions) - len(self._unauthenticated) >= self.max_sessions:
            self.dropped["tooManySessions"] += 1
            return None
        try:
            core = ReceiverCore(session_id, decode_hello(body), self.authorizer, now, address)
        except Garbage:
            self.dropped["garbage"] += 1
            return None
        if core.user is None:
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

    def _tell_unknown(self, session_id: int, address: Address, now: float) -> None:
        """Tell a sender its session is gone (this server restarted, or forgot it before
        its login), at most ten times a second per address, so that it starts a new one."""
        if now - self._told.get(address, -TELL_UNKNOWN_S) < TELL_UNKNOWN_S:
            return
        if len(self._told) > 10_000:
            self._told.clear()
        self._told[address] = now
        self._replies.append((encode_error(session_id, Kind.ERROR, "unknown session",
                                           ERROR_UNKNOWN_SESSION), address))

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
                "datagramsDropped": dict(self.dropped)}
