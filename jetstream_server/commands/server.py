"""Server commands (unqualified names): auth, superuser, getServerInfo, queued requests."""

from __future__ import annotations

from typing import Any

from ..core.bandwidth import KEYS, check_limit
from ..core.lifecycle import RequestStatus
from ..errors import (
    ApiError,
    InvalidParameter,
    MissingParameter,
    PermissionDenied,
    TokenPermissionDenied,
    api_error,
)
from .context import Call
from .registry import Command, Param, Registry

__all__ = ["register"]


async def auth(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Log the connection in with a user and password, or a token (and its password)."""
    if (p["user"] is None) == (p["token"] is None):
        raise InvalidParameter("auth needs 'user' and 'password', or 'token' (and "
                               "'password' if the token has one).")
    if p["token"] is not None:
        token = await call.service.authenticate_token(call.session, p["token"],
                                                      p["password"])
        return "Authenticated with a token.", {
            "user": token.owner, "token": token.id, "tokenSession": call.session.token_session,
            "path": token.path, "permissions": token.permissions}
    if p["password"] is None:
        raise MissingParameter("auth needs parameter 'password'.")
    await call.service.authenticate(call.session, p["user"], p["password"])
    return "Authenticated.", {"user": call.session.user}


async def superuser(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Raise the session to superuser (for names given by --superuser)."""
    if call.session.token is not None:
        raise TokenPermissionDenied("A token session cannot be raised to superuser: log "
                                    "in with the user's password.")
    if not call.service.is_superuser(call.user):
        raise PermissionDenied(f"User {call.user} is not a superuser.")
    call.session.raised = True
    return "Session raised to superuser.", {"user": call.user, "superuser": True}


async def get_server_info(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Facts about this server (no login needed)."""
    return "Server information.", call.service.server_info(call.session)


def _record_id(p: dict[str, Any]) -> int:
    request_id: int = p["requestId"]
    if request_id < 1:
        raise InvalidParameter("requestId must be a positive integer.")
    return request_id


async def get_request_status(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The status of a queued (...Async) request, at once."""
    record = call.service.requests.get(_record_id(p), call.session.can_see)
    return "Request status.", record.to_api()


async def get_request_result(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The result of a queued (...Async) request, waiting for it."""
    record = call.service.requests.get(_record_id(p), call.session.can_see)
    await record.done.wait()
    if record.status is RequestStatus.ERROR:
        raise api_error(record.code or ApiError.code, record.message)
    return record.message, record.result


def _raised(call: Call) -> None:
    if not call.session.raised:
        raise PermissionDenied("Only a raised superuser may do this: call superuser first.")


async def get_gc_settings(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """How often, and how long after, ended objects are collected."""
    return "Garbage collection settings.", call.service.gc_settings


async def update_gc_settings(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Change the garbage collection settings (raised superuser)."""
    _raised(call)
    changes: dict[str, int] = {}
    for key, low in (("intervalSeconds", 60), ("timeLimitSeconds", 0)):
        value = p[key]
        if value is not None:
            if not low <= value <= 2_147_483_647:
                raise InvalidParameter(f"{key} must be {low} to 2147483647.")
            changes[key] = value
    return "Garbage collection settings updated.", call.service.update_gc_settings(changes)


async def update_bandwidth_limits(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Change the server-wide rate limits (raised superuser): incomingRateLimit and
    outgoingRateLimit (kbit/s, 0: none), borrowIncomingRate and borrowOutgoingRate. They
    apply to running transfers at once and are kept across restarts (a limit the server's
    configuration gives cannot be changed here)."""
    _raised(call)
    changes = {key: p[key] for key in KEYS if p[key] is not None}
    if not changes:
        raise InvalidParameter(f"Give one or more of {', '.join(KEYS)}.")
    for key in ("incomingRateLimit", "outgoingRateLimit"):
        if key in changes:
            try:
                check_limit(changes[key], key)
            except ValueError as exc:
                raise InvalidParameter(f"{exc}.") from None
    return "Bandwidth limits updated.", call.service.update_bandwidth_limits(changes)


async def garbage_collect(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Collect what ended long enough ago, now (raised superuser)."""
    _raised(call)
    return "Garbage collected.", call.service.garbage_collect()


async def get_sandbox_mappings(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """The sandbox of each mapped user, without the secrets (raised superuser)."""
    _raised(call)
    return "Sandbox mappings.", call.service.sandboxes.to_api()


async def set_sandbox_mappings(call: Call, p: dict[str, Any]) -> tuple[str, Any]:
    """Replace the sandbox mappings (raised superuser): ``mappings``, a list of
    {"user", "type": "local" | "S3", ...}; see docs/operations.md. Transfers started
    from now on use them."""
    _raised(call)
    return "Sandbox mappings set.", call.service.sandboxes.replace(p["mappings"])


def register(registry: Registry) -> None:
    request_id = (Param("requestId", int, required=True),)
    for command in (
        Command("auth", auth, (Param("user", str), Param("password", str),
                               Param("token", str)), needs_auth=False),
        Command("superuser", superuser, permission=None),
        Command("getServerInfo", get_server_info, needs_auth=False, permission=None),
        Command("getRequestStatus", get_request_status, request_id, asyncable=False),
        Command("getRequestResult", get_request_result, request_id, asyncable=False),
        Command("getGarbageCollectSettings", get_gc_settings),
        Command("updateGarbageCollectSettings", update_gc_settings, (
            Param("intervalSeconds", int, nullable=True),
            Param("timeLimitSeconds", int, nullable=True))),
        Command("garbageCollect", garbage_collect),
        Command("getSandboxMappings", get_sandbox_mappings),
        Command("setSandboxMappings", set_sandbox_mappings,
                (Param("mappings", list, required=True),)),
        Command("updateBandwidthLimits", update_bandwidth_limits, (
            Param("incomingRateLimit", int, nullable=True),
            Param("outgoingRateLimit", int, nullable=True),
            Param("borrowIncomingRate", bool, nullable=True),
            Param("borrowOutgoingRate", bool, nullable=True))),
    ):
        registry.add(command)
