"""A transfer's progress as users read it: rates, time left, and each file's state.

The sending side samples the bytes the receiver has (:class:`RateMeter`) about once a
second; ``getTransferFiles`` reads each file's state from the blocks acknowledged
(:func:`files_progress`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..protocol.layout import Layout
from ..protocol.ranges import RangeSet
from .lifecycle import TransferStatus
from .objects import Manifest, Transfer

__all__ = ["RATE_WINDOW_S", "RateMeter", "files_progress", "intersect"]

#: The current rate is the rate over this many seconds.
RATE_WINDOW_S = 5.0


class RateMeter:
    """Bytes done over time: the rate over the last RATE_WINDOW_S, the average since the
    first sample (a resumed transfer's bytes from before do not count as this session's),
    and the time left at the current rate."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self._first: tuple[float, int] | None = None

    @property
    def empty(self) -> bool:
        """No sample yet."""
        return self._first is None

    def sample(self, now: float, done: int) -> None:
        """``done`` bytes at time ``now`` (seconds)."""
        if self._first is None:
            self._first = (now, done)
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()

    @staticmethod
    def _rate(since: tuple[float, int] | None, now: float, done: int) -> float:
        if since is None or now <= since[0]:
            return 0.0
        return (done - since[1]) / (now - since[0])

    def rates_kbps(self) -> tuple[int, int]:
        """(current, average) in kbit/s."""
        if not self._samples:
            return 0, 0
        now, done = self._samples[-1]
        return (round(self._rate(self._samples[0], now, done) * 8 / 1000),
                round(self._rate(self._first, now, done) * 8 / 1000))

    def seconds_left(self, remaining: int) -> float | None:
        """At the current rate; None when nothing moves."""
        current, _ = self.rates_kbps()
        if remaining <= 0:
            return 0.0
        return round(remaining * 8 / 1000 / current, 1) if current > 0 else None


def intersect(a: list[list[int]], b: list[tuple[int, int]]) -> list[list[int]]:
    """The [start, end) ranges in both ``a`` and ``b`` (each sorted and disjoint)."""
    out: list[list[int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append([start, end])
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def files_progress(transfer: Transfer, manifest: Manifest) -> list[dict[str, Any]]:
    """Each entry of the transfer's manifest: its paths and size, ``status`` (waiting,
    sending, sent: every block acknowledged, verified once the transfer is complete;
    complete; skipped: the receiver kept its file by the overwrite rule) and
    ``bytesComplete`` (bytes the receiver has)."""
    layout = Layout(transfer.block_size, 0, manifest.sizes)
    meta_blocks = transfer.total_blocks - layout.total_blocks  # (its metadata's blocks)
    done: dict[int, int] = {}
    acked = RangeSet()
    for start, end in transfer.acked_ranges:
        start, end = max(start - meta_blocks, 0), max(end - meta_blocks, 0)
        acked.add_range(start, end)
        for index, count in layout.data_bytes_by_file(start, end):
            done[index] = done.get(index, 0) + count
    skipped = RangeSet()
    for start, end in transfer.skipped or ():
        skipped.add_range(start, end)
    complete = transfer.status is TransferStatus.COMPLETE
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(manifest.files):
        if index in skipped:
            status, count = "skipped", entry.file_size
        elif complete:
            status, count = "complete", entry.file_size
        elif entry.is_empty_dir:
            status, count = "waiting", 0
        else:
            first, end = layout.file_range(index)
            has = acked.count_in(first, end)
            status = "sent" if has == end - first else "sending" if has else "waiting"
            count = done.get(index, 0)
        out.append({**entry.to_api(), "status": status, "bytesComplete": count})
    return out
