"""``recv.*`` commands: incoming transfers, the servers they come from, and the servers
trusted by their keys."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..core.lifecycle import ConnectionState, ReceiveStatus
from ..errors import InvalidParameter, NotFound, PermissionDenied, quoted
from ..protocol.noise import public_key_bytes, public_key_text
from .context import Call
from .registry import Command, Param, Registry

__all__ = ["register"]

RECEIVING = ReceiveStatus.RECEIVING


async def get_transfers(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Incoming transfers authorized with the session's account (all, raised)."""
    found = [r.to_api() for r in call.service.receives.values()
             if call.session.can_see(r.user, r.token)]
    return f"{len(found)} incoming transfer(s).", found


async def get_sources(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Incoming transfers grouped by the address that sent them."""
    receiver = call.service.receiver
    live = set(receiver.live_transfers()) if receiver is not None else set()
    by_ip: dict[str, list[Any]] = defaultdict(list)
    for record in call.service.receives.values():
        if call.session.can_see(record.user, record.token):
            by_ip[record.source_ip].append(record)
    sources = []
    for ip, records in sorted(by_ip.items()):
        seconds = sum(((r.end_time_us or r.last_recv_time_us or r.start_time_us)
                       - r.start_time_us) / 1e6 for r in records)
        received = sum(r.bytes_recv for r in records)
        latest = max(records, key=lambda r: r.last_recv_time_us or r.start_time_us)
        sources.append({
            "sourceIP": ip,
            "sourcePort": latest.source_port,
            "activeTransferCount": sum(r.status is RECEIVING for r in records),
            "completeTransferCount": sum(r.status is ReceiveStatus.COMPLETE for r in records),
            "errorTransferCount": sum(r.status is ReceiveStatus.ERROR for r in records),
            "inactiveTransferCount": sum(r.status is not RECEIVING for r in records),
            "bytesRecv": received,
            "aveRecvRate": int(received * 8 / 1000 / seconds) if seconds > 0 else 0,
            # (JetStream's name for the sending server's key in this structure)
            "destinationPublicKey": latest.client_key,
            "encryptionEnabled": latest.encrypted,
            "encryptedConnectionState": ConnectionState.CONNECTED if any(
                r.transfer_id in live for r in records) else ConnectionState.DISCONNECTED,
        })
    return f"{len(sources)} source(s).", sources


def _superuser(call: Call) -> None:
    if not call.session.raised:
        raise PermissionDenied("Only a raised superuser may manage authorized clients: "
                               "call superuser first.")


def _client_key(p: dict[str, Any]) -> str:
    text: str = p["clientPublicKey"]
    try:
        return public_key_text(public_key_bytes(text))
    except ValueError as exc:
        raise InvalidParameter(f"clientPublicKey {quoted(text)}: {exc} (the publicKey of "
                               "the sending server's getServerInfo).") from None


def _clients(call: Call) -> dict[str, Any]:
    trust = call.service.trust
    return {"allowOnlyAuthorizedClients": trust.only_authorized,
            "authorizedClients": trust.clients()}


async def add_authorized_client(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Trust a sending server by its public key (raised superuser)."""
    _superuser(call)
    entry = call.service.trust.add(_client_key(p), call.user)
    return "Client authorized.", entry


async def remove_authorized_client(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Stop trusting a sending server's key (raised superuser)."""
    _superuser(call)
    key = _client_key(p)
    entry = call.service.trust.remove(key)
    if entry is None:
        raise NotFound(f"No authorized client with key {key}.")
    return "Client no longer authorized.", entry


async def get_authorized_clients(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The sending servers trusted by key, and whether only they may send (raised
    superuser)."""
    _superuser(call)
    return "Authorized clients.", _clients(call)


async def allow_only_authorized_clients(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Accept transfers only from authorized keys, or from credentials too (raised
    superuser)."""
    _superuser(call)
    call.service.trust.restrict(p["enable"])
    state = "only from authorized clients" if p["enable"] else "from credentials too"
    return f"Transfers are accepted {state}.", _clients(call)


def register(registry: Registry) -> None:
    key = (Param("clientPublicKey", str, required=True),)
    for command in (
        Command("recv.getTransfers", get_transfers),
        Command("recv.getSources", get_sources),
        Command("recv.addAuthorizedClient", add_authorized_client, key),
        Command("recv.removeAuthorizedClient", remove_authorized_client, key),
        Command("recv.getAuthorizedClients", get_authorized_clients),
        Command("recv.allowOnlyAuthorizedClients", allow_only_authorized_clients,
                (Param("enable", bool, required=True),)),
    ):
        registry.add(command)
