"""Every status machine of the control plane, as tables, in one place.

Each :class:`Lifecycle` is a table of actions: the statuses an action may start from, and
the status it leads to. A status changes only through :meth:`Lifecycle.move`, which
refuses an action the table does not allow from the current status with
:class:`~jetstream_server.errors.InvalidState` (a message naming the object, its status and
the action, so an API client gets a clear error). Restoring state at start goes through
the tables too (the ``restart`` actions).

The machines: a transfer on the sending side (:data:`TRANSFER`), an incoming transfer on
the receiving side (:data:`RECEIVE`), a manifest (:data:`MANIFEST`), a queued request
(:data:`REQUEST`), and a destination's data connection (:data:`CONNECTION`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, TypeVar

from ..errors import InvalidState

__all__ = [
    "CONNECTION",
    "MANIFEST",
    "RECEIVE",
    "REQUEST",
    "TRANSFER",
    "ConnectionState",
    "Lifecycle",
    "ManifestStatus",
    "ReceiveStatus",
    "RequestStatus",
    "TransferStatus",
]

S = TypeVar("S", bound=StrEnum)


class Lifecycle(Generic[S]):
    """A status machine: ``moves`` maps each action to (the statuses it may start from,
    the status it leads to)."""

    def __init__(self, noun: str, moves: dict[str, tuple[frozenset[S], S]]) -> None:
        self.noun = noun
        self.moves = moves

    def move(self, object_id: str, current: S, action: str) -> S:
        """The status ``action`` leads to from ``current``, or raise InvalidState."""
        sources, target = self.moves[action]
        if current not in sources:
            allowed = ", ".join(sorted(s.value for s in sources))
            raise InvalidState(
                f"Cannot {action} {self.noun} {object_id}: its status is {current.value} "
                f"(only {allowed} can).")
        return target


class TransferStatus(StrEnum):
    """A sending transfer's status."""
    PENDING = "pending"
    SENDING = "sending"
    SUSPENDED = "suspended"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def ended(self) -> bool:
        """Complete, cancelled or failed."""
        return self in _ENDED


_ENDED = frozenset({TransferStatus.COMPLETE, TransferStatus.CANCELLED, TransferStatus.ERROR})
_P, _S, _U, _E = (TransferStatus.PENDING, TransferStatus.SENDING, TransferStatus.SUSPENDED,
                  TransferStatus.ERROR)

TRANSFER: Lifecycle[TransferStatus] = Lifecycle("transfer", {
    # the scheduler hands the head of a destination's queue to the data plane
    "start": (frozenset({_P}), _S),
    # the data plane lost its peer and will retry: back into the queue, progress kept
    "requeue": (frozenset({_S}), _P),
    "suspend": (frozenset({_P, _S}), _U),
    # a suspended transfer goes on; a failed one is tried again (the receiver kept what
    # it had when the failure was one its operator can cure: a full disk, a permission)
    "resume": (frozenset({_U, _E}), _P),
    "cancel": (frozenset({_P, _S, _U}), TransferStatus.CANCELLED),
    "fail": (frozenset({_P, _S, _U}), _E),
    "complete": (frozenset({_S}), TransferStatus.COMPLETE),
    # at start: a transfer that was sending when the server stopped resumes from its queue
    "restart": (frozenset({_S}), _P),
})


class ReceiveStatus(StrEnum):
    """An incoming transfer's status."""
    RECEIVING = "receiving"
    COMPLETE = "complete"
    ERROR = "error"


_ALL_RECEIVE = frozenset(ReceiveStatus)

RECEIVE: Lifecycle[ReceiveStatus] = Lifecycle("incoming transfer", {
    # a new session of a transfer seen before (after an interruption, a failure the
    # operator cured, or a sender that did not hear it complete)
    "resume": (_ALL_RECEIVE, ReceiveStatus.RECEIVING),
    "complete": (frozenset({ReceiveStatus.RECEIVING}), ReceiveStatus.COMPLETE),
    # refused, closed by its sender, or abandoned (its sender did not come back)
    "fail": (frozenset({ReceiveStatus.RECEIVING}), ReceiveStatus.ERROR),
})


class ManifestStatus(StrEnum):
    """A manifest's status."""
    PENDING = "pending"
    COMPLETE = "complete"
    ERROR = "error"


MANIFEST: Lifecycle[ManifestStatus] = Lifecycle("manifest", {
    "complete": (frozenset({ManifestStatus.PENDING}), ManifestStatus.COMPLETE),
    "fail": (frozenset({ManifestStatus.PENDING}), ManifestStatus.ERROR),
})


class RequestStatus(StrEnum):
    """A queued request's status."""
    PENDING = "pending"
    SUCCESS = "success"
    ERROR = "error"


REQUEST: Lifecycle[RequestStatus] = Lifecycle("request", {
    "succeed": (frozenset({RequestStatus.PENDING}), RequestStatus.SUCCESS),
    # failed, or (at start) pending when the server stopped
    "fail": (frozenset({RequestStatus.PENDING}), RequestStatus.ERROR),
})


class ConnectionState(StrEnum):
    """A destination's data connection (``encryptedConnectionState``; with no encryption
    yet, the state of its data session)."""

    DISCONNECTED = "disconnected"
    NEGOTIATING = "negotiating"
    CONNECTED = "connected"


CONNECTION: Lifecycle[ConnectionState] = Lifecycle("connection", {
    "connect": (frozenset({ConnectionState.DISCONNECTED}), ConnectionState.NEGOTIATING),
    "accepted": (frozenset({ConnectionState.NEGOTIATING}), ConnectionState.CONNECTED),
    "disconnect": (frozenset(ConnectionState), ConnectionState.DISCONNECTED),
})
