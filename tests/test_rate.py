"""The rate policies of protocol/rate.py, driven by a synthetic path on an explicit clock:
what each does on random loss, on a filling queue, and with a rate limit. (How they share
a real bottleneck with TCP is measured in bench/, not asserted here.)"""

from __future__ import annotations

import pytest

from jetstream_server.protocol.rate import (
    CUBIC_PARAMETERS,
    ENSEMBLE_EVENT,
    ENSEMBLE_WAIT_S,
    LIMIT_MARGIN,
    SHARE_CUT,
    STARTUP_GAIN,
    Ensemble,
    RateController,
    RatePolicy,
)

DATAGRAM = 1500


class Path:
    """Feeds a controller ACKs every millisecond from a path delivering ``rate_bps`` with
    a round trip of ``rtt_s``; ``lose`` datagrams are reported lost per ACK."""

    def __init__(self, controller: RateController, rate_bps: float = 100e6) -> None:
        self.c = controller
        self.rate_bps = rate_bps
        self.now = self.received = 0.0
        self.sent = self.lost = 0

    def run(self, seconds: float, rtt_s: float, lose: int = 0, limited: bool = True) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.001
            self.received += self.rate_bps / 8 * 0.001
            self.sent += int(self.rate_bps / 8 * 0.001 / DATAGRAM) + 1
            self.lost += lose
            self.c.on_rtt(rtt_s, self.now)
            self.c.on_delivery(self.now, int(self.received), self.now, sent=self.sent,
                               lost=self.lost, limited=limited)


def _steady(policy: RatePolicy) -> tuple[RateController, Path]:
    """Out of start-up on a clean 100 Mbit/s, 20 ms path."""
    controller = RateController(policy, datagram_bytes=DATAGRAM)
    path = Path(controller)
    path.run(0.2, 0.020)
    path.run(0.2, 0.030)  # start-up sees the queue it built, and ends
    path.run(1.0, 0.020)
    assert not controller.startup
    return controller, path


@pytest.mark.parametrize("policy", [RatePolicy.FAIR, RatePolicy.HIGH])
def test_random_loss_leaves_the_window_alone_and_a_filling_queue_shrinks_it(
        policy: RatePolicy) -> None:
    controller, path = _steady(policy)
    before = controller.window_bytes()
    path.run(1.0, 0.020, lose=1)  # a loss every millisecond, the queue empty: random
    assert sum(controller.congestion_events.values()) == 0
    assert controller.window_bytes() >= before
    path.run(8.0, 0.020)  # the window grows while it holds the sender back
    grown = controller.window_bytes()
    assert grown > 1.8 * 100e6 / 8 * 0.020
    path.run(0.03, 0.040, lose=1)  # the round trip doubled: the queue overflows
    assert sum(controller.congestion_events.values()) == 1  # once a round trip, however many losses
    low, high = SHARE_CUT  # (toward the window a CUBIC flow averages at these events)
    assert low * grown * 0.99 <= controller.window_bytes() <= high * grown * 1.01


def test_high_gives_way_less_than_fair() -> None:
    assert CUBIC_PARAMETERS[RatePolicy.HIGH][0] > CUBIC_PARAMETERS[RatePolicy.FAIR][0]
    assert CUBIC_PARAMETERS[RatePolicy.HIGH][1] > CUBIC_PARAMETERS[RatePolicy.FAIR][1]


def test_after_a_loss_with_a_full_queue_the_next_filling_is_met_before_it_overflows(
        ) -> None:
    """Once losses showed where the queue overflows, the window gives way when the queue
    is nearly that full again, without waiting for losses (a paced flow loses few there);
    once a filling: not again until the queue has drained to half."""
    controller, path = _steady(RatePolicy.FAIR)
    path.run(0.03, 0.040, lose=1)  # the queue overflows at 20 ms above the minimum
    assert sum(controller.congestion_events.values()) == 1
    path.run(0.5, 0.039)  # it stays nearly full: no loss, and no second decrease
    assert sum(controller.congestion_events.values()) == 1
    path.run(0.3, 0.021)  # drained
    before = controller.window_bytes()
    path.run(0.3, 0.039)  # nearly full again: a decrease, no loss needed
    assert sum(controller.congestion_events.values()) == 2
    assert controller.window_bytes() < before


def test_low_yields_to_a_queue_and_takes_the_path_when_it_empties() -> None:
    controller = RateController(RatePolicy.LOW, datagram_bytes=DATAGRAM)
    assert not controller.startup  # low starts small and grows, without a start-up
    path = Path(controller)
    path.run(2.0, 0.020)
    alone = controller.pacing_bps()
    assert alone >= 100e6  # grows to what the path delivers (and a little above)
    path.run(1.0, 0.045)  # another flow fills the queue: 25 ms above the minimum
    assert controller.pacing_bps() <= 0.01 * alone
    path.run(1.0, 0.020)  # it went: back within a second
    assert controller.pacing_bps() >= 100e6


def test_low_halves_on_a_loss_with_a_queue_and_ignores_random_loss() -> None:
    controller = RateController(RatePolicy.LOW, datagram_bytes=DATAGRAM)
    path = Path(controller)
    path.run(2.0, 0.020)
    path.run(0.5, 0.020, lose=1)
    assert sum(controller.congestion_events.values()) == 0
    before = controller.low_bps
    path.run(0.01, 0.035, lose=1)  # 15 ms of queue (over half the path's delay): losses
    assert sum(controller.congestion_events.values()) == 1
    assert controller.low_bps <= before / 2


