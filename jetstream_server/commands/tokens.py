"""Token commands: API tokens (``createAPIToken`` ...), shared links
(``send.createSharedToken`` ...), and fetching a shared link's files
(``recv.downloadSharedLink`` here, ``send.downloadSharedToken`` on the sharing server).

A shared link is fetched so: the recipient's server makes itself a short-lived token
that may only receive, into the folder the files are to go to; it logs in to the sharing
server with the link's token (TLS, the certificate pinned by the link's fingerprint) and
asks it, with ``send.downloadSharedToken``, to send the link's manifest to it with that
token as the destination token. The sharing server checks the link (expiry, download
limit, passphrase), counts the download, and sends as it sends any transfer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Any

from ..core.ids import now_us
from ..core.lifecycle import ManifestStatus
from ..core.netaddr import host_port
from ..core.sandbox import resolve_in_sandbox, virtual_parts
from ..core.tokens import (
    API,
    DEFAULT_PERMISSIONS,
    DOWNLOAD,
    PERMISSIONS,
    SHARED,
    Token,
    make_link,
    parse_expiry,
    parse_link,
    split_token,
)
from ..errors import (
    CommandFailed,
    ConnectionFailed,
    DownloadLimitReached,
    InvalidParameter,
    InvalidState,
    NotFound,
    OutsideTokenPath,
    PathRefused,
    TokenInvalid,
    TokenPermissionDenied,
    api_error,
)
from ..protocol.noise import public_key_text
from .context import Call
from .registry import Command, Param, Registry
from .send import make_destination, queue_transfer

if TYPE_CHECKING:  # (the console reads the commands' table without loading the service)
    from ..core.service import Session

__all__ = ["register"]

log = logging.getLogger("jetstream.api")

#: A shared link lives this long when no expiryTime is given.
DEFAULT_SHARED_EXPIRY = "7d"
#: The token a recipient's server makes itself to receive a shared link's files lives
#: this long (long enough for the transfer to resume after an outage).
DOWNLOAD_TOKEN_EXPIRY = "7d"


_NAMES = {API: "API token", SHARED: "shared link"}


def _capital(kind: str) -> str:
    """The name of a token of ``kind``, to begin a sentence."""
    name = _NAMES[kind]
    return name[0].upper() + name[1:]


def _visible(session: Session, token: Token) -> bool:
    """A token is seen by its owner, by the token that made it (and by itself), and by a
    raised superuser."""
    own = session.token is not None and session.token.id == token.id
    return own or session.can_see(token.owner, token.owner_token)


def _find(call: Call, text: str, kind: str) -> Token:
    token_id = split_token(text)[0] if text.startswith("jst.") else text
    token = call.service.tokens.tokens.get(token_id)
    if token is None or token.kind != kind or not _visible(call.session, token):
        raise NotFound(f"No {_NAMES[kind]} with id {token_id}.")
    return token


def _permissions(call: Call, given: Any) -> list[str]:
    if given is None:
        wanted = list(DEFAULT_PERMISSIONS)
    elif isinstance(given, str):
        wanted = [p.strip() for p in given.split(",") if p.strip()]
    elif isinstance(given, list) and all(isinstance(p, str) for p in given):
        wanted = list(given)
    else:
        raise InvalidParameter("permissions must be a list of names, or names separated by "
                               "commas.")
    unknown = [p for p in wanted if p not in PERMISSIONS]
    if unknown:
        raise InvalidParameter(f"Unknown permission(s) {', '.join(unknown)}: the names are "
                               f"{', '.join(PERMISSIONS)}.")
    own = call.session.token
    if own is not None:
        wider = [p for p in wanted if p not in own.permissions]
        if wider:
            raise TokenPermissionDenied(
                f"A token cannot give a token more than it has: token {own.id} does not "
                f"have {', '.join(wider)}.")
    return sorted(set(wanted), key=list(PERMISSIONS).index)


def _expiry(call: Call, given: Any, default: str | None) -> int | None:
    expiry = parse_expiry(given if given is not None else default, now_us())
    own = call.session.token
    if own is not None and own.expiry_time_us is not None and (
            expiry is None or expiry > own.expiry_time_us):
        raise InvalidParameter(f"A token cannot make a token that outlives it: token "
                               f"{own.id} expires at {own.expiry_time_us} (microseconds "
                               "since 1970); give an earlier expiryTime.")
    return expiry


def _password(given: str | None, what: str) -> str | None:
    if given is not None and not given:
        raise InvalidParameter(f"The {what} is empty: give one, or leave it out.")
    return given


def _folder(call: Call, path: str, create: bool = False) -> str:
    """The token folder ``path`` (relative to the session's root) names, as a path of the
    owner's sandbox; it must be a folder inside it (``create``: made if missing, once its
    real place is known to be inside)."""
    try:
        parts = virtual_parts(path)
    except PathRefused as exc:
        if ".." in path.split("/"):
            raise OutsideTokenPath(f"path {path!r} leads out of " + (
                "the token's folder." if call.session.token else "your sandbox.")) from None
        raise InvalidParameter(exc.message) from None
    full = "/" + "/".join(virtual_parts(call.session.root) + parts)
    sandbox = call.service.sandbox(call.user)
    if not isinstance(sandbox, str):  # an S3 prefix: no folder to find or make
        return full
    real = resolve_in_sandbox(sandbox, full)
    if create:
        os.makedirs(real, exist_ok=True)
    if not real.is_dir():
        raise InvalidParameter(f"path {path!r} is not a folder (create it first).")
    return full


async def _create(call: Call, fields: dict[str, Any], password: str | None
                  ) -> tuple[Token, str]:
    loop = asyncio.get_running_loop()
    token, text = await loop.run_in_executor(None, call.service.tokens.create,
                                             fields, password)
    call.service.add_token(token)
    return token, text


# -- API tokens -----------------------------------------------------------------------

async def create_api_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Make an API token: a login confined to a folder and to permissions (its
    tokenString is shown this once)."""
    call.service.check_tokens_enabled(API)
    fields = {
        "kind": API, "owner": call.user,
        "path": _folder(call, p["path"] or "/"),
        "permissions": _permissions(call, p["permissions"]),
        "expiry_time_us": _expiry(call, p["expiryTime"], None),
        "description": p["description"] or "", "user_data": p["userData"] or {},
        **call.session.ownership(),
    }
    token, text = await _create(call, fields, _password(p["password"], "password"))
    log.info("API token %s created by %s for %s (%s)", token.id, call.who, token.path,
             ", ".join(token.permissions))
    return "API token created: keep tokenString, it is not shown again.", {
        **token.to_api(), "tokenString": text}


