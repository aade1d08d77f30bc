"""Lifecycle states and the moves between them, as tables, in one place.

An illegal move raises :class:`~jetstream_server.errors.InvalidState` with a message that
names the object, its status and the action, so an API client gets a clear error.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvalidState

__all__ = ["TRANSFER_MOVES", "ManifestStatus", "TransferStatus", "transfer_move"]


class ManifestStatus(StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    ERROR = "error"


class TransferStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUSPENDED = "suspended"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({TransferStatus.COMPLETE, TransferStatus.CANCELLED, TransferStatus.ERROR})

P, S, U = TransferStatus.PENDING, TransferStatus.SENDING, TransferStatus.SUSPENDED

#: action -> (statuses it may start from, status it leads to)
TRANSFER_MOVES: dict[str, tuple[frozenset[TransferStatus], TransferStatus]] = {
    # the scheduler hands the head of a destination's queue to the data plane
    "start": (frozenset({P}), S),
    # the data plane lost its peer and will retry: back into the queue, progress kept
    "requeue": (frozenset({S}), P),
    "suspend": (frozenset({P, S}), U),
    # a suspended transfer goes on; a failed one is tried again (the receiver kept what
    # it had when the failure was one its operator can cure: a full disk, a permission)
    "resume": (frozenset({U, TransferStatus.ERROR}), P),
    "cancel": (frozenset({P, S, U}), TransferStatus.CANCELLED),
    "fail": (frozenset({P, S, U}), TransferStatus.ERROR),
    "complete": (frozenset({S}), TransferStatus.COMPLETE),
}


def transfer_move(transfer_id: str, current: TransferStatus, action: str) -> TransferStatus:
    """The status ``action`` leads to from ``current``, or raise :class:`InvalidState`."""
    sources, target = TRANSFER_MOVES[action]
    if current not in sources:
        allowed = ", ".join(sorted(s.value for s in sources))
        raise InvalidState(
            f"Cannot {action} transfer {transfer_id}: its status is {current.value} "
            f"(only {allowed} can)."
        )
    return target
