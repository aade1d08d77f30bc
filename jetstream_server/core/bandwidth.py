"""Server-wide bandwidth limits: incoming and outgoing, borrowing, a weekly schedule, and
each running transfer's share. Arithmetic only: the time of day is passed in.

- :class:`Limits`: the four numbers as JetStream names them (kbit/s, 0: no limit).
- :class:`Window`: a schedule entry (days of the week, a time of day from and until, and
  the limits it sets); :func:`parse_schedule` reads the config file's entries.
- :class:`Bandwidth`: the limits in force (the base ones, or a schedule entry's), the
  flows of each direction, and the share each flow gets, told to it by a callback
  whenever it changes.

Borrowing: with ``borrowOutgoingRate``, the outgoing direction may use the incoming
limit too while no incoming transfer runs (and the other way round); when one starts,
its direction takes its limit back at once. Borrowing needs both limits set (an
unlimited direction has no share to lend). Shares: the flows of a direction with the
lowest ``priority`` value first, equally among them (a flow with its own lower cap
leaves the rest to the others); a flow left with nothing gets MIN_SHARE_KBPS, enough to
stay alive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DAYS", "KEYS", "MIN_SHARE_KBPS", "Bandwidth", "Flow", "Limits", "Window",
           "check_limit", "parse_schedule", "share"]

#: The API's keys of the limits (updateBandwidthLimits, getServerInfo.bandwidthLimits)
#: and the settings that set them.
KEYS = {"incomingRateLimit": "incoming_rate_limit", "outgoingRateLimit": "outgoing_rate_limit",
        "borrowIncomingRate": "borrow_incoming_rate",
        "borrowOutgoingRate": "borrow_outgoing_rate"}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: What a flow gets when higher-priority flows take the whole limit (kbit/s).
MIN_SHARE_KBPS = 256
#: The highest limit (100 Gbit/s, as sendRateMax).
MAX_KBPS = 100_000_000


@dataclass(frozen=True)
class Limits:
    """Server-wide limits, kbit/s (0: none); borrowing of the other direction's limit."""
    incoming_rate_limit: int = 0
    outgoing_rate_limit: int = 0
    borrow_incoming_rate: bool = False
    borrow_outgoing_rate: bool = False

    def to_api(self) -> dict[str, Any]:
        """The four limits under their API keys."""
        return {key: getattr(self, attr) for key, attr in KEYS.items()}


@dataclass(frozen=True)
class Window:
    """A schedule entry: on ``days`` (0 = Monday), from ``start`` until ``end`` (minutes
    after midnight; an end before the start runs past midnight), these limits replace
    the base ones (the keys it does not name keep theirs)."""
    days: frozenset[int]
    start: int
    end: int
    changes: dict[str, Any] = field(hash=False)

    def covers(self, when: dt.datetime) -> bool:
        """Whether the entry is in force at ``when`` (local time)."""
        minute = when.hour * 60 + when.minute
        if self.start < self.end:
            return when.weekday() in self.days and self.start <= minute < self.end
        # past midnight: the evening of a listed day, or the morning after it
        return (when.weekday() in self.days and minute >= self.start) or \
            ((when.weekday() - 1) % 7 in self.days and minute < self.end)

    def to_api(self) -> dict[str, Any]:
        """The entry as bandwidthLimits shows it (the API keys of the limits it sets)."""
        return {"days": [DAYS[d] for d in sorted(self.days)],
                "from": f"{self.start // 60:02d}:{self.start % 60:02d}",
                "until": f"{self.end // 60:02d}:{self.end % 60:02d}",
                **{key: self.changes[attr] for key, attr in KEYS.items()
                   if attr in self.changes}}


def _minutes(text: Any, name: str) -> int:
    try:
        hours, minutes = str(text).split(":")
        value = int(hours) * 60 + int(minutes)
        if not (0 <= int(hours) <= 24 and 0 <= int(minutes) < 60 and value <= 24 * 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} must be a time of day HH:MM, not {text!r}") from None
    return value


