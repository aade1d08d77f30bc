"""Running one decoded request: name, login and parameters checked, handler run, answer
made, ``on.<command>`` trigger fired. The control listener only moves lines."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ..core.service import Fire, Service, Session
from ..core.tokens import SHARED
from ..errors import (
    ApiError,
    AuthRequired,
    InternalError,
    InvalidParameter,
    OutsideTokenPath,
    PathError,
    PathOutside,
    PermissionDenied,
    TokenPermissionDenied,
)
from ..protocol.lines import Request, error_response, success_response
from .context import Call
from .registry import SECRET_PARAMETERS, Command, Registry

__all__ = ["Dispatcher", "public_parameters", "to_api_error"]

log = logging.getLogger("jetstream.api")


class Dispatcher:
    """``fire``: where trigger events go; ``on_api``: fire ``on.<command>`` after each."""

    def __init__(self, service: Service, registry: Registry, fire: Fire,
                 on_api: bool = False) -> None:
        self.service = service
        self.registry = registry
        self.fire = fire
        self.on_api = on_api

    async def handle(self, session: Session, request: Request) -> dict[str, Any]:
        """Run one request and return its response (never raises but CancelledError)."""
        started = time.monotonic()
        name, label = request.name, "unknown"  # (the metrics' label: only known names)
        try:
            command, queued = self.registry.resolve(request.name)
            name = label = command.name + ("Async" if queued else "")
            if command.needs_auth and session.user is None:
                raise AuthRequired(
                    f"{command.name} needs an authenticated session: call auth with "
                    "'user' and 'password' (or 'token') first.")
            if session.token is not None and command.needs_auth:
                self.service.check_session_token(session)
                _check_permission(session, command)
            params = command.check_parameters(request.parameters)
            call = Call(self.service, session, self.fire)
            if queued:
                record = self.service.requests.submit(
                    session.user, command.name + "Async", lambda: _run(command, call, params))
                message, result = "Request queued.", {"requestId": record.request_id}
            else:
                message, result = await _run(command, call, params)
            response = success_response(request.id, message, result)
        except ApiError as exc:
            response = error_response(request.id, exc.code, exc.message)
        except Exception:
            log.exception("internal error in %s", request.name)
            response = error_response(request.id, InternalError.code,
                                      f"Internal error while running {request.name}; "
                                      "the server log has the details.")
        stats = self.service.stats
        stats.api_requests[(label, response["status"])] += 1
        if label == "auth" and response["status"] != "success":
            stats.failed_logins["api"] += 1
        log.debug("%s %s %s %s (%.1f ms)", session.peer_text, session.user or "-",
                  request.name, response["status"], (time.monotonic() - started) * 1000)
        if self.on_api:
            structure = {"request": name, "parameters": public_parameters(request.parameters)}
            self.fire(f"on.{name}", _json(structure), response["status"],
                      response["message"], _json(response["result"]))
        return response


def _check_permission(session: Session, command: Command) -> None:
    """Refuse a command the session's token does not permit."""
    token = session.token
    assert token is not None
    if command.permission is not None and command.permission not in token.permissions:
        what = "a shared link's token may only download its files" if \
            token.kind == SHARED else \
            f"it has {', '.join(token.permissions) or 'no permission'}"
        raise TokenPermissionDenied(
            f"{command.name} needs the {command.permission!r} permission, which token "
            f"{token.id} does not have ({what}): ask its owner for a token that has it.")


async def _run(command: Command, call: Call, params: dict[str, Any]) -> tuple[str, Any]:
    """Run a handler, its sandbox refusals turned into API errors (see to_api_error)."""
    try:
        return await command.handler(call, params)
    except PathError as exc:
        raise to_api_error(exc, call.session.token is not None) from None


def to_api_error(exc: PathError, token: bool = False) -> ApiError:
    """The API error a response carries for a refused path: permission_denied for one
    that leads outside the sandbox (outside_token_path in a token session),
    invalid_parameter for any other."""
    if isinstance(exc, PathOutside):
        if token:
            return OutsideTokenPath(f"{exc.message} (a token session is confined to the "
                                    "token's folder)")
        return PermissionDenied(exc.message)
    return InvalidParameter(exc.message)


def public_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters with secrets removed (for logs and triggers)."""
    return {k: v for k, v in parameters.items() if k not in SECRET_PARAMETERS}


def _json(value: Any) -> str:
    """JSON text for trigger arguments."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
