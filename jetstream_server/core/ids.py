"""Identifiers and timestamps as the API shows them."""

from __future__ import annotations

import secrets
import time

__all__ = ["new_id", "now_us"]


def new_id() -> str:
    """A new object id: 32 lowercase hex characters."""
    return secrets.token_hex(16)


def now_us() -> int:
    """Now, as integer microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000
