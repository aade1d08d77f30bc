"""Transfer queues and the place where the data plane plugs in.

Each destination has its own queue: its ``pending`` transfers ordered by ``priority``
(lower first), then by age, kept as a heap (queueing, and starting the next, cost
O(log n) however many wait; a transfer that left the queue is dropped from the heap when
it reaches the top). When a :class:`DataPlane` is attached, the scheduler hands the
head of a destination's queue to it as soon as that destination has fewer than
``max_sending`` transfers ``sending`` (one, by default); the data plane reports back
through :meth:`Scheduler.progress`, :meth:`Scheduler.finished` and
:meth:`Scheduler.requeue`. Without a data plane, transfers wait in their queues
(``pending``) and every other operation still works.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..errors import ERROR_CODES
from ..protocol.layout import TCP_BLOCK_SIZE, UDP_BLOCK_SIZE
from .ids import now_us
from .lifecycle import TRANSFER, TransferStatus
from .objects import Destination, Manifest, Transfer

__all__ = ["MAX_SENDING_PER_DESTINATION", "DataPlane", "Scheduler"]

log = logging.getLogger("jetstream.transfers")

#: Transfers of one destination that move data at the same time, unless the server's
#: --transfers-per-destination says otherwise.
MAX_SENDING_PER_DESTINATION = 1


class DataPlane(Protocol):
    """What moves the bytes. ``start`` must not block; the rest act on a running flow."""

    def start(self, transfer: Transfer, destination: Destination, manifest: Manifest) -> None:
        """Start moving ``transfer``'s data (must not block)."""
        ...

    def prepare(self, destination: Destination) -> None:
        """A destination was created: get ready to send there (may contact it)."""

    def stop(self, transfer_id: str) -> None:
        """Stop moving data (suspend, cancel, fail or delete); progress is kept."""

    def set_rate(self, transfer_id: str, rate_kbps: int, policy: str) -> None:
        """Change a running transfer's rate limit (kbit/s; 0: automatic) and policy."""
        ...

    def block_size(self, transport: str, ip: str) -> int:
        """The block size of a new transfer to ``ip`` over ``transport``."""
        ...

    async def shutdown(self) -> None:
        """Stop every flow so that it resumes at the next start (the server stops)."""
        ...


