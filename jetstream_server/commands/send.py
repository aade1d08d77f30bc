"""``send.*`` commands: destinations, manifests, transfers and user data."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.ids import new_id, now_us
from ..core.lifecycle import MANIFEST, ManifestStatus
from ..core.manifests import build_file_list, parse_console_mapping
from ..core.netaddr import host_name_problem, host_port
from ..core.objects import (
    DEFAULT_PRIORITY,
    OVERWRITE_RULES,
    Destination,
    Manifest,
    Owned,
    Transfer,
    check_user_data,
)
from ..core.progress import files_progress
from ..core.sandbox import MAX_NAME_BYTES, long_name, virtual_parts
from ..core.tokens import split_token
from ..errors import (
    InvalidParameter,
    InvalidState,
    ManifestError,
    OutsideTokenPath,
    TokenInvalid,
    quoted,
)
from ..protocol.layout import MAX_BLOCKS, Layout
from ..protocol.metadata import DEFAULT_CHECKPOINT_S
from ..protocol.noise import public_key_bytes, public_key_text
from ..protocol.rate import RatePolicy
from ..protocol.wire import DEFAULT_PORT
from .context import Call
from .registry import Command, Param, Registry

__all__ = ["make_destination", "queue_transfer", "register"]

T = TypeVar("T", bound=Owned)

log = logging.getLogger("jetstream.send")

#: Highest accepted sendRateMax: 100 Gbit/s, in kbit/s.
MAX_RATE_KBPS = 100_000_000
#: The ratePolicy values.
POLICIES = tuple(p.value for p in RatePolicy)
TRANSPORTS = ("udp", "tcp")
#: How long createTransfer and waitForManifest wait for a manifest still being built (at
#: most, for waitForManifest's timeoutSeconds), and how often they look.
MANIFEST_WAIT_S = 600
MANIFEST_WAIT_MAX_S = 3600
MANIFEST_POLL_S = 0.02


# -- destinations ---------------------------------------------------------------------

def parse_address(address: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    text = address.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise InvalidParameter(f"destinationAddress {quoted(address)}: an IPv6 address "
                                   "in brackets needs its closing ']'.")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise InvalidParameter(f"destinationAddress {quoted(address)}: {quoted(host)} in "
                                   "brackets is not an IPv6 address.") from None
        if rest:
            if not rest.startswith(":"):
                raise InvalidParameter(f"Cannot read destinationAddress {quoted(address)}.")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise InvalidParameter("destinationAddress names no host.")
    problem = host_name_problem(host)
    if problem is not None:
        raise InvalidParameter(f"destinationAddress {quoted(address)} is not a host name or "
                               f"address: {problem}.")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidParameter(f"Port in destinationAddress {quoted(address)} must be "
                               "1-65535.")
    return host, int(port_text)


async def resolve_host(host: str, port: int) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidParameter(f"Cannot resolve destination host {quoted(host)}: "
                               f"{exc}.") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first
    return str(infos[0][4][0])


def _rate(value: int | None, name: str = "sendRateMax") -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_RATE_KBPS:
        raise InvalidParameter(f"{name} is in kbit/s and must be 0 (automatic) to "
                               f"{MAX_RATE_KBPS}.")
    return value


def _policy(value: str | None) -> str | None:
    if value is not None and value not in POLICIES:
        raise InvalidParameter(f"ratePolicy must be one of {', '.join(POLICIES)}.")
    return value


def _check_fixed(policy: str, rate_kbps: int) -> None:
    if policy == RatePolicy.FIXED and not rate_kbps:
        raise InvalidParameter("ratePolicy fixed sends at sendRateMax: give a sendRateMax "
                               "(kbit/s) above 0.")


def _transport(value: str | None, default: str) -> str:
    if value is None:
        return default
    if value not in TRANSPORTS:
        raise InvalidParameter("dataTransport must be 'udp' or 'tcp'.")
    return value


async def create_destination(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Make (or find, for the same parameters) a server to send to.

    Its public key (destinationPublicKey) is pinned: given, or learned on first contact.
    Credentials: destinationUser and destinationPassword of an account there, or
    destinationToken (and destinationPassword, the token's, if it has one)."""
    if p["destinationUser"] is not None and p["destinationToken"] is not None:
        raise InvalidParameter("Give destinationUser or destinationToken, not both.")
    if p["destinationPassword"] is not None and p["destinationUser"] is None and \
            p["destinationToken"] is None:
        raise InvalidParameter("destinationPassword needs destinationUser (or "
                               "destinationToken).")
    policy = _policy(p["ratePolicy"]) or RatePolicy.FAIR
    _check_fixed(policy, _rate(p["sendRateMax"]))
    destination, created = await make_destination(
        call, address=p["destinationAddress"], rate=p["sendRateMax"], policy=policy,
        transport=p["dataTransport"], user=p["destinationUser"],
        password=p["destinationPassword"], token=p["destinationToken"],
        public_key=p["destinationPublicKey"], user_data=p["userData"])
    # (on every successful call, as JetStream's trigger documentation says: also when the
    # destination existed)
    call.fire("send.destinationCreated", host_port(destination.ip, destination.port),
              call.session.peer_text)
    return ("Destination created." if created else "Destination exists."), \
        _destination(call, destination)


