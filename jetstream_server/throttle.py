"""Slowing down repeated failed logins, sans-I/O (time is passed in).

Failures are counted per client address and per user name (whether or not the name
exists, so the delay reveals nothing). Before a password is checked, the caller waits
``delay_s``: nothing for the first attempt, then 0.25 s doubling per recent failure up to
8 s. A success clears the counters for that address and name; counters are forgotten
15 minutes after the last failure. At most ``max_keys`` counters are kept; the oldest is
dropped when that bound is reached.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(
        self,
        base_delay_s: float = 0.25,
        max_delay_s: float = 8.0,
        forget_after_s: float = 900.0,
        max_keys: int = 10_000,
    ) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_keys = max_keys
        # key -> (failures, time of the last failure)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay_s(self, address: str, user: str, now: float) -> float:
        count = max(self._count(f"addr:{address}", now), self._count(f"user:{user}", now))
        if count == 0:
            return 0.0
        return float(min(self.base_delay_s * (2 ** (count - 1)), self.max_delay_s))

    def failed(self, address: str, user: str, now: float) -> None:
        for key in (f"addr:{address}", f"user:{user}"):
            count = self._count(key, now)
            self._failures[key] = (count + 1, now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, address: str, user: str) -> None:
        self._failures.pop(f"addr:{address}", None)
        self._failures.pop(f"user:{user}", None)

    def _count(self, key: str, now: float) -> int:
        entry = self._failures.get(key)
        if entry is None:
            return 0
        if now - entry[1] > self.forget_after_s:
            del self._failures[key]
            return 0
        return entry[0]
