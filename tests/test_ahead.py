"""Making things ahead of their use in a thread of their own (the receiver's files)."""

from __future__ import annotations

import threading

import pytest

from jetstream_server.dataplane.ahead import Ahead

pytestmark = pytest.mark.timeout(30)


def test_each_item_is_made_once_here_or_by_the_caller() -> None:
    made: list[int] = []
    ahead = Ahead(range(200), lambda i: made.append(i) or i * 10, limit=3)
    ahead.start()
    by_caller = []
    for i in range(200):
        got = ahead.take(i)  # made here (waited for while being made), or not yet reached
        if got is None:
            by_caller.append(i)
        else:
            assert got == i * 10
    assert ahead.stop() == {}
    assert sorted(made + by_caller) == list(range(200))  # each once, one way or the other
    assert made == sorted(made)  # in order
    assert ahead.take(3) is None  # taken already: never made again


def test_no_more_than_the_limit_is_made_ahead() -> None:
    made: list[int] = []
    ahead = Ahead(range(100), lambda i: made.append(i) or i, limit=4)
    ahead.start()
    for _ in range(100):
        if len(made) >= 4:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)
    assert made == [0, 1, 2, 3]
    assert ahead.take(0) == 0 and ahead.stop() == {1: 1, 2: 2, 3: 3}


def test_an_item_the_caller_made_is_skipped_and_what_was_not_taken_is_returned() -> None:
    gate = threading.Event()

    def make(i: int) -> int:
        gate.wait(10)
        return i

    ahead = Ahead(range(6), make, limit=2)
    assert ahead.take(1) is None  # claimed before the thread starts: never made there
    ahead.start()
    gate.set()
    assert ahead.take(0) == 0
    assert ahead.take(2) == 2
    left = ahead.stop()
    assert 1 not in left and set(left) <= {3, 4, 5} and len(left) <= 2


def test_an_exception_goes_to_whoever_takes_the_item_and_making_stops() -> None:
    def make(i: int) -> int:
        if i == 2:
            raise OSError("no room")
        return i

    ahead = Ahead(range(5), make, limit=10)
    ahead.start()
    assert ahead.take(0) == 0 and ahead.take(1) == 1
    error = ahead.take(2)
    assert isinstance(error, OSError) and str(error) == "no room"
    assert ahead.take(3) is None  # not made after the failure: the caller tries itself
    assert ahead.stop() == {}