async def make_destination(call: Call, *, address: str, rate: int | None = None,
                           policy: str = RatePolicy.FAIR,
                           transport: str | None = None, user: str | None = None,
                           password: str | None = None, token: str | None = None,
                           public_key: str | None = None,
                           user_data: dict[str, Any] | None = None
                           ) -> tuple[Destination, bool]:
    """The session's destination of these parameters: an existing one, or a new one
    (then True)."""
    service = call.service
    host, port = parse_address(address)
    if token is not None:
        try:
            split_token(token)
        except TokenInvalid:
            raise InvalidParameter("destinationToken must be a token string of the "
                                   "receiving server (jst.<id>.<secret>, as its "
                                   "createAPIToken returned it).") from None
    if public_key is not None:
        try:
            public_key = public_key_text(public_key_bytes(public_key))
        except ValueError as exc:
            raise InvalidParameter(f"destinationPublicKey {quoted(public_key)}: {exc} (the "
                                   "publicKey of the destination's getServerInfo).") from None
    wanted = Destination(
        id=new_id(), owner=call.user, create_time_us=now_us(), public_key=public_key,
        user_data=check_user_data(user_data or {}),
        address=address, host=host, ip="", port=port,
        send_rate_max_kbps=_rate(rate), data_transport=_transport(transport, "udp"),
        rate_policy=str(policy), remote_user=user, remote_password=password, remote_token=token,
        owner_token=call.session.owner_token,
        owner_token_session=call.session.token_session,
    )
    for attempt in range(2):  # again after resolving: another call may have made it
        for existing in service.destinations.values():
            if existing.same_parameters(wanted):
                return existing, False
        if attempt == 0:
            wanted.ip = await resolve_host(host, port)
    service.destinations[wanted.id] = wanted
    service.save_destination(wanted)
    if service.scheduler.data_plane is not None:
        service.scheduler.data_plane.prepare(wanted)
    log.info("destination %s (%s) created by %s", wanted.id, host_port(wanted.ip, port),
             call.who)
    return wanted, True


def _visible(call: Call, table: dict[str, T]) -> list[T]:
    """The objects of ``table`` the session may see."""
    return [obj for obj in table.values() if call.session.sees(obj)]


def _unfinished(call: Call, match: Callable[[Transfer], bool]) -> list[str]:
    """The ids of the unfinished transfers ``match`` picks."""
    return [t.id for t in call.service.transfers.values() if match(t) and not t.status.ended]


def _destination(call: Call, destination: Destination) -> dict[str, Any]:
    queued = len(call.service.scheduler.queue(destination.id))
    return destination.to_api(queued, not call.service.settings.no_data_encryption)