def test_fixed_holds_its_limit_whatever_the_path_says() -> None:
    controller = RateController(RatePolicy.FIXED, datagram_bytes=DATAGRAM)
    path = Path(controller, rate_bps=40e6)
    for rtt, lose in ((0.020, 0), (0.080, 5), (0.020, 50)):
        path.run(0.5, rtt, lose=lose)
        assert controller.pacing_bps(50e6) == 50e6 * LIMIT_MARGIN
        assert controller.window_bytes(50e6) >= 50e6 / 8 * rtt


def test_every_policy_stays_under_a_limit() -> None:
    for policy in RatePolicy:
        controller, _ = _steady(policy) if policy is not RatePolicy.LOW else \
            (RateController(policy), None)
        assert controller.pacing_bps(10e6) <= 10e6


def test_a_running_transfer_changes_policy_from_the_rate_it_has() -> None:
    controller, path = _steady(RatePolicy.FAIR)
    rate = controller.pacing_bps()
    controller.set_policy(RatePolicy.LOW, path.now)
    assert controller.pacing_bps() == pytest.approx(rate)
    path.run(0.5, 0.045)  # low gives way to a queue fair would sit in
    assert controller.pacing_bps() < rate / 10
    controller.set_policy(RatePolicy.FAIR, path.now)
    assert controller.window_bytes() > 0 and controller.policy is RatePolicy.FAIR


def _started(ensemble: Ensemble, rate_bps: float = 100e6) -> tuple[RateController, Path]:
    """A fair transfer of ``ensemble`` out of start-up on a clean 20 ms path."""
    controller = RateController(RatePolicy.FAIR, datagram_bytes=DATAGRAM)
    ensemble.add(controller)
    path = Path(controller, rate_bps)
    path.run(0.2, 0.020)
    path.run(0.2, 0.030)
    path.run(0.5, 0.020)
    assert not controller.startup
    return controller, path


def test_a_transfer_to_a_destination_others_send_to_takes_an_equal_part_of_their_window(
        ) -> None:
    """RFC 9040's ensemble sharing: no start-up of its own, and the others give way at
    once (through congestion events, CUBIC flows take many seconds to get there)."""
    ensemble = Ensemble()
    first, first_path = _started(ensemble)
    window = first.window_bytes()
    second = RateController(RatePolicy.FAIR, datagram_bytes=DATAGRAM)
    ensemble.add(second)
    second_path = Path(second, 50e6)
    second_path.now = first_path.now
    second_path.run(0.01, 0.020)
    assert not second.startup
    assert second.window_bytes() == pytest.approx(window / 2, rel=0.01)
    assert first.window_bytes() == pytest.approx(window / 2, rel=0.01)
    first_path.rate_bps = 50e6  # (each delivers half the path now)
    first_path.run(0.5, 0.020, limited=False)  # (past the losses of start-up's queue)
    second_path.run(0.5, 0.020, limited=False)
    # one path: an event of one is the other's too (each gives way by its own window)
    second_before = second.window_bytes()
    first_path.run(0.03, 0.040, lose=1)
    assert sum(first.congestion_events.values()) == 1
    assert second.congestion_events == {ENSEMBLE_EVENT: 1}
    assert second.window_bytes() < 0.9 * second_before
    assert 0.8 < second.window_bytes() / first.window_bytes() < 1.25
    # the first ends: the second takes its window
    before = second.window_bytes() + first.window_bytes()
    ensemble.remove(first, first_path.now)
    assert second.window_bytes() == pytest.approx(before)
    assert ensemble.members == [second] and first.ensemble is None


def _two_to_one_place() -> tuple[RateController, RateController]:
    """Two fair transfers of one ensemble, the first added first."""
    ensemble = Ensemble()
    first = RateController(RatePolicy.FAIR, datagram_bytes=DATAGRAM)
    second = RateController(RatePolicy.FAIR, datagram_bytes=DATAGRAM)
    ensemble.add(first)
    ensemble.add(second)
    return first, second


def test_a_transfer_waits_for_an_earlier_start_up_of_its_ensemble_then_shares() -> None:
    first, second = _two_to_one_place()
    first_path, second_path = Path(first), Path(second, 2e6)
    first_path.run(0.04, 0.020)
    second_path.now = first_path.now
    second_path.run(0.1, 0.020)  # the first is starting up: the second waits, not growing
    assert second.startup and second.waiting and second.gain == 1.0
    first_path.run(0.2, 0.030)
    assert not first.startup
    second_path.run(0.01, 0.020)  # the first is out: the second takes half its window
    assert not second.startup
    assert second.window_bytes() == pytest.approx(first.window_bytes(), rel=0.01)


def test_the_wait_for_another_start_up_is_bounded() -> None:
    first, second = _two_to_one_place()
    Path(first).run(0.05, 0.020)  # starts up, then nothing more is heard of it
    path = Path(second, 2e6)
    path.now = 0.05
    path.run(1.0, 0.020)
    assert second.waiting
    path.run(ENSEMBLE_WAIT_S - 0.99, 0.020)  # (just past the bound)
    assert not second.waiting and second.gain == STARTUP_GAIN


def test_low_and_fixed_transfers_are_not_in_an_ensemble() -> None:
    ensemble = Ensemble()
    for policy in (RatePolicy.LOW, RatePolicy.FIXED):
        ensemble.add(RateController(policy, datagram_bytes=DATAGRAM))
    assert ensemble.members == []
    fair, path = _started(ensemble)
    fair.set_policy(RatePolicy.LOW, path.now)  # (its window is no longer shared)
    assert ensemble.members == [] and fair.ensemble is None