def check_limit(value: Any, name: str) -> int:
    """A limit in kbit/s (0: none); ValueError saying why if it is not one."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_KBPS:
        raise ValueError(f"{name} is in kbit/s: a whole number from 0 (no limit) to "
                         f"{MAX_KBPS}")
    return value


def parse_schedule(entries: Iterable[Any]) -> tuple[Window, ...]:
    """The config file's ``[[bandwidth-schedule]]`` tables as windows; ValueError saying
    what is wrong with the first bad one. Each has ``days`` (names such as "mon", or
    "weekdays", "weekend", "daily"), ``from`` and ``until`` (HH:MM) and one or more of
    the four limits (``outgoing-rate-limit = 50000``, ...)."""
    groups = {"weekdays": range(5), "weekend": (5, 6), "daily": range(7)}
    windows = []
    for n, entry in enumerate(entries, 1):
        where = f"bandwidth-schedule entry {n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a table")
        entry = {k.replace("_", "-"): v for k, v in entry.items()}
        known = {"days", "from", "until", "incoming-rate-limit", "outgoing-rate-limit",
                 "borrow-incoming-rate", "borrow-outgoing-rate"}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(known))})")
        names = entry.get("days", "daily")
        days: set[int] = set()
        for name in [names] if isinstance(names, str) else names:
            name = str(name).lower()[:3] if str(name).lower() not in groups else str(name)
            if name in groups:
                days.update(groups[name])
            elif name in DAYS:
                days.add(DAYS.index(name))
            else:
                raise ValueError(f"{where}: days are mon..sun, weekdays, weekend or daily, "
                                 f"not {name!r}")
        if "from" not in entry or "until" not in entry:
            raise ValueError(f"{where} needs from and until (HH:MM)")
        start, end = _minutes(entry["from"], f"{where}: from"), \
            _minutes(entry["until"], f"{where}: until")
        if start == end:
            raise ValueError(f"{where}: from and until are the same time")
        changes: dict[str, Any] = {}
        for key in ("incoming-rate-limit", "outgoing-rate-limit"):
            if key in entry:
                changes[key.replace("-", "_")] = check_limit(entry[key], f"{where}: {key}")
        for key in ("borrow-incoming-rate", "borrow-outgoing-rate"):
            if key in entry:
                if not isinstance(entry[key], bool):
                    raise ValueError(f"{where}: {key} must be true or false")
                changes[key.replace("-", "_")] = entry[key]
        if not changes:
            raise ValueError(f"{where} sets no limit")
        windows.append(Window(frozenset(days), start, end % (24 * 60), changes))
    return tuple(windows)


@dataclass
class Flow:
    """A running transfer in one direction: its priority (lower first), its own cap
    (kbit/s, 0: none) and whom to tell its share (kbit/s, 0: no limit)."""
    priority: int
    cap_kbps: int
    tell: Callable[[int], None]
    share_kbps: int | None = None  # what it was last told


class Bandwidth:
    """The limits in force and each flow's share of them (see the module's docstring)."""

    def __init__(self, base: Limits, schedule: tuple[Window, ...] = (),
                 now: dt.datetime | None = None) -> None:
        self.base = base
        self.schedule = schedule
        self._flows: dict[str, dict[object, Flow]] = {"in": {}, "out": {}}
        self._now = now or dt.datetime.now()

    @property
    def active_window(self) -> Window | None:
        """The schedule entry in force (the first that covers the time), if any."""
        return next((w for w in self.schedule if w.covers(self._now)), None)

    @property
    def limits(self) -> Limits:
        """The limits in force now."""
        window = self.active_window
        return self.base if window is None else replace(self.base, **window.changes)

    def caps(self) -> tuple[int, int]:
        """(incoming, outgoing) limits for the flows now, borrowing included."""
        limits = self.limits
        incoming, outgoing = limits.incoming_rate_limit, limits.outgoing_rate_limit
        if incoming and outgoing:
            if limits.borrow_outgoing_rate and not self._flows["in"]:
                outgoing += incoming
            if limits.borrow_incoming_rate and not self._flows["out"]:
                incoming += outgoing
        return incoming, outgoing

    def to_api(self) -> dict[str, Any]:
        """getServerInfo's bandwidthLimits: the limits in force, the schedule and the
        entry in force."""
        window = self.active_window
        return {**self.limits.to_api(), "schedule": [w.to_api() for w in self.schedule],
                "activeSchedule": None if window is None else self.schedule.index(window)}

    def set_base(self, base: Limits) -> None:
        """New base limits (updateBandwidthLimits): applied to running flows at once."""
        self.base = base
        self._allocate()

    def tick(self, now: dt.datetime) -> None:
        """The time of day now: at a schedule boundary, the flows get new shares."""
        self._now = now
        self._allocate()

    def next_boundary(self, now: dt.datetime) -> dt.datetime:
        """The next minute a schedule entry starts or ends (a day from now, at most)."""
        marks = {w.start for w in self.schedule} | {w.end for w in self.schedule}
        base = now.replace(second=0, microsecond=0)
        for step in range(1, 24 * 60 + 1):
            when = base + dt.timedelta(minutes=step)
            if when.hour * 60 + when.minute in marks:
                return when
        return base + dt.timedelta(days=1)

    def join(self, direction: str, key: object, tell: Callable[[int], None], *,
             priority: int = 0, cap_kbps: int = 0) -> None:
        """A flow starts (``direction`` "in" or "out"); every flow's share is updated."""
        self._flows[direction][key] = Flow(priority, cap_kbps, tell)
        self._allocate()

    def change(self, direction: str, key: object, *, cap_kbps: int) -> None:
        """A flow's own cap changed."""
        flow = self._flows[direction].get(key)
        if flow is not None:
            flow.cap_kbps = cap_kbps
            self._allocate()

    def leave(self, direction: str, key: object) -> None:
        """A flow ended."""
        if self._flows[direction].pop(key, None) is not None:
            self._allocate()

    def _allocate(self) -> None:
        for direction, total in zip(("in", "out"), self.caps(), strict=True):
            flows = self._flows[direction]
            shares = share(total, list(flows.values()))
            for flow, kbps in zip(flows.values(), shares, strict=True):
                if kbps != flow.share_kbps:
                    flow.share_kbps = kbps
                    flow.tell(kbps)


def share(total_kbps: int, flows: list[Flow]) -> list[int]:
    """Each flow's share of ``total_kbps`` (0: no limit; then each is held to its own
    cap only): by priority, lower values first; equally within a priority, a flow capped
    lower than its equal share leaving the rest to the others (max-min fairness)."""
    if not total_kbps:
        return [0 for _ in flows]
    result = [0] * len(flows)
    remaining = float(total_kbps)
    for priority in sorted({f.priority for f in flows}):
        group = sorted((i for i, f in enumerate(flows) if f.priority == priority),
                       key=lambda i: flows[i].cap_kbps or float("inf"))
        for n, i in enumerate(group):
            equal = remaining / (len(group) - n)
            got = min(flows[i].cap_kbps or equal, equal)
            result[i] = max(int(got), MIN_SHARE_KBPS)
            remaining = max(remaining - got, 0.0)
    return result
