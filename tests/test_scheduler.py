"""Transfer queues: per-destination order and the calls the data plane receives.

The data plane here records what it is told; the real one (UDP/TCP) plugs into the same
three calls.
"""

from __future__ import annotations

import random

from jetstream_server.core.ids import new_id
from jetstream_server.core.lifecycle import ManifestStatus, TransferStatus
from jetstream_server.core.objects import Destination, Manifest, Transfer
from jetstream_server.core.scheduler import Scheduler


class RecordingDataPlane:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def start(self, transfer: Transfer, destination: Destination, manifest: Manifest) -> None:
        self.calls.append(("start", transfer.id, destination.id))

    def stop(self, transfer_id: str) -> None:
        self.calls.append(("stop", transfer_id, None))

    def set_rate(self, transfer_id: str, rate_kbps: int, policy: str) -> None:
        self.calls.append(("rate", transfer_id, rate_kbps))


def _destination(rate: int = 0) -> Destination:
    return Destination(id=new_id(), owner="alice", create_time_us=0, user_data={},
                       address="h", host="h", ip="127.0.0.1", port=9,
                       send_rate_max_kbps=rate, data_transport="udp")


def _transfer(destination: Destination, manifest: Manifest, priority: int = 100) -> Transfer:
    return Transfer(id=new_id(), owner="alice", create_time_us=0, user_data={},
                    destination_id=destination.id, manifest_id=manifest.id,
                    destination_path=None, priority=priority, send_rate_max_kbps=None,
                    checkpoint_frequency_s=30, data_transport="udp", total_bytes=1,
                    total_files=1, block_size=1400, total_blocks=2)


def _setup() -> tuple[Scheduler, RecordingDataPlane, Destination, Destination, Manifest]:
    plane = RecordingDataPlane()
    a, b = _destination(rate=5000), _destination()
    manifest = Manifest(id=new_id(), owner="alice", create_time_us=0, user_data={},
                        status=ManifestStatus.COMPLETE)
    scheduler = Scheduler({}, {a.id: a, b.id: b}, {manifest.id: manifest}, plane)
    return scheduler, plane, a, b, manifest


def test_one_transfer_per_destination_runs_in_priority_then_age_order() -> None:
    scheduler, plane, a, b, manifest = _setup()
    first = _transfer(a, manifest)
    scheduler.enqueue(first)
    late_low = _transfer(a, manifest, priority=120)
    early_high = _transfer(a, manifest, priority=50)
    same_high = _transfer(a, manifest, priority=50)
    other_dest = _transfer(b, manifest)
    for transfer in (late_low, early_high, same_high, other_dest):
        scheduler.enqueue(transfer)
    assert [c[1] for c in plane.calls] == [first.id, other_dest.id]
    assert scheduler.queue(a.id) == [early_high, same_high, late_low]
    order = []
    for _ in range(3):
        running = next(t for t in scheduler.transfers.values()
                       if t.destination_id == a.id and t.status is TransferStatus.SENDING)
        scheduler.finished(running)
        assert running.status is TransferStatus.COMPLETE and running.end_time_us
        order.append(plane.calls[-1][1])
    assert order == [early_high.id, same_high.id, late_low.id]


def test_suspend_stops_the_flow_and_lets_the_next_one_run() -> None:
    scheduler, plane, a, _, manifest = _setup()
    first, second = _transfer(a, manifest), _transfer(a, manifest)
    scheduler.enqueue(first)
    scheduler.enqueue(second)
    scheduler.suspend(first)
    assert plane.calls[-2:] == [("stop", first.id, None), ("start", second.id, a.id)]
    scheduler.resume(first)
    assert first.status is TransferStatus.PENDING  # waits behind the running one
    scheduler.set_rate(second, 1234)
    assert plane.calls[-1] == ("rate", second.id, 1234)
    scheduler.cancel(second)
    assert plane.calls[-2:] == [("stop", second.id, None), ("start", first.id, a.id)]
    scheduler.finished(first, "peer refused: wrong password")
    assert first.status is TransferStatus.ERROR
    assert first.error_message == "peer refused: wrong password"


