"""Make things ahead of their use, in a thread of their own (the receiver's temporary files).

Creating a file costs the kernel from a few to a few hundred microseconds, depending on
the file system's state; with many small files that alone can bound a transfer. An
:class:`Ahead` makes the next items of a known order while the caller's thread does the
rest of the work (writing, hashing, renaming), at most ``limit`` made and not yet taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["Ahead"]

T = TypeVar("T")


class Ahead(Generic[T]):
    """``make(item)`` for each item of ``order``, in order, in one thread. ``take(item)``
    returns what was made for it (waiting while it is being made), the exception making it
    raised, or None when it was not made (the caller makes it; it is then never made
    here). :meth:`stop` ends the thread and returns what was made and not taken."""

    def __init__(self, order: Iterable[int], make: Callable[[int], T], limit: int) -> None:
        self._order = order
        self._make = make
        self._limit = limit
        self._cond = threading.Condition()
        self._made: dict[int, T | Exception] = {}
        self._claimed: set[int] = set()
        self._making: int | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="jetstream-ahead", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for item in self._order:
            with self._cond:
                while not self._stopped and len(self._made) >= self._limit:
                    self._cond.wait()
                if self._stopped:
                    return
                if item in self._claimed:
                    continue
                self._claimed.add(item)
                self._making = item
            result: T | Exception
            try:
                result = self._make(item)
            except Exception as exc:  # given to whoever takes the item
                result = exc
            with self._cond:
                self._made[item] = result
                self._making = None
                self._cond.notify_all()
            if isinstance(result, Exception):
                return  # what follows would most likely fail alike: the caller makes it

    def take(self, item: int) -> T | Exception | None:
        with self._cond:
            while self._making == item:
                self._cond.wait()
            if item in self._made:
                self._cond.notify_all()  # room for one more
                return self._made.pop(item)
            self._claimed.add(item)
            return None

    def stop(self) -> dict[int, T]:
        """End the thread (after the item being made); what was made and not taken."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join()
        made, self._made = self._made, {}
        return {item: m for item, m in made.items() if not isinstance(m, Exception)}
