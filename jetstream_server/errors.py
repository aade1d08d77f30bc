"""The one exception tree of jetstream-server (and of its client library).

Every error raised on purpose is a :class:`JetStreamError` with a stable ``code``. A
:class:`LocalError` is refused here: bad input from our own user or from a peer, or a
condition of this machine. A :class:`RemoteError` is what a peer answered (or that it did
not answer as it should). The command layer turns the disk and sandbox errors into the
API errors a response carries, in one place (``commands/dispatch.py``)::

    JetStreamError                    code
    ├── LocalError
    │   ├── ConfigError               config             bad server settings (exit status 2)
    │   ├── UsageError                usage              bad console arguments (exit status 2)
    │   ├── ApiError                  (below)            what an API error response carries
    │   │   ├── MalformedRequest      malformed_request
    │   │   ├── LineTooLong           line_too_long      (the connection is closed)
    │   │   ├── UnknownCommand        unknown_command
    │   │   ├── AmbiguousCommand      ambiguous_command
    │   │   ├── MissingParameter      missing_parameter
    │   │   ├── InvalidParameter      invalid_parameter
    │   │   ├── AuthRequired          auth_required
    │   │   ├── AuthFailed            auth_failed
    │   │   │   ├── TokenInvalid      token_invalid      no such token, or a wrong token string
    │   │   │   ├── TokenPasswordWrong token_password_wrong  its password (passphrase) is wrong
    │   │   │   ├── TokenExpired      token_expired      past its expiryTime
    │   │   │   └── TokensDisabled    tokens_disabled    --api-disable-(api|shared)-tokens
    │   │   ├── PermissionDenied      permission_denied
    │   │   │   ├── TokenPermissionDenied token_permission_denied  not in the token's permissions
    │   │   │   ├── OutsideTokenPath  outside_token_path a path that leaves the token's folder
    │   │   │   └── DownloadLimitReached download_limit_reached  a shared link used up
    │   │   ├── RemoteControlRefused  remote_control_refused
    │   │   ├── TlsRequired           tls_required       plain text from another machine
    │   │   ├── NotFound              not_found
    │   │   ├── InvalidState          invalid_state
    │   │   ├── Busy                  busy
    │   │   ├── ConnectionDropped     connection_closed  (idle before login, or evicted)
    │   │   └── InternalError         internal_error
    │   ├── PathError                 path               a path that cannot be used
    │   │   ├── PathRefused           path_refused       ('..', NUL, names no file)
    │   │   └── PathOutside           path_outside       (leads outside the sandbox)
    │   ├── DiskError                 disk               writing received files (.curable)
    │   │   └── StorageUnavailable    storage_unavailable the object store cannot be reached
    │   ├── SourceError               source             reading a file to send
    │   │   └── SourceUnavailable     source_unavailable its object store cannot be reached
    │   ├── ManifestError             manifest           building a manifest
    │   └── UnreadableSecret          secret             a stored secret this key cannot open
    └── RemoteError
        ├── CommandFailed             (the server's)     an API server answered an error
        ├── TransferFailed            transfer_failed    a transfer waited for ended in error
        ├── ConnectionFailed          unreachable        it cannot be reached, or closed
        │   └── UntrustedServer       untrusted_server   its certificate is not the one trusted
        └── Garbage                   garbage            bytes that are not of the protocol
            ├── Truncated             truncated          a message cut short
            ├── Replayed              replayed           a sealed message seen before
            └── Unauthenticated       unauthenticated    a sealed message that fails its tag
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_CODES",
    "AmbiguousCommand",
    "ApiError",
    "AuthFailed",
    "AuthRequired",
    "Busy",
    "CommandFailed",
    "ConfigError",
    "ConnectionDropped",
    "ConnectionFailed",
    "DiskError",
    "DownloadLimitReached",
    "Garbage",
    "InternalError",
    "InvalidParameter",
    "InvalidState",
    "JetStreamError",
    "LineTooLong",
    "LocalError",
    "MalformedRequest",
    "ManifestError",
    "MissingParameter",
    "NotFound",
    "OutsideTokenPath",
    "PathError",
    "PathOutside",
    "PathRefused",
    "PermissionDenied",
    "RemoteControlRefused",
    "RemoteError",
    "Replayed",
    "SourceError",
    "SourceUnavailable",
    "StorageUnavailable",
    "TlsRequired",
    "TokenExpired",
    "TokenInvalid",
    "TokenPasswordWrong",
    "TokenPermissionDenied",
    "TokensDisabled",
    "TransferFailed",
    "Truncated",
    "Unauthenticated",
    "UnknownCommand",
    "UnreadableSecret",
    "UntrustedServer",
    "UsageError",
    "quoted",
]


def quoted(text: str, limit: int = 80) -> str:
    """``text`` (a user's input) quoted for an error message, cut short if long."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class JetStreamError(Exception):
    """Base of every error raised on purpose by jetstream-server; ``message`` says what
    went wrong in words a user can act on."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalError(JetStreamError):
    """Refused here: bad input from our own user or a peer, or a condition of this
    machine."""


class RemoteError(JetStreamError):
    """What a peer answered, or that it did not answer as it should."""


class ConfigError(LocalError):
    """A server setting is unusable; the message says what to fix."""

    code = "config"


class UsageError(LocalError):
    """The console's arguments cannot make a request; the message says why."""

    code = "usage"


class ApiError(LocalError):
    """An error reported to an API client as ``status: error`` with ``code``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
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


class TokenInvalid(AuthFailed):
    code = "token_invalid"


class TokenPasswordWrong(AuthFailed):
    code = "token_password_wrong"


class TokenExpired(AuthFailed):
    code = "token_expired"


class TokensDisabled(AuthFailed):
    code = "tokens_disabled"


class PermissionDenied(ApiError):
    code = "permission_denied"


class TokenPermissionDenied(PermissionDenied):
    code = "token_permission_denied"


class OutsideTokenPath(PermissionDenied):
    code = "outside_token_path"


class DownloadLimitReached(PermissionDenied):
    code = "download_limit_reached"


class RemoteControlRefused(ApiError):
    code = "remote_control_refused"


class TlsRequired(ApiError):
    """A plain-text API connection from another machine: it must use TLS."""

    code = "tls_required"


class NotFound(ApiError):
    code = "not_found"


class InvalidState(ApiError):
    code = "invalid_state"


class SetByConfiguration(InvalidState):
    """A setting the operator gave in the server's configuration (flag, environment or
    config file) cannot be changed through the API."""

    code = "set_by_configuration"


class Busy(ApiError):
    code = "busy"


class ConnectionDropped(ApiError):
    """The server closed a connection that had not logged in (silent, idle, or closed to
    make room for a new one); the last line it gets says which."""

    code = "connection_closed"


class InternalError(ApiError):
    code = "internal_error"


#: Every code an error response can carry, and its class.
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
        TokenInvalid,
        TokenPasswordWrong,
        TokenExpired,
        TokensDisabled,
        PermissionDenied,
        TokenPermissionDenied,
        OutsideTokenPath,
        DownloadLimitReached,
        RemoteControlRefused,
        TlsRequired,
        NotFound,
        InvalidState,
        SetByConfiguration,
        Busy,
        ConnectionDropped,
        InternalError,
    )
}


def api_error(code: str, message: str) -> ApiError:
    """The API error of ``code`` (a plain ApiError for a code this version does not know)."""
    known = ERROR_CODES.get(code)
    if known is not None:
        return known(message)
    error = ApiError(message)
    error.code = code
    return error


class PathError(LocalError):
    """A user's path that cannot be used (the message names it)."""

    code = "path"