def _one(call: Call, p: dict[str, Any], kind: str) -> tuple[str, Any]:
    return f"{_capital(kind)}.", _find(call, p["token"], kind).to_api()


def _all(call: Call, kind: str) -> tuple[str, Any]:
    found = [t.to_api() for t in call.service.tokens.tokens.values()
             if t.kind == kind and _visible(call.session, t)]
    return f"{len(found)} {_NAMES[kind]}(s).", found


def _delete(call: Call, p: dict[str, Any], kind: str) -> tuple[str, Any]:
    token = _find(call, p["token"], kind)
    call.service.delete_token(token.id)
    log.info("%s %s deleted by %s", _NAMES[kind], token.id, call.who)
    return f"{_capital(kind)} deleted.", token.to_api()


async def get_api_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """One API token (never its string)."""
    return _one(call, p, API)


async def get_api_tokens(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The API tokens the session may see."""
    return _all(call, API)


async def delete_api_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Delete an API token: its sessions end at once, and it authorizes nothing more."""
    return _delete(call, p, API)


# -- shared links ---------------------------------------------------------------------

async def create_shared_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Make a shared link to a manifest's files (its link is shown this once)."""
    call.service.check_tokens_enabled(SHARED)
    service = call.service
    manifest = service.find_manifest(call.session, p["manifestId"])
    if manifest.status is not ManifestStatus.COMPLETE:
        raise InvalidState(f"Manifest {manifest.id} is {manifest.status.value}: share a "
                           "manifest whose status is complete.")
    limit = p["downloadLimit"]
    if limit is not None and limit < 1:
        raise InvalidParameter("downloadLimit must be at least 1 (leave it out: no limit).")
    fields = {
        "kind": SHARED, "owner": call.user, "permissions": [DOWNLOAD],
        "path": manifest.root, "manifest_id": manifest.id, "download_limit": limit,
        "expiry_time_us": _expiry(call, p["expiryTime"], DEFAULT_SHARED_EXPIRY),
        "description": p["description"] or "", "user_data": p["userData"] or {},
        **call.session.ownership(),
    }
    token, text = await _create(call, fields, _password(p["password"], "passphrase"))
    address = service.settings.external_address or socket.gethostname()
    if not re.search(r":\d+$", address):  # a host alone: this control port
        address = f"{address}:{service.api_port}"
    link = make_link(address, text, service.api_certificate.fingerprint)
    log.info("shared link %s created by %s for manifest %s", token.id, call.who,
             manifest.id)
    return "Shared link created: keep link, it is not shown again.", {
        **token.to_api(), "tokenString": text, "link": link}


async def get_shared_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """One shared link (never its string)."""
    return _one(call, p, SHARED)


async def get_shared_tokens(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The shared links the session may see."""
    return _all(call, SHARED)


async def delete_shared_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Delete a shared link: it lets no one download any more."""
    return _delete(call, p, SHARED)


async def download_shared_token(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Send this shared link's files to the asking server (a shared link's session)."""
    service, token = call.service, call.session.token
    if token is None or token.kind != SHARED:
        raise TokenPermissionDenied("send.downloadSharedToken is for a session logged in "
                                    "with a shared link's token.")
    token = service.tokens.tokens[token.id]  # (checked by the dispatcher: still there)
    if token.download_limit is not None and token.download_count >= token.download_limit:
        raise DownloadLimitReached(
            f"Shared link {token.id} has been downloaded {token.download_count} time(s), "
            f"its limit: ask its owner ({token.owner}) for a new link.")
    manifest = service.manifests.get(token.manifest_id or "")
    if manifest is None or manifest.status is not ManifestStatus.COMPLETE:
        raise NotFound(f"The files of shared link {token.id} are no longer offered: ask "
                       f"its owner ({token.owner}) for a new link.")
    host = call.session.peer[0]  # (the asking server: files go nowhere else)
    address = host_port(host, p["recvPort"])
    destination, _ = await make_destination(
        call, address=address, transport=p["dataTransport"], token=p["destinationToken"],
        public_key=p["destinationPublicKey"])
    transfer = queue_transfer(call, destination, manifest, {
        "destinationPath": None, "checkpointFrequencySeconds": None, "priority": None,
        "userData": None, "dataTransport": None, "sendRateMax": None, "ratePolicy": None,
        "overwrite": None})
    token.download_count += 1
    service.tokens.save(token)
    log.info("shared link %s: download %d, transfer %s to %s", token.id,
             token.download_count, transfer.id, address)
    return "Download started.", {
        "transferId": transfer.id, "totalBytes": transfer.total_bytes,
        "totalFiles": transfer.total_files, "downloadCount": token.download_count}


async def download_shared_link(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Fetch a shared link's files from the server that shares them, into this server."""
    service = call.service
    call.service.check_tokens_enabled(API)
    host, port, text, fingerprint = parse_link(p["link"])
    if service.remote is None:
        raise InvalidState("This server cannot fetch shared links (no client).")
    receive_token, receive_text = await _create(call, {
        "kind": API, "owner": call.user, "permissions": ["receive"],
        "path": _folder(call, p["destinationPath"] or "/", create=True),
        "expiry_time_us": parse_expiry(DOWNLOAD_TOKEN_EXPIRY, now_us()),
        "description": f"receives shared link {split_token(text)[0]} from {host}:{port}",
        "user_data": {}, **call.session.ownership()}, None)
    try:
        result = await service.remote.call(
            host, port, fingerprint, text, p["password"], "send.downloadSharedToken", {
                "destinationToken": receive_text, "recvPort": service.recv_port,
                "destinationPublicKey": public_key_text(service.identity.public),
                **({"dataTransport": p["dataTransport"]} if p["dataTransport"] else {})})
    except CommandFailed as exc:
        service.delete_token(receive_token.id)
        raise api_error(exc.code, f"The sharing server refused: {exc.message}") from None
    except ConnectionFailed as exc:
        service.delete_token(receive_token.id)
        raise api_error("unreachable", f"Cannot fetch the shared link: {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("transferId"), str):
        service.delete_token(receive_token.id)
        raise TokenInvalid("The sharing server gave no transfer for the link.")
    log.info("%s fetches shared link %s from %s:%d as transfer %s", call.who,
             split_token(text)[0], host, port, result["transferId"])
    return "Download started: the files arrive as incoming transfer transferId.", {
        **result, "token": receive_token.id, "destinationPath": receive_token.path,
        "sharingServer": f"{host}:{port}"}


def register(registry: Registry) -> None:
    token = (Param("token", str, required=True),)
    common = (Param("expiryTime", object), Param("password", str, nullable=True),
              Param("description", str, nullable=True), Param("userData", dict))
    for command in (
        Command("createAPIToken", create_api_token, (
            Param("path", str, nullable=True), Param("permissions", object), *common),
            permission="tokens"),
        Command("getAPIToken", get_api_token, token),
        Command("getAPITokens", get_api_tokens),
        Command("deleteAPIToken", delete_api_token, token, permission="tokens"),
        Command("send.createSharedToken", create_shared_token, (
            Param("manifestId", str, required=True),
            Param("downloadLimit", int, nullable=True), *common), permission="share"),
        Command("send.getSharedToken", get_shared_token, token),
        Command("send.getSharedTokens", get_shared_tokens),
        Command("send.deleteSharedToken", delete_shared_token, token, permission="share"),
        Command("send.downloadSharedToken", download_shared_token, (
            Param("destinationToken", str, required=True),
            Param("recvPort", int, required=True),
            Param("destinationPublicKey", str, nullable=True),
            Param("dataTransport", str, nullable=True)), permission=DOWNLOAD,
            asyncable=False),
        Command("recv.downloadSharedLink", download_shared_link, (
            Param("link", str, required=True), Param("password", str, nullable=True),
            Param("destinationPath", str, nullable=True),
            Param("dataTransport", str, nullable=True)), permission="receive"),
    ):
        registry.add(command)
