"""Server-wide limits, borrowing, the schedule and the shares of running transfers: the
arithmetic of core/bandwidth.py, with the time of day passed in (no clock, no sockets)."""

from __future__ import annotations

import datetime as dt

import pytest

from jetstream_server.core.bandwidth import (
    MIN_SHARE_KBPS,
    Bandwidth,
    Flow,
    Limits,
    parse_schedule,
    share,
)

MONDAY = dt.datetime(2026, 12, 7)  # a Monday
assert MONDAY.weekday() == 0


def _flow(priority: int = 100, cap: int = 0) -> Flow:
    return Flow(priority, cap, lambda _: None)


class Told:
    """Records what each flow was told, as the data plane's callback would apply it."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}

    def __call__(self, name: str):  # type: ignore[no-untyped-def]
        def tell(kbps: int) -> None:
            self.now[name] = kbps
        return tell


def test_a_limit_is_shared_equally_within_a_priority_and_by_priority_across() -> None:
    assert share(0, [_flow(), _flow()]) == [0, 0]  # no limit: none told
    assert share(90_000, [_flow(), _flow(), _flow()]) == [30_000] * 3
    # a flow capped below its equal share leaves the rest to the others
    assert share(90_000, [_flow(cap=10_000), _flow(), _flow()]) == [10_000, 40_000, 40_000]
    # lower priority values first; what they leave goes to the next
    assert share(90_000, [_flow(200), _flow(50, cap=20_000), _flow(50, cap=30_000)]) == \
        [40_000, 20_000, 30_000]
    # a flow left with nothing still gets enough to stay alive
    assert share(90_000, [_flow(200), _flow(50)]) == [MIN_SHARE_KBPS, 90_000]


def test_borrowing_as_jetstreams_example_says() -> None:
    """200 in and 300 out with borrowing: outgoing uses all 500 while nothing comes in;
    an incoming transfer takes its 200 back at once; when it ends, outgoing has 500
    again. Without borrowing, outgoing keeps 300."""
    told = Told()
    bandwidth = Bandwidth(Limits(200_000, 300_000, borrow_outgoing_rate=True), now=MONDAY)
    bandwidth.join("out", "send", told("send"))
    assert told.now == {"send": 500_000}
    bandwidth.join("in", "recv", told("recv"))
    assert told.now == {"send": 300_000, "recv": 200_000}
    bandwidth.leave("in", "recv")
    assert told.now["send"] == 500_000
    bandwidth.set_base(Limits(200_000, 300_000))  # borrowing off, at run time
    assert told.now["send"] == 300_000
    # the other way round: incoming borrows while nothing is sent
    bandwidth.set_base(Limits(200_000, 300_000, borrow_incoming_rate=True))
    bandwidth.leave("out", "send")
    bandwidth.join("in", "recv", told("recv"))
    assert told.now["recv"] == 500_000
    # an unlimited direction has nothing to lend
    bandwidth.set_base(Limits(0, 300_000, borrow_incoming_rate=True,
                              borrow_outgoing_rate=True))
    assert told.now["recv"] == 0


def test_two_incoming_transfers_share_the_incoming_limit_and_changes_apply_at_once() -> None:
    told = Told()
    bandwidth = Bandwidth(Limits(incoming_rate_limit=60_000), now=MONDAY)
    bandwidth.join("in", 1, told("a"))
    assert told.now == {"a": 60_000}
    bandwidth.join("in", 2, told("b"))
    assert told.now == {"a": 30_000, "b": 30_000}
    bandwidth.set_base(Limits(incoming_rate_limit=20_000))
    assert told.now == {"a": 10_000, "b": 10_000}
    bandwidth.set_base(Limits())
    assert told.now == {"a": 0, "b": 0}  # no limit any more
    bandwidth.change("out", 1, cap_kbps=5)  # (not an outgoing flow: nothing happens)


def test_the_outgoing_share_follows_priorities_and_each_transfers_own_limit() -> None:
    told = Told()
    bandwidth = Bandwidth(Limits(outgoing_rate_limit=100_000), now=MONDAY)
    bandwidth.join("out", "a", told("a"), priority=100)
    bandwidth.join("out", "b", told("b"), priority=100, cap_kbps=20_000)
    assert told.now == {"a": 80_000, "b": 20_000}
    bandwidth.join("out", "urgent", told("urgent"), priority=1)
    assert told.now == {"a": MIN_SHARE_KBPS, "b": MIN_SHARE_KBPS, "urgent": 100_000}
    bandwidth.change("out", "urgent", cap_kbps=40_000)  # setSendRate on it
    assert told.now == {"a": 40_000, "b": 20_000, "urgent": 40_000}


def test_a_schedule_applies_at_its_boundaries_and_shows_in_force() -> None:
    """50 Mbit/s out on weekdays 08:00-18:00, unlimited otherwise; and 10 Mbit/s in from
    22:00 to 06:00 every night (past midnight)."""
    schedule = parse_schedule([
        {"days": "weekdays", "from": "08:00", "until": "18:00",
         "outgoing-rate-limit": 50_000},
        {"days": ["daily"], "from": "22:00", "until": "06:00", "incoming_rate_limit": 10_000},
    ])
    told = Told()
    bandwidth = Bandwidth(Limits(), schedule, now=MONDAY.replace(hour=7, minute=59))
    bandwidth.join("out", "t", told("t"))
    assert told.now == {"t": 0}
    assert bandwidth.next_boundary(MONDAY.replace(hour=7, minute=59, second=30)) == \
        MONDAY.replace(hour=8)
    bandwidth.tick(MONDAY.replace(hour=8))
    assert told.now == {"t": 50_000}
    api = bandwidth.to_api()
    assert api["outgoingRateLimit"] == 50_000 and api["activeSchedule"] == 0
    assert api["schedule"][0] == {"days": ["mon", "tue", "wed", "thu", "fri"],
                                  "from": "08:00", "until": "18:00",
                                  "outgoingRateLimit": 50_000}
    bandwidth.tick(MONDAY.replace(hour=18))
    assert told.now == {"t": 0} and bandwidth.to_api()["activeSchedule"] is None
    saturday = MONDAY + dt.timedelta(days=5)
    bandwidth.tick(saturday.replace(hour=10))
    assert told.now == {"t": 0}
    bandwidth.tick(saturday.replace(hour=23))
    assert bandwidth.limits.incoming_rate_limit == 10_000
    bandwidth.tick((saturday + dt.timedelta(days=1)).replace(hour=5, minute=59))  # Sunday
    assert bandwidth.limits.incoming_rate_limit == 10_000
    bandwidth.tick((saturday + dt.timedelta(days=1)).replace(hour=6))
    assert bandwidth.limits.incoming_rate_limit == 0


@pytest.mark.parametrize(("entry", "message"), [
    ({"days": "someday", "from": "08:00", "until": "09:00", "outgoing-rate-limit": 1},
     "days are mon..sun"),
    ({"from": "8am", "until": "09:00", "outgoing-rate-limit": 1}, "time of day HH:MM"),
    ({"from": "08:00", "until": "09:00"}, "sets no limit"),
    ({"until": "09:00", "outgoing-rate-limit": 1}, "needs from and until"),
    ({"from": "08:00", "until": "08:00", "outgoing-rate-limit": 1}, "the same time"),
    ({"from": "08:00", "until": "09:00", "outgoing-rate-limit": -5}, "kbit/s"),
    ({"from": "08:00", "until": "09:00", "outgoing-rate-limt": 5}, "unknown key"),
    ({"from": "08:00", "until": "09:00", "borrow-outgoing-rate": "yes"}, "true or false"),
])
def test_a_bad_schedule_entry_says_what_is_wrong(entry: dict[str, object],
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule([entry])
