"""One throttle for every way of logging in (API ``auth``, transfer logins on the data
port), sans-I/O: time is passed in.

Failures are counted per client address and per user name (whether or not the name
exists, so the delay reveals nothing). An attempt is checked only when both its address
and its name allow it, and it waits *before* it is checked, so attempts made at the same
time wait in line instead of being checked together:

- while another attempt of the same address or name is being checked, it waits for it;
- after ``n`` recent failures, it waits until ``0.25 s x 2^(n-1)`` (at most 8 s) after the
  last one.

So 50 concurrent guesses take as long as 50 made one after another. A success clears the
counters of its address and name; counters are forgotten 15 minutes after the last
failure, and at most ``max_keys`` are kept (the oldest idle one is dropped). At most
``max_waiting`` attempts may wait for one address or name; more are refused at once,
unchecked (the caller says "too many login attempts").

Use: :meth:`join` (False: refused), then :meth:`wait_s` until it is 0, :meth:`begin`,
check the password, :meth:`end` with the outcome, and :meth:`leave` (whatever happened).
A caller that checks at once (no waiting possible) may skip join and leave.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["LoginThrottle"]

#: How soon to ask again while another attempt of the same address or name is checked.
BUSY_WAIT_S = 0.02


@dataclass
class _Key:
    failures: int = 0
    last_failure: float = 0.0
    checking: int = 0
    waiting: int = 0


class LoginThrottle:
    """Failed logins per address and per name, and how long the next must wait."""
    def __init__(
        self,
        base_delay_s: float = 0.25,
        max_delay_s: float = 8.0,
        forget_after_s: float = 900.0,
        max_keys: int = 10_000,
        max_waiting: int = 64,
    ) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_keys = max_keys
        self.max_waiting = max_waiting
        self._keys: OrderedDict[str, _Key] = OrderedDict()  # least recently failed first

    def delay_s(self, failures: int) -> float:
        """The wait after ``failures`` recent failures, counted from the last one."""
        if failures == 0:
            return 0.0
        return float(min(self.base_delay_s * 2 ** (failures - 1), self.max_delay_s))

    def join(self, address: str, user: str, now: float) -> bool:
        """An attempt starts waiting its turn; False (and not counted) when too many wait."""
        keys = self._pair(address, user, now)
        if any(k.waiting >= self.max_waiting for k in keys):
            self._drop_idle(address, user)
            return False
        for key in keys:
            key.waiting += 1
        return True

    def leave(self, address: str, user: str) -> None:
        """An attempt that :meth:`join` let in stops waiting (whatever happened)."""
        for name in _names(address, user):
            key = self._keys.get(name)
            if key is not None and key.waiting:
                key.waiting -= 1
        self._drop_idle(address, user)

    def wait_s(self, address: str, user: str, now: float) -> float:
        """How long the attempt must still wait before it is checked; 0: check it now."""
        wait = 0.0
        for name in _names(address, user):
            key = self._keys.get(name)
            if key is None:
                continue
            if key.checking:
                wait = max(wait, BUSY_WAIT_S)
            if key.failures and now - key.last_failure <= self.forget_after_s:
                wait = max(wait, key.last_failure + self.delay_s(key.failures) - now)
        return wait

    def begin(self, address: str, user: str, now: float) -> None:
        """The attempt is being checked: others of its address or name wait for it."""
        for key in self._pair(address, user, now):
            key.checking += 1

    def end(self, address: str, user: str, ok: bool, now: float) -> None:
        """The attempt's outcome."""
        for name, key in zip(_names(address, user), self._pair(address, user, now),
                             strict=True):
            key.checking = max(key.checking - 1, 0)
            if ok:
                key.failures = 0
            else:
                key.failures += 1
                key.last_failure = now
                self._keys.move_to_end(name)
        self._drop_idle(address, user)
        while len(self._keys) > self.max_keys:  # the least recently failed go first
            name, key = next(iter(self._keys.items()))
            if key.checking or key.waiting:
                break
            del self._keys[name]

    def _pair(self, address: str, user: str, now: float) -> tuple[_Key, _Key]:
        first, second = (self._key(name, now) for name in _names(address, user))
        return first, second

    def _key(self, name: str, now: float) -> _Key:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = _Key()
        elif key.failures and now - key.last_failure > self.forget_after_s:
            key.failures = 0
        return key

    def _drop_idle(self, address: str, user: str) -> None:
        """Forget the two keys if nothing is counted or waiting on them."""
        for name in _names(address, user):
            key = self._keys.get(name)
            if key is not None and not (key.failures or key.checking or key.waiting):
                del self._keys[name]


def _names(address: str, user: str) -> tuple[str, str]:
    return f"addr:{address}", f"user:{user}"