def test_a_requeued_transfer_keeps_its_place() -> None:
    scheduler, plane, a, _, manifest = _setup()
    first, second = _transfer(a, manifest), _transfer(a, manifest)
    scheduler.enqueue(first)
    scheduler.enqueue(second)
    scheduler.requeue(first, "unreachable")
    assert first.status is TransferStatus.PENDING
    assert scheduler.queue(a.id) == [first, second]
    scheduler.poke(a.id)
    assert plane.calls[-1] == ("start", first.id, a.id)


def test_the_destination_rate_applies_unless_the_transfer_sets_one() -> None:
    scheduler, _, a, _, manifest = _setup()
    transfer = _transfer(a, manifest)
    assert scheduler.effective_rate_kbps(transfer) == 5000
    transfer.send_rate_max_kbps = 0
    assert scheduler.effective_rate_kbps(transfer) == 0


def test_without_a_data_plane_transfers_wait_in_their_queue() -> None:
    scheduler, _, a, _, manifest = _setup()
    scheduler.data_plane = None
    transfer = _transfer(a, manifest)
    scheduler.enqueue(transfer)
    assert transfer.status is TransferStatus.PENDING
    assert scheduler.queue(a.id) == [transfer]


def test_a_retried_transfer_waits_for_its_timer_not_for_the_clock() -> None:
    scheduler, plane, a, _, manifest = _setup()
    transfer = _transfer(a, manifest)
    scheduler.enqueue(transfer)
    scheduler.requeue(transfer, "unreachable", not_before=float("inf"))
    scheduler.poke(a.id)
    assert transfer.status is TransferStatus.PENDING  # still waiting
    scheduler.retry_due(transfer)  # the timer fired
    assert transfer.status is TransferStatus.SENDING
    assert plane.calls[-1] == ("start", transfer.id, a.id)


def test_ten_thousand_queued_run_in_priority_then_age_order_across_suspends_and_restart(
        ) -> None:
    """The queue is a heap: 10,000 transfers in random priorities start one after the
    other in (priority, age) order, a suspended one is skipped until resumed (then it
    keeps its place), and a rebuilt scheduler (a restart) has the same order."""
    scheduler, plane, a, _, manifest = _setup()
    rng = random.Random(7)
    queued = [_transfer(a, manifest, priority=rng.randint(1, 9)) for _ in range(10_000)]
    for transfer in queued:
        scheduler.enqueue(transfer)
    expected = [queued[0], *sorted(queued[1:], key=lambda t: (t.priority, t.queue_seq))]
    paused = expected[5]
    scheduler.suspend(paused)
    scheduler.resume(paused)  # (two heap entries now: it is still started once)
    restarted = Scheduler(scheduler.transfers, scheduler.destinations,
                          scheduler.manifests, plane)
    restarted.restored()
    assert restarted.queue(a.id) == scheduler.queue(a.id) == expected[1:]
    started = []
    running = expected[0]
    for _ in range(len(queued) - 1):
        scheduler.finished(running)  # the one sending ends: the next starts
        (call,) = [c for c in plane.calls[-1:] if c[0] == "start"]
        running = scheduler.transfers[call[1]]
        started.append(running)
    assert started == expected[1:]
    assert scheduler.queue(a.id) == []


def test_a_destination_sends_as_many_at_once_as_the_server_allows() -> None:
    """--transfers-per-destination 3: three start at once, the fourth when one ends."""
    plane = RecordingDataPlane()
    a = _destination()
    manifest = Manifest(id=new_id(), owner="alice", create_time_us=0, user_data={},
                        status=ManifestStatus.COMPLETE)
    scheduler = Scheduler({}, {a.id: a}, {manifest.id: manifest}, plane, max_sending=3)
    queued = [_transfer(a, manifest) for _ in range(4)]
    for transfer in queued:
        scheduler.enqueue(transfer)
    assert [c[1] for c in plane.calls if c[0] == "start"] == [t.id for t in queued[:3]]
    assert queued[3].status is TransferStatus.PENDING
    scheduler.finished(queued[1])
    assert plane.calls[-1] == ("start", queued[3].id, a.id)