class PathRefused(PathError):
    """A path with ``..`` or a NUL byte, or one that names no file."""

    code = "path_refused"


class PathOutside(PathError):
    """A path whose real location (symlinks resolved) is outside the sandbox."""

    code = "path_outside"


class DiskError(LocalError):
    """Received files cannot be written (the message names the path). ``curable``: a
    condition of this machine (a full disk, a permission) that the operator can fix, after
    which the transfer can be resumed."""

    code = "disk"

    def __init__(self, message: str, curable: bool = False) -> None:
        super().__init__(message)
        self.curable = curable


class StorageUnavailable(DiskError):
    """An S3 sandbox's endpoint cannot be reached (or answers with a server error): the
    receiving session pauses, keeping what is stored, and its sender tries again later."""

    code = "storage_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, curable=True)


class SourceError(LocalError):
    """A source file cannot be sent as the manifest describes it (the message names it)."""

    code = "source"


class SourceUnavailable(SourceError):
    """An S3 sandbox's endpoint cannot be reached while its objects are sent: the session
    ends, keeping what the receiver has, and the transfer tries again later."""

    code = "source_unavailable"


class ManifestError(LocalError):
    """Why a manifest could not be built (the message names the path)."""

    code = "manifest"


class UnreadableSecret(LocalError):
    """A sealed secret that this key cannot open (the key file was replaced)."""

    code = "secret"


class CommandFailed(RemoteError):
    """An API server answered a command with ``status: error``: its ``code`` and
    ``message`` (the code is one of :data:`ERROR_CODES` from a server of this version)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class TransferFailed(RemoteError):
    """A transfer waited for ended in error or was cancelled: ``transfer`` is its last
    Transfer structure (``errorMessage``, ``errorCode``, ``status``)."""

    code = "transfer_failed"

    def __init__(self, transfer: dict[str, Any]) -> None:
        super().__init__(f"Transfer {transfer.get('transferId')} {transfer.get('status')}: "
                         f"{transfer.get('errorMessage') or 'cancelled'}")
        self.transfer = transfer


class ConnectionFailed(RemoteError):
    """The server could not be reached, or closed the connection."""

    code = "unreachable"


class UntrustedServer(ConnectionFailed):
    """A TLS server whose certificate is not the one trusted (pinned, remembered, or
    signed by the CA given): the message says how to proceed."""

    code = "untrusted_server"


class Garbage(RemoteError):
    """The bytes a peer sent are not a valid message of the data protocol;
    ``counter``: the name under which such drops are counted."""

    code = "garbage"
    counter = "garbage"


class Truncated(Garbage):
    """A message shorter than its kind's fixed part."""

    code = counter = "truncated"


class Replayed(Garbage):
    """A sealed message whose packet number was seen before, or is too old to tell."""

    code = counter = "replayed"


class Unauthenticated(Garbage):
    """A sealed message (or handshake) whose authentication tag does not verify: changed,
    forged, or sealed with other keys."""

    code = "unauthenticated"
    counter = "failedAuthentication"
