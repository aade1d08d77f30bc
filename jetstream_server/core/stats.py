"""What happened since the server started, counted where it happens and read by the
metrics endpoint (``jetstream_server/metrics.py``, docs/operations.md)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass
class Stats:
    """Counts since start (they only grow)."""

    #: API requests by (command, status): a name that is no command counts as "unknown"
    api_requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: refused logins: "api" (the auth command) and "transfer" (a sending server's)
    failed_logins: Counter[str] = field(default_factory=Counter)
    #: data-plane bytes (datagrams or frames, headers and retransmissions included)
    bytes_sent: int = 0
    bytes_received: int = 0
    #: files delivered by transfers that completed, and files received into place
    files_sent: int = 0
    files_received: int = 0
    blocks_retransmitted: int = 0
    #: datagrams from receivers that sending sessions dropped, by reason
    dropped_by_senders: Counter[str] = field(default_factory=Counter)