async def get_destination(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """One destination."""
    destination = call.service.find_destination(call.session, p["destinationId"])
    return "Destination.", _destination(call, destination)


async def get_destinations(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The session's destinations."""
    found = [_destination(call, d) for d in _visible(call, call.service.destinations)]
    return f"{len(found)} destination(s).", found


async def delete_destination(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Delete a destination that has no unfinished transfer."""
    service = call.service
    destination = service.find_destination(call.session, p["destinationId"])
    active = _unfinished(call, lambda t: t.destination_id == destination.id)
    if active:
        raise InvalidState(
            f"Destination {destination.id} has {len(active)} unfinished transfer(s); "
            "cancel or delete them first.")
    del service.destinations[destination.id]
    service.forget("destination", destination.id)
    log.info("destination %s deleted by %s", destination.id, call.user)
    call.fire("send.destinationDeleted", host_port(destination.ip, destination.port),
              call.session.peer_text)
    return "Destination deleted.", _destination(call, destination)


# -- manifests ------------------------------------------------------------------------

def _requested_mappings(p: dict[str, Any]) -> list[tuple[str, str]]:
    file_mappings, mappings = p["fileMappings"], p["mappings"]
    if (file_mappings is None) == (mappings is None):
        raise InvalidParameter(
            "createManifest needs exactly one of fileMappings ({SOURCE: DESTINATION} or "
            "[\"SOURCE:DESTINATION\", ...]) and mappings ({DESTINATION: SOURCE}).")
    pairs: list[tuple[str, str]] = []
    if mappings is not None:
        if not isinstance(mappings, dict):
            raise InvalidParameter("mappings must be an object {DESTINATION: SOURCE}.")
        pairs = [(src, dst) for dst, src in mappings.items()]
    elif isinstance(file_mappings, dict):
        pairs = list(file_mappings.items())
    elif isinstance(file_mappings, list):
        for item in file_mappings:
            if not isinstance(item, str):
                raise InvalidParameter("fileMappings list items must be 'SOURCE:DESTINATION'.")
            try:
                pairs.append(parse_console_mapping(item))
            except ValueError as exc:
                raise InvalidParameter(str(exc)) from None
    elif isinstance(file_mappings, str):
        try:
            pairs.append(parse_console_mapping(file_mappings))
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None
    else:
        raise InvalidParameter("fileMappings must be an object or a list of strings.")
    if not pairs:
        raise InvalidParameter("createManifest needs at least one file mapping.")
    for src, dst in pairs:
        if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
            raise InvalidParameter("Every file mapping needs a source and a destination path.")
    return pairs


async def create_manifest(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """List files and folders to send (built in the background)."""
    service = call.service
    requested = _requested_mappings(p)
    if call.session.token is not None:
        for src, _ in requested:
            if ".." in src.split("/"):
                raise OutsideTokenPath(f"Source {quoted(src)} leads out of the token's "
                                       f"folder {call.session.root}: name files inside it "
                                       "(its '/' is that folder).")
    manifest = Manifest(id=new_id(), owner=call.user, create_time_us=now_us(),
                        user_data=check_user_data(p["userData"] or {}),
                        requested=requested, root=call.session.root,
                        owner_token=call.session.owner_token,
        owner_token_session=call.session.token_session)
    service.manifests[manifest.id] = manifest
    service.spawn(_build_manifest(call, manifest))
    return "Manifest requested.", manifest.to_api()


async def _build_manifest(call: Call, manifest: Manifest) -> None:
    root = call.service.sandbox(manifest.owner, manifest.root)
    loop = asyncio.get_running_loop()
    try:
        files = await loop.run_in_executor(None, build_file_list, root, manifest.requested)
    except ManifestError as exc:
        manifest.status = MANIFEST.move(manifest.id, manifest.status, "fail")
        manifest.error_message = str(exc)
        log.info("manifest %s failed: %s", manifest.id, exc)
        return
    manifest.files = files
    manifest.status = MANIFEST.move(manifest.id, manifest.status, "complete")
    log.info("manifest %s complete: %d files, %d bytes", manifest.id, manifest.total_files,
             manifest.total_size)


async def _built(manifest: Manifest, timeout_s: float) -> None:
    """Wait until ``manifest`` is no longer being built (InvalidState after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while manifest.status is ManifestStatus.PENDING:
        if time.monotonic() >= deadline:
            raise InvalidState(f"Manifest {manifest.id} is still being built after "
                               f"{timeout_s:g} s; wait again (waitForManifest), or see its "
                               "status with getManifest.")
        await asyncio.sleep(MANIFEST_POLL_S)


async def wait_for_manifest(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Wait until a manifest is built (complete, or failed: see its status and
    errorMessage), at most timeoutSeconds (default 600), and return it."""
    manifest = call.service.find_manifest(call.session, p["manifestId"])
    timeout_s = p["timeoutSeconds"]
    if timeout_s is not None and not 0 <= timeout_s <= MANIFEST_WAIT_MAX_S:
        raise InvalidParameter(f"timeoutSeconds must be between 0 and {MANIFEST_WAIT_MAX_S}.")
    await _built(manifest, MANIFEST_WAIT_S if timeout_s is None else timeout_s)
    return f"Manifest {manifest.status.value}.", manifest.to_api()


async def get_manifest(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """One manifest: status, totals, errorMessage."""
    return "Manifest.", call.service.find_manifest(call.session, p["manifestId"]).to_api()


async def get_manifest_files(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """A manifest's file mappings."""
    manifest = call.service.find_manifest(call.session, p["manifestId"])
    return "Manifest files.", manifest.files_to_api()


async def get_manifests(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The session's manifests."""
    found = [m.to_api() for m in _visible(call, call.service.manifests)]
    return f"{len(found)} manifest(s).", found


async def delete_manifest(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Delete a manifest no unfinished transfer uses."""
    service = call.service
    manifest = service.find_manifest(call.session, p["manifestId"])
    users = _unfinished(call, lambda t: t.manifest_id == manifest.id)
    if users:
        raise InvalidState(f"Manifest {manifest.id} is used by unfinished transfer(s) "
                           f"{', '.join(users)}.")
    del service.manifests[manifest.id]
    service.forget("manifest", manifest.id)
    return "Manifest deleted.", manifest.to_api()


# -- transfers ------------------------------------------------------------------------

async def create_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Queue a manifest's files for a destination."""
    service = call.service
    destination = service.find_destination(call.session, p["destinationId"])
    manifest = service.find_manifest(call.session, p["manifestId"])
    await _built(manifest, MANIFEST_WAIT_S)  # (a manifest just requested: as waitForManifest)
    transfer = queue_transfer(call, destination, manifest, p)
    return "Transfer created.", _transfer(call, transfer)


def queue_transfer(call: Call, destination: Destination, manifest: Manifest,
                   p: dict[str, Any]) -> Transfer:
    """A new transfer of ``manifest`` to ``destination``, queued (``p``: createTransfer's
    optional parameters, None where not given)."""
    service = call.service
    if manifest.status is ManifestStatus.PENDING:
        raise InvalidState(f"Manifest {manifest.id} is still being built; wait until its "
                           "status is complete.")
    if manifest.status is ManifestStatus.ERROR:
        raise InvalidState(f"Manifest {manifest.id} failed: {manifest.error_message}")
    destination_path = p["destinationPath"]
    if destination_path is not None:
        long = long_name(virtual_parts(destination_path))
        if long is not None:
            raise InvalidParameter(f"destinationPath has a name longer than {MAX_NAME_BYTES} "
                                   f"bytes: {quoted(long)}.")
    checkpoint = p["checkpointFrequencySeconds"]
    if checkpoint is not None and not 1 <= checkpoint <= 86_400:
        raise InvalidParameter("checkpointFrequencySeconds must be 1 to 86400.")
    priority = DEFAULT_PRIORITY if p["priority"] is None else p["priority"]
    if not -(2**31) <= priority < 2**31:
        raise InvalidParameter("priority must fit in 32 bits.")
    user_data = check_user_data(p["userData"] or {})
    overwrite = p["overwrite"] or "always"
    if overwrite not in OVERWRITE_RULES:
        raise InvalidParameter(f"overwrite must be one of {', '.join(OVERWRITE_RULES)}, not "
                               f"{overwrite!r}.")
    transport = _transport(p["dataTransport"], destination.data_transport)
    block_size = service.scheduler.block_size(transport, destination.ip)
    layout = Layout(block_size, 0, manifest.sizes)
    if layout.total_blocks >= MAX_BLOCKS:
        raise InvalidParameter(f"The manifest needs {layout.total_blocks} blocks of "
                               f"{block_size} bytes; one transfer can carry {MAX_BLOCKS - 1}.")
    transfer = Transfer(
        id=new_id(), owner=call.user, create_time_us=now_us(), user_data=user_data,
        destination_id=destination.id, manifest_id=manifest.id,
        destination_path=destination_path, priority=priority,
        send_rate_max_kbps=None if p["sendRateMax"] is None else _rate(p["sendRateMax"]),
        checkpoint_frequency_s=checkpoint or DEFAULT_CHECKPOINT_S,
        data_transport=transport,
        total_bytes=manifest.total_size or 0, total_files=manifest.total_files or 0,
        block_size=block_size, total_blocks=layout.total_blocks,
        initial_user_data=dict(user_data), owner_token=call.session.owner_token,
        owner_token_session=call.session.token_session, rate_policy=_policy(p["ratePolicy"]),
        overwrite=overwrite,
    )
    _check_fixed(service.scheduler.effective_policy(transfer),
                 service.scheduler.effective_rate_kbps(transfer))
    service.scheduler.enqueue(transfer)
    log.info("transfer %s created by %s: manifest %s to destination %s", transfer.id,
             call.who, manifest.id, destination.id)
    return transfer


def _transfer(call: Call, transfer: Transfer) -> dict[str, Any]:
    scheduler = call.service.scheduler
    return transfer.to_api(scheduler.effective_rate_kbps(transfer),
                           scheduler.effective_policy(transfer))


async def get_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """One transfer: status, counters, errorMessage."""
    return "Transfer.", _transfer(call, call.service.find_transfer(call.session,
                                                                   p["transferId"]))


async def get_transfers(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The session's transfers (optionally of one destination)."""
    wanted = p["destinationId"]
    found = [_transfer(call, t) for t in _visible(call, call.service.transfers)
             if wanted is None or t.destination_id == wanted]
    return f"{len(found)} transfer(s).", found


async def get_transfer_files(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Each file of a transfer: its paths, size, status and bytes the receiver has."""
    service = call.service
    transfer = service.find_transfer(call.session, p["transferId"])
    manifest = service.manifests.get(transfer.manifest_id)
    if manifest is None:
        raise InvalidState(f"Transfer {transfer.id}'s manifest {transfer.manifest_id} is "
                           "gone; its files cannot be listed.")
    files = files_progress(transfer, manifest)
    return f"{len(files)} file(s).", {"transferId": transfer.id, "fileMappings": files}


async def suspend_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Stop moving data, keeping what the receiver has."""
    transfer = call.service.find_transfer(call.session, p["transferId"])
    call.service.scheduler.suspend(transfer)
    return "Transfer suspended.", _transfer(call, transfer)


async def resume_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Put a suspended or failed transfer back in its queue."""
    transfer = call.service.find_transfer(call.session, p["transferId"])
    call.service.scheduler.resume(transfer)
    return "Transfer resumed.", _transfer(call, transfer)


async def cancel_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """End a transfer for good."""
    transfer = call.service.find_transfer(call.session, p["transferId"])
    call.service.scheduler.cancel(transfer)
    return "Transfer cancelled.", _transfer(call, transfer)


async def fail_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """End a transfer in error, with a message."""
    transfer = call.service.find_transfer(call.session, p["transferId"])
    message = p["errorMessage"] or f"Failed by {call.user}."
    call.service.scheduler.fail(transfer, message)
    return "Transfer failed.", _transfer(call, transfer)


async def delete_transfer(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Cancel a transfer if unfinished, then remove it."""
    transfer = call.service.find_transfer(call.session, p["transferId"])
    call.service.scheduler.delete(transfer)
    call.service.forget("transfer", transfer.id)
    return "Transfer deleted.", _transfer(call, transfer)


async def set_send_rate(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Change a transfer's sendRateMax (kbit/s; 0 = automatic) and/or ratePolicy."""
    if p["sendRateMax"] is None and p["ratePolicy"] is None:
        raise InvalidParameter("Give sendRateMax (kbit/s; 0: automatic) or ratePolicy, "
                               "or both.")
    transfer = call.service.find_transfer(call.session, p["transferId"])
    if transfer.status.ended:
        raise InvalidState(f"Transfer {transfer.id} is {transfer.status.value}; its rate "
                           "can no longer change.")
    scheduler = call.service.scheduler
    rate = None if p["sendRateMax"] is None else _rate(p["sendRateMax"])
    policy = _policy(p["ratePolicy"])
    _check_fixed(policy or scheduler.effective_policy(transfer),
                 scheduler.effective_rate_kbps(transfer) if rate is None else rate)
    scheduler.set_rate(transfer, rate, policy)
    return "Send rate changed.", _transfer(call, transfer)


# -- user data ------------------------------------------------------------------------

def _object_api(call: Call, obj: Any) -> dict[str, Any]:
    if isinstance(obj, Destination):
        return _destination(call, obj)
    if isinstance(obj, Transfer):
        return _transfer(call, obj)
    result: dict[str, Any] = obj.to_api()
    return result


async def update_object_user_data(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Merge userData into a destination, manifest or transfer."""
    obj = call.service.find_object(call.session, p["objectId"])
    merged = {**obj.user_data, **p["userData"]}
    obj.user_data = check_user_data(merged)
    call.service.save_object(obj)
    return "User data updated.", _object_api(call, obj)


async def delete_object_user_data(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Remove one key from an object's userData."""
    obj = call.service.find_object(call.session, p["objectId"])
    if p["key"] not in obj.user_data:
        raise InvalidParameter(f"Object {p['objectId']} has no user data key {p['key']!r}.")
    del obj.user_data[p["key"]]
    call.service.save_object(obj)
    return "User data deleted.", _object_api(call, obj)


def register(registry: Registry) -> None:
    dest_id = Param("destinationId", str, required=True)
    manifest_id = Param("manifestId", str, required=True)
    transfer_id = (Param("transferId", str, required=True),)
    user_data = Param("userData", dict)
    for name, handler, params in (
        ("createDestination", create_destination, (
            Param("destinationAddress", str, required=True),
            Param("sendRateMax", int, nullable=True),
            Param("ratePolicy", str, nullable=True),
            Param("dataTransport", str, nullable=True),
            Param("destinationUser", str, nullable=True),
            Param("destinationPassword", str, nullable=True),
            Param("destinationToken", str, nullable=True),
            Param("destinationPublicKey", str, nullable=True),
            user_data)),
        ("getDestination", get_destination, (dest_id,)),
        ("getDestinations", get_destinations, ()),
        ("deleteDestination", delete_destination, (dest_id,)),
        ("createManifest", create_manifest, (
            Param("fileMappings", object), Param("mappings", object), user_data)),
        ("getManifest", get_manifest, (manifest_id,)),
        ("getManifestFiles", get_manifest_files, (manifest_id,)),
        ("waitForManifest", wait_for_manifest, (
            manifest_id, Param("timeoutSeconds", int, nullable=True))),
        ("getManifests", get_manifests, ()),
        ("deleteManifest", delete_manifest, (manifest_id,)),
        ("createTransfer", create_transfer, (
            dest_id, manifest_id,
            Param("destinationPath", str, nullable=True),
            Param("priority", int, nullable=True),
            Param("sendRateMax", int, nullable=True),
            Param("ratePolicy", str, nullable=True),
            Param("checkpointFrequencySeconds", int, nullable=True),
            Param("dataTransport", str, nullable=True),
            Param("overwrite", str, nullable=True),
            user_data)),
        ("getTransfer", get_transfer, transfer_id),
        ("getTransferFiles", get_transfer_files, transfer_id),
        ("getTransfers", get_transfers, (Param("destinationId", str, nullable=True),)),
        ("suspendTransfer", suspend_transfer, transfer_id),
        ("resumeTransfer", resume_transfer, transfer_id),
        ("cancelTransfer", cancel_transfer, transfer_id),
        ("failTransfer", fail_transfer, (*transfer_id,
                                         Param("errorMessage", str, nullable=True))),
        ("deleteTransfer", delete_transfer, transfer_id),
        ("setSendRate", set_send_rate, (*transfer_id,
                                        Param("sendRateMax", int, nullable=True),
                                        Param("ratePolicy", str, nullable=True))),
        ("updateObjectUserData", update_object_user_data, (
            Param("objectId", str, required=True), Param("userData", dict, required=True))),
        ("deleteObjectUserData", delete_object_user_data, (
            Param("objectId", str, required=True), Param("key", str, required=True))),
    ):
        registry.add(Command("send." + name, handler, params,
                             permission="read" if name.startswith(("get", "wait")) else "send"))
