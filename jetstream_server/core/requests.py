"""Queued (``...Async``) requests: their records, status and results.

A record belongs to the user who queued it, so ``getRequestStatus`` and
``getRequestResult`` work from any connection of that user (the console opens one per
command). Finished records are kept for ``keep_s`` (one hour) and at most ``max_records``
are kept: when the bound is reached the oldest finished record is dropped, and if none has
finished the new request is refused with ``busy``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApiError, Busy, InternalError, NotFound
from .lifecycle import REQUEST, RequestStatus

__all__ = ["RequestBook", "RequestRecord"]


@dataclass
class RequestRecord:
    """A queued request: who asked, what, and how it ended."""
    request_id: int
    owner: str | None
    command: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: RequestStatus = RequestStatus.PENDING
    message: str = ""
    result: Any = None
    code: str | None = None
    finished_at: float | None = None

    def to_state(self) -> dict[str, Any]:
        """The record as stored."""
        return {"request_id": self.request_id, "owner": self.owner, "command": self.command,
                "status": self.status, "message": self.message, "result": self.result,
                "code": self.code}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RequestRecord:
        """The record stored by :meth:`to_state` (one that was running failed)."""
        record = cls(state["request_id"], state["owner"], state["command"])
        record.status, record.message = RequestStatus(state["status"]), state["message"]
        record.result, record.code = state["result"], state["code"]
        if record.status is RequestStatus.PENDING:  # the server stopped while it ran
            record.status = REQUEST.move(str(record.request_id), record.status, "fail")
            record.code = InternalError.code
            record.message = "The server restarted before the request finished."
        record.finished_at = time.monotonic()
        record.done.set()
        return record

    def to_api(self) -> dict[str, Any]:
        """What getRequestStatus answers."""
        return {
            "requestId": self.request_id,
            "command": self.command,
            "processing": not self.done.is_set(),
            "status": self.status,
            "errorMessage": self.message if self.status is RequestStatus.ERROR else None,
        }


class RequestBook:
    """The queued requests, their tasks and records (see the module's docstring)."""
    def __init__(self, keep_s: float = 3600.0, max_records: int = 10_000,
                 on_change: Callable[[RequestRecord], None] | None = None,
                 on_forget: Callable[[RequestRecord], None] | None = None) -> None:
        self.keep_s = keep_s
        self.max_records = max_records
        self.on_change = on_change
        self.on_forget = on_forget
        self._records: dict[int, RequestRecord] = {}
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, owner: str | None, command: str,
               run: Callable[[], Awaitable[tuple[str, Any]]]) -> RequestRecord:
        """Queue ``run``; its record, at once. Raises Busy when the book is full."""
        self._expire()
        if len(self._records) >= self.max_records:
            raise Busy(f"Too many queued requests ({self.max_records}); try again later.")
        record = RequestRecord(self._next_id, owner, command)
        self._next_id += 1
        self._records[record.request_id] = record
        self._changed(record)
        task = asyncio.get_running_loop().create_task(self._run(record, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def _run(self, record: RequestRecord,
                   run: Callable[[], Awaitable[tuple[str, Any]]]) -> None:
        action = "fail"
        try:
            record.message, record.result = await run()
            action = "succeed"
        except ApiError as exc:
            record.message, record.code = exc.message, exc.code
        except asyncio.CancelledError:
            record.message = "The server stopped before the request finished."
            record.code = InternalError.code
            raise
        except Exception as exc:  # a bug: report it, keep serving
            record.message, record.code = f"Internal error: {exc!r}", InternalError.code
        finally:
            record.status = REQUEST.move(str(record.request_id), record.status, action)
            record.finished_at = time.monotonic()
            record.done.set()
            self._changed(record)

    def _changed(self, record: RequestRecord) -> None:
        if self.on_change is not None:
            self.on_change(record)

    def restore(self, records: list[RequestRecord]) -> None:
        """Take the records kept from before a restart."""
        for record in records:
            self._records[record.request_id] = record
        self._next_id = max([self._next_id, *(r.request_id + 1 for r in records)])

    def get(self, request_id: int, visible: Callable[[str | None], bool]) -> RequestRecord:
        """The record of ``request_id`` if ``visible`` lets the session see it; NotFound
        otherwise."""
        record = self._records.get(request_id)
        if record is None or not visible(record.owner):
            raise NotFound(f"No request with id {request_id} (records are kept for one hour).")
        return record

    def _expire(self) -> None:
        now = time.monotonic()
        finished = [r for r in self._records.values() if r.finished_at is not None]
        for record in finished:
            assert record.finished_at is not None
            if now - record.finished_at > self.keep_s:
                self._forget(record)
        if len(self._records) >= self.max_records:
            for record in sorted(finished, key=lambda r: r.finished_at or 0.0):
                if len(self._records) < self.max_records:
                    break
                self._forget(record)

    def _forget(self, record: RequestRecord) -> None:
        if self._records.pop(record.request_id, None) is not None and self.on_forget:
            self.on_forget(record)

    async def close(self) -> None:
        """Cancel what still runs and wait for it."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
