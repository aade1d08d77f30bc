"""Who may hold a TCP connection to the server, and for how long (sans-I/O: time is passed in).

Every accepted TCP connection, control API or data stream, is tracked from accept to close
by one :class:`ConnectionGuard`:

- At most ``max_total`` connections in all and ``max_per_address`` from one address. A
  connection is *unauthenticated* until its peer has logged in (an API ``auth``, or a data
  stream whose transfer login was accepted); at most ``max_unauthenticated`` of those in
  all and ``max_unauthenticated_per_address`` from one address.
- When a limit is reached, the oldest unauthenticated connection within it is closed to
  make room, so that a flood of connections that never log in cannot keep a real client
  out; when every connection within the limit is authenticated, the new one is refused.
- An unauthenticated connection is closed ``first_message_s`` after accept if it has not
  sent one complete request (or data frame), and ``unauthenticated_idle_s`` after its last
  one while no request of it is being answered; a logged-in one after ``idle_s`` without a
  request (an hour), and sooner by the server's TCP keepalives when its peer's machine
  goes away.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ConnectionGuard", "ConnectionLimits", "Tracked"]


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits a ConnectionGuard keeps (see the module's docstring)."""
    max_total: int = 1024
    max_per_address: int = 128
    max_unauthenticated: int = 256
    max_unauthenticated_per_address: int = 16
    first_message_s: float = 10.0
    unauthenticated_idle_s: float = 30.0
    idle_s: float = 3600.0


@dataclass(eq=False)
class Tracked:
    """One connection as the guard sees it. ``close(reason)`` ends it, telling the peer
    why where the protocol can; the connection reports itself with :meth:`spoke`."""

    address: str
    opened_s: float
    close: Callable[[str], None]
    #: called once the connection is gone (the guard then forgets it)
    on_lost: Callable[[], None] = field(default=lambda: None)
    last_active_s: float = field(default=0.0)
    #: a complete request line (or data frame) has arrived
    has_spoken: bool = False
    authenticated: bool = False
    #: requests of it are being answered (it is not idle, whatever the clock says)
    busy: int = 0

    def spoke(self, now: float, authenticated: bool) -> None:
        """A complete request or frame arrived; whether the peer is now logged in."""
        self.has_spoken = True
        self.last_active_s = now
        self.authenticated = self.authenticated or authenticated

    def lost(self) -> None:
        """The connection is gone."""
        self.on_lost()


class ConnectionGuard:
    """Every TCP connection from accept to close, and the limits on them."""
    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self._all: OrderedDict[int, Tracked] = OrderedDict()  # oldest first
        self._by_address: dict[str, OrderedDict[int, Tracked]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def admit(self, conn: Tracked, now: float) -> list[Tracked] | None:
        """Track ``conn``; the connections to close to make room for it, or None when it
        is refused (every connection within the limit it meets is authenticated)."""
        limits = self.limits
        conn.opened_s = conn.last_active_s = now
        mine = self._by_address.get(conn.address, OrderedDict())
        evict: list[Tracked] = []
        checks: tuple[tuple[OrderedDict[int, Tracked], int, bool], ...] = (
            (mine, limits.max_per_address, False),
            (self._all, limits.max_total, False),
            (mine, limits.max_unauthenticated_per_address, True),
            (self._all, limits.max_unauthenticated, True))
        for scope, limit, unauthenticated_only in checks:
            counted = [c for c in scope.values() if c not in evict and
                       not (unauthenticated_only and c.authenticated)]
            if len(counted) < limit:
                continue
            victims = [c for c in counted if not c.authenticated]
            if not victims:
                return None
            evict.append(victims[0])
        for victim in evict:
            self.release(victim)
        self._all[id(conn)] = conn
        self._by_address.setdefault(conn.address, OrderedDict())[id(conn)] = conn
        return evict

    def release(self, conn: Tracked) -> None:
        """``conn`` is closed (idempotent)."""
        self._all.pop(id(conn), None)
        mine = self._by_address.get(conn.address)
        if mine is not None:
            mine.pop(id(conn), None)
            if not mine:
                del self._by_address[conn.address]

    def expired(self, now: float) -> list[tuple[Tracked, str]]:
        """Connections past their time, each with why (they stay tracked until
        :meth:`release`)."""
        limits = self.limits
        out: list[tuple[Tracked, str]] = []
        for conn in self._all.values():
            if conn.busy:
                continue
            if conn.authenticated:
                if now - conn.last_active_s >= limits.idle_s:
                    out.append((conn, f"Idle for {limits.idle_s:g} s; the connection is "
                                      "closed."))
            elif not conn.has_spoken and now - conn.opened_s >= limits.first_message_s:
                out.append((conn, f"No request within {limits.first_message_s:g} s of "
                                  "connecting; the connection is closed."))
            elif conn.has_spoken and now - conn.last_active_s >= limits.unauthenticated_idle_s:
                out.append((conn, f"Idle for {limits.unauthenticated_idle_s:g} s without "
                                  "logging in; the connection is closed."))
        return out
