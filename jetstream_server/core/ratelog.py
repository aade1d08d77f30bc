"""Warnings an attacker can cause, logged at a bounded rate.

A flood of refused connections or failed logins must not flood the log (or the disk under
it). :class:`LimitedLog` writes at most ``burst`` lines of one kind per ``interval_s``;
the rest are counted, and the next line of that kind that is written says how many were
left out.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LimitedLog"]


class LimitedLog:
    """A logger's warnings of one kind, at most ``burst`` per ``interval_s``."""
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, burst: int = 5
                 ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        # kind -> (start of the current interval, lines written in it, lines left out)
        self._kinds: dict[str, tuple[float, int, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log a warning of ``kind`` unless too many went out lately."""
        now = time.monotonic()
        start, written, skipped = self._kinds.get(kind, (now, 0, 0))
        if now - start >= self.interval_s:
            start, written = now, 0
        if written >= self.burst:
            self._kinds[kind] = (start, written, skipped + 1)
            return
        if skipped:
            message += " (%d more like this not logged)"
            args = (*args, skipped)
        self._kinds[kind] = (start, written + 1, 0)
        self.logger.warning(message, *args)