class Scheduler:
    """The transfer queues of every destination, and what starts when (see the module's
    docstring)."""
    def __init__(
        self,
        transfers: dict[str, Transfer],
        destinations: dict[str, Destination],
        manifests: dict[str, Manifest],
        data_plane: DataPlane | None = None,
        on_change: Callable[[Transfer], None] | None = None,
        max_sending: int = MAX_SENDING_PER_DESTINATION,
    ) -> None:
        self.transfers = transfers
        #: transfers of one destination sending at once
        self.max_sending = max_sending
        self.destinations = destinations
        self.manifests = manifests
        self.data_plane = data_plane
        self.on_change = on_change
        self._seq = 0
        self._not_before: dict[str, float] = {}
        #: per destination: (priority, queue_seq, entry number, transfer id) of its
        #: pending transfers (and of some that are no longer pending: skipped when met)
        self._queues: dict[str, list[tuple[int, int, int, str]]] = {}
        #: each pending transfer's entry number: the one entry of it that counts (one
        #: suspended and resumed has an older entry still in the heap)
        self._entries: dict[str, int] = {}
        self._pushed = 0
        #: per destination: its transfers sending
        self._sending: dict[str, set[str]] = {}
        #: set while the server stops: nothing new starts
        self.draining = False

    # -- queues -----------------------------------------------------------------------

    def queue(self, destination_id: str) -> list[Transfer]:
        """The pending transfers of a destination, in the order they will be sent."""
        return [self.transfers[entry[3]] for entry in
                sorted(self._queues.get(destination_id, ())) if self._waiting(entry)]

    def _waiting(self, entry: tuple[int, int, int, str]) -> bool:
        """Whether a queue entry is a pending transfer's current one."""
        transfer = self.transfers.get(entry[3])
        return transfer is not None and transfer.status is TransferStatus.PENDING and \
            self._entries.get(transfer.id) == entry[2]

    def _track(self, transfer: Transfer) -> None:
        """Keep the queues and the sending sets up with ``transfer``'s status."""
        sending = self._sending.setdefault(transfer.destination_id, set())
        if transfer.status is TransferStatus.SENDING:
            sending.add(transfer.id)
        else:
            sending.discard(transfer.id)
        if transfer.status is TransferStatus.PENDING:
            self._pushed += 1
            self._entries[transfer.id] = self._pushed
            heapq.heappush(self._queues.setdefault(transfer.destination_id, []),
                           (transfer.priority, transfer.queue_seq, self._pushed, transfer.id))
        else:
            self._entries.pop(transfer.id, None)

    def block_size(self, transport: str, ip: str) -> int:
        """The block size a new transfer gets (the data plane's choice, by the route)."""
        if self.data_plane is None:
            return TCP_BLOCK_SIZE if transport == "tcp" else UDP_BLOCK_SIZE
        return self.data_plane.block_size(transport, ip)

    def effective_rate_kbps(self, transfer: Transfer) -> int:
        """The transfer's rate limit: its own, else its destination's."""
        if transfer.send_rate_max_kbps is not None:
            return transfer.send_rate_max_kbps
        destination = self.destinations.get(transfer.destination_id)
        return destination.send_rate_max_kbps if destination else 0

    def effective_policy(self, transfer: Transfer) -> str:
        """The transfer's rate policy: its own, else its destination's."""
        if transfer.rate_policy is not None:
            return transfer.rate_policy
        destination = self.destinations.get(transfer.destination_id)
        return destination.rate_policy if destination else "fair"

    def enqueue(self, transfer: Transfer) -> None:
        """Queue a new transfer (and start it if its destination is free)."""
        self._seq += 1
        transfer.queue_seq = self._seq
        transfer.queue_time_us = now_us()
        self.transfers[transfer.id] = transfer
        self._track(transfer)
        self._changed(transfer)
        self.poke(transfer.destination_id)

    def retry_due(self, transfer: Transfer) -> None:
        """A transfer's wait after network trouble is over: it may start again.

        (Its timer, not the clock, decides: an event loop's timer may fire a hair before
        ``time.monotonic()`` reaches the deadline.)"""
        self._not_before.pop(transfer.id, None)
        self.poke(transfer.destination_id)

    def restored(self) -> None:
        """After loading stored transfers: continue their numbering, rebuild the queues."""
        self._seq = max([self._seq, *(t.queue_seq for t in self.transfers.values())])
        self._queues.clear()
        self._entries.clear()
        self._sending.clear()
        for transfer in self.transfers.values():
            self._track(transfer)

    def poke_all(self) -> None:
        """Start what may start, for every destination."""
        for destination_id in list(self.destinations):
            self.poke(destination_id)

    def poke(self, destination_id: str) -> None:
        """Start queued transfers of ``destination_id`` while it has room."""
        if self.data_plane is None or self.draining:
            return
        destination = self.destinations.get(destination_id)
        if destination is None:
            return
        queue = self._queues.get(destination_id, [])
        now = time.monotonic()
        later: list[tuple[int, int, int, str]] = []  # waiting out a retry's delay
        ready: list[Transfer] = []
        room = self.max_sending - len(self._sending.get(destination_id, ()))
        while queue and len(ready) < room:
            entry = heapq.heappop(queue)
            if not self._waiting(entry):
                continue
            if self._not_before.get(entry[3], 0.0) > now:
                later.append(entry)
                continue
            ready.append(self.transfers[entry[3]])
        for entry in later:
            heapq.heappush(queue, entry)
        for transfer in ready:
            self._not_before.pop(transfer.id, None)
            self._move(transfer, "start")
            if transfer.start_time_us is None:
                transfer.start_time_us = now_us()
            self.data_plane.start(transfer, destination, self.manifests[transfer.manifest_id])

    # -- user actions -----------------------------------------------------------------

    def suspend(self, transfer: Transfer) -> None:
        """Stop moving a transfer's data, keeping its progress."""
        self._stop(transfer, "suspend")

    def resume(self, transfer: Transfer) -> None:
        """Put a suspended or failed transfer back in its queue."""
        self._move(transfer, "resume")
        transfer.error_message = transfer.error_code = transfer.end_time_us = None
        self._changed(transfer)
        self.poke(transfer.destination_id)

    def cancel(self, transfer: Transfer) -> None:
        """End a transfer for good."""
        self._stop(transfer, "cancel")

    def fail(self, transfer: Transfer, message: str) -> None:
        """End a transfer in error with ``message``."""
        self._stop(transfer, "fail", message)

    def delete(self, transfer: Transfer) -> None:
        """Cancel a transfer if unfinished, and forget it."""
        if not transfer.status.ended:
            self._stop(transfer, "cancel")
        del self.transfers[transfer.id]

    def set_rate(self, transfer: Transfer, rate_kbps: int | None,
                 policy: str | None = None) -> None:
        """Change a transfer's rate limit and/or rate policy, at once if it runs."""
        if rate_kbps is not None:
            transfer.send_rate_max_kbps = rate_kbps
        if policy is not None:
            transfer.rate_policy = policy
        if transfer.status is TransferStatus.SENDING and self.data_plane is not None:
            self.data_plane.set_rate(transfer.id, self.effective_rate_kbps(transfer),
                                     self.effective_policy(transfer))
        self._changed(transfer)

    # -- reports from the data plane --------------------------------------------------

    def finished(self, transfer: Transfer, error_message: str | None = None) -> None:
        """The data plane is done with ``transfer``: complete, or failed with a message."""
        if transfer.status is not TransferStatus.SENDING:
            return  # already stopped by a user action
        if error_message is None:
            self._move(transfer, "complete")
        else:
            self._move(transfer, "fail", error_message)
        self.poke(transfer.destination_id)

    def requeue(self, transfer: Transfer, error_message: str,
                not_before: float = 0.0) -> None:
        """The peer is unreachable for now: back into the queue, to be retried after
        ``not_before`` (monotonic time)."""
        if transfer.status is TransferStatus.SENDING:
            self._not_before[transfer.id] = not_before
            self._move(transfer, "requeue")

    def progress(self, transfer: Transfer) -> None:
        """A transfer's counters changed (keep them)."""
        self._changed(transfer)

    # -- internals --------------------------------------------------------------------

    def _stop(self, transfer: Transfer, action: str, message: str | None = None) -> None:
        was_sending = transfer.status is TransferStatus.SENDING
        self._move(transfer, action, message)
        if was_sending and self.data_plane is not None:
            self.data_plane.stop(transfer.id)
        self.poke(transfer.destination_id)

    def _move(self, transfer: Transfer, action: str, message: str | None = None) -> None:
        transfer.status = TRANSFER.move(transfer.id, transfer.status, action)
        self._track(transfer)
        if transfer.status is TransferStatus.ERROR:
            transfer.error_message = message
            transfer.error_code = error_code(message)
        if transfer.status.ended:
            transfer.end_time_us = now_us()
            _log_outcome(transfer)
        self._changed(transfer)

    def _changed(self, transfer: Transfer) -> None:
        if self.on_change is not None:
            self.on_change(transfer)


def _log_outcome(transfer: Transfer) -> None:
    """One INFO line per ended transfer: outcome, bytes, time and rate."""
    start = transfer.start_time_us or transfer.create_time_us
    seconds = max(((transfer.end_time_us or start) - start) / 1e6, 1e-6)
    log.info("transfer %s %s: %d of %d bytes, %d bytes sent in %.1f s (%.1f Mbit/s)%s",
             transfer.id, transfer.status.value,
             transfer.total_bytes if transfer.status is TransferStatus.COMPLETE else 0,
             transfer.total_bytes, transfer.bytes_sent, seconds,
             transfer.bytes_sent * 8 / seconds / 1e6,
             f": {transfer.error_message}" if transfer.error_message else "",
             extra={"transferId": transfer.id, "outcome": transfer.status.value,
                    "bytesSent": transfer.bytes_sent, "seconds": round(seconds, 3)})


def error_code(message: str | None) -> str | None:
    """The stable code a receiver's refusal begins with (``token_expired: ...``), if
    one."""
    code = (message or "").partition(": ")[0]
    return code if code in ERROR_CODES and code != "auth_failed" else None
