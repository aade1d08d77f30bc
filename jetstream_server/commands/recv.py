"""``recv.*`` commands: incoming transfers and the servers they come from."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..core.lifecycle import ConnectionState, ReceiveStatus
from .context import Call
from .registry import Command, Registry

__all__ = ["register"]

RECEIVING = ReceiveStatus.RECEIVING


async def get_transfers(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Incoming transfers authorized with the session's account (all, raised)."""
    found = [r.to_api() for r in call.service.receives.values()
             if call.session.can_see(r.user)]
    return f"{len(found)} incoming transfer(s).", found


async def get_sources(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Incoming transfers grouped by the address that sent them."""
    receiver = call.service.receiver
    live = set(receiver.live_transfers()) if receiver is not None else set()
    by_ip: dict[str, list[Any]] = defaultdict(list)
    for record in call.service.receives.values():
        if call.session.can_see(record.user):
            by_ip[record.source_ip].append(record)
    sources = []
    for ip, records in sorted(by_ip.items()):
        seconds = sum(((r.end_time_us or r.last_recv_time_us or r.start_time_us)
                       - r.start_time_us) / 1e6 for r in records)
        received = sum(r.bytes_recv for r in records)
        sources.append({
            "sourceIP": ip,
            "sourcePort": records[-1].source_port,
            "activeTransferCount": sum(r.status is RECEIVING for r in records),
            "completeTransferCount": sum(r.status is ReceiveStatus.COMPLETE for r in records),
            "errorTransferCount": sum(r.status is ReceiveStatus.ERROR for r in records),
            "inactiveTransferCount": sum(r.status is not RECEIVING for r in records),
            "bytesRecv": received,
            "aveRecvRate": int(received * 8 / 1000 / seconds) if seconds > 0 else 0,
            "encryptionEnabled": False,
            "encryptedConnectionState": ConnectionState.CONNECTED if any(
                r.transfer_id in live for r in records) else ConnectionState.DISCONNECTED,
        })
    return f"{len(sources)} source(s).", sources


def register(registry: Registry) -> None:
    registry.add(Command("recv.getTransfers", get_transfers))
    registry.add(Command("recv.getSources", get_sources))
