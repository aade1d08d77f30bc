"""The one exception tree of jetstream-server.

Every error an API client can see is an :class:`ApiError` subclass, and each subclass
carries the stable machine-readable ``code`` that error responses include::

    JetStreamError
    ├── ApiError                      (code; shown to API clients)
    │   ├── MalformedRequest          malformed_request
    │   ├── LineTooLong               line_too_long      (the connection is closed)
    │   ├── UnknownCommand            unknown_command
    │   ├── AmbiguousCommand          ambiguous_command
    │   ├── MissingParameter          missing_parameter
    │   ├── InvalidParameter          invalid_parameter
    │   ├── AuthRequired              auth_required
    │   ├── AuthFailed                auth_failed
    │   ├── PermissionDenied          permission_denied
    │   ├── RemoteControlRefused      remote_control_refused
    │   ├── NotFound                  not_found
    │   ├── InvalidState              invalid_state
    │   ├── Busy                      busy
    │   ├── ConnectionDropped         connection_closed  (idle before login, or evicted)
    │   └── InternalError             internal_error
    └── ConfigError                   (bad server settings: one line, exit status 2)
"""

from __future__ import annotations

__all__ = [
    "AmbiguousCommand",
    "ApiError",
    "AuthFailed",
    "AuthRequired",
    "Busy",
    "ConfigError",
    "ConnectionDropped",
    "InternalError",
    "InvalidParameter",
    "InvalidState",
    "JetStreamError",
    "LineTooLong",
    "MalformedRequest",
    "MissingParameter",
    "NotFound",
    "PermissionDenied",
    "RemoteControlRefused",
    "UnknownCommand",
    "quoted",
]


def quoted(text: str, limit: int = 80) -> str:
    """``text`` (a user's input) quoted for an error message, cut short if long."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class JetStreamError(Exception):
    """Base of every error raised on purpose by jetstream-server."""


class ConfigError(JetStreamError):
    """A server setting is unusable; the message says what to fix."""


class ApiError(JetStreamError):
    """An error reported to an API client as ``status: error`` with ``code``."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: The ``id`` of the request that failed, when it could be read.
        self.request_id: object = None


class MalformedRequest(ApiError):
    code = "malformed_request"


class LineTooLong(ApiError):
    code = "line_too_long"


class UnknownCommand(ApiError):
    code = "unknown_command"


class AmbiguousCommand(ApiError):
    code = "ambiguous_command"


class MissingParameter(ApiError):
    code = "missing_parameter"


class InvalidParameter(ApiError):
    code = "invalid_parameter"


class AuthRequired(ApiError):
    code = "auth_required"


class AuthFailed(ApiError):
    code = "auth_failed"


class PermissionDenied(ApiError):
    code = "permission_denied"


class RemoteControlRefused(ApiError):
    code = "remote_control_refused"


class NotFound(ApiError):
    code = "not_found"


class InvalidState(ApiError):
    code = "invalid_state"


class Busy(ApiError):
    code = "busy"


class ConnectionDropped(ApiError):
    """The server closed a connection that had not logged in (silent, idle, or closed to
    make room for a new one); the last line it gets says which."""

    code = "connection_closed"


class InternalError(ApiError):
    code = "internal_error"


#: Every code an error response can carry, for documentation and clients.
ERROR_CODES: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        MalformedRequest,
        LineTooLong,
        UnknownCommand,
        AmbiguousCommand,
        MissingParameter,
        InvalidParameter,
        AuthRequired,
        AuthFailed,
        PermissionDenied,
        RemoteControlRefused,
        NotFound,
        InvalidState,
        Busy,
        ConnectionDropped,
        InternalError,
    )
}
