"""A set of integers kept as sorted, disjoint, non-adjacent half-open ranges.

Both ends of a transfer keep one: the receiver for the blocks it has, the sender for the
blocks acknowledged. Adding at the end of the last range (in-order arrival, the common
case) is O(1); elsewhere it is a binary search and a list insertion.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["RangeSet"]


class RangeSet:
    """A set of integers (block numbers) kept as sorted, disjoint [start, end) ranges."""
    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    @property
    def end(self) -> int:
        """One past the largest value (0 when empty)."""
        return self._ends[-1] if self._ends else 0

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def add(self, value: int) -> bool:
        """Add one value; False if it was already there."""
        ends = self._ends
        if ends and ends[-1] == value:  # the fast path: in order
            ends[-1] = value + 1
            self.count += 1
            return True
        return bool(self.add_range(value, value + 1))

    def add_range(self, start: int, end: int) -> list[tuple[int, int]]:
        """Add [start, end); return the sub-ranges that were not there before."""
        if start >= end:
            return []
        starts, ends = self._starts, self._ends
        if not ends or start >= ends[-1]:  # at or after the end, as in-order data comes
            if ends and start == ends[-1]:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
            self.count += end - start
            return [(start, end)]
        i = bisect_right(starts, start) - 1
        if i >= 0 and ends[i] >= start:
            first = i  # merges with the range at i
        else:
            first = i + 1
        new: list[tuple[int, int]] = []
        cursor = start
        j = first
        while j < len(starts) and starts[j] <= end:
            if starts[j] > cursor:
                new.append((cursor, starts[j]))
            cursor = max(cursor, ends[j])
            j += 1
        if cursor < end:
            new.append((cursor, end))
        if not new:
            return []
        merged_start = min(start, starts[first]) if first < j else start
        merged_end = max(end, ends[j - 1]) if first < j else end
        starts[first:j] = [merged_start]
        ends[first:j] = [merged_end]
        self.count += sum(e - s for s, e in new)
        return new

    def first_missing(self, floor: int = 0) -> int:
        """The smallest value >= floor that is not in the set."""
        i = bisect_right(self._starts, floor) - 1
        if i >= 0 and floor < self._ends[i]:
            return self._ends[i]
        return floor

    def ranges_from(self, floor: int, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ranges, clipped to start at ``floor`` or above."""
        i = max(bisect_right(self._starts, floor) - 1, 0)
        out: list[tuple[int, int]] = []
        while i < len(self._starts) and len(out) < limit:
            start, end = self._starts[i], self._ends[i]
            if end > floor:
                out.append((max(start, floor), end))
            i += 1
        return out

    def count_in(self, start: int, end: int) -> int:
        """How many values of [start, end) are in the set."""
        return (end - start) - sum(e - s for s, e in self.missing(start, end))

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, in order."""
        return list(zip(self._starts, self._ends, strict=True))

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The sub-ranges of [start, end) not in the set."""
        out: list[tuple[int, int]] = []
        cursor = start
        for s, e in self.ranges_from(start, len(self._starts)):
            if s >= end:
                break
            if s > cursor:
                out.append((cursor, s))
            cursor = max(cursor, e)
        if cursor < end:
            out.append((cursor, end))
        return out
