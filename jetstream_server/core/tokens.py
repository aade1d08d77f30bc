"""API tokens and shared links: what a token is, how its string is checked, and its book.

A token is a login that is not a password: a random secret, shown once, that acts as the
user who made it, narrowed to a folder of that user's sandbox (``path``, which becomes its
``/``) and to ``permissions``; it may also need a password, and it expires. A *shared*
token (a shared link) is bound to a manifest instead: with it, someone with no account
can have the server send that manifest's files to their own server, ``downloadLimit``
times at most.

The token string is ``jst.<id>.<secret>``: the id is public (objects, logs and triggers
name it), the secret is 32 random bytes. Only a slow hash of the secret (and of the
password) is kept; a string that checked out is remembered in memory only, as an HMAC
under a key of this process's, as the users file's passwords are.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameter, TokenExpired, TokenInvalid, TokenPasswordWrong
from ..protocol.wire import DEFAULT_PORT
from .ids import new_id, now_us
from .users import hash_password, verify_password

if TYPE_CHECKING:
    from .store import StateStore

__all__ = ["API", "DEFAULT_PERMISSIONS", "DOWNLOAD", "PERMISSIONS", "SHARED", "Token",
           "TokenBook", "make_link", "parse_expiry", "parse_link", "split_token"]

API, SHARED = "api", "shared"

#: What an API token may be allowed to do, and the commands each permission opens (this
#: table is what getServerInfo lists and docs/operations.md explains).
PERMISSIONS: dict[str, str] = {
    "read": "see its own objects: get* commands, getRequestStatus/getRequestResult, "
            "recv.getTransfers and recv.getSources",
    "send": "create, change and delete destinations, manifests and transfers, with files "
            "read from the token's folder",
    "receive": "be a destinationToken: incoming transfers written into the token's folder; "
               "and recv.downloadSharedLink into it",
    "share": "create and delete shared links (send.createSharedToken) of its manifests",
    "tokens": "create and delete API tokens of its own, no wider than itself",
}
#: A token made without ``permissions`` gets these (not ``tokens``).
DEFAULT_PERMISSIONS = ("read", "send", "receive", "share")
#: What a shared link's session may do: send.downloadSharedToken, and nothing else.
DOWNLOAD = "download"

_PREFIX = "jst"
_STRING = re.compile(r"^jst\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Strings remembered as checked (see TokenBook).
_VERIFIED_CACHE = 1024


def parse_expiry(value: Any, now: int) -> int | None:
    """An ``expiryTime`` as microseconds since the epoch: an integer time, null (never),
    or the client forms ``30m``, ``12h``, ``7d``, ``2w`` (from now)."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise InvalidParameter(
                f"expiryTime {value!r}: give a time in microseconds since 1970, or a "
                "duration from now such as 30m, 12h, 7d or 2w.")
        return now + int(match.group(1)) * _UNIT_S[match.group(2)] * 1_000_000
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= now:
            raise InvalidParameter("expiryTime is in the past (it is in microseconds since "
                                   "1970; or give a duration such as 12h).")
        return value
    raise InvalidParameter("expiryTime must be an integer (microseconds since 1970), a "
                           "duration such as 12h, or null.")


def split_token(text: str) -> tuple[str, str]:
    """(id, secret) of a token string; TokenInvalid if it is not one."""
    match = _STRING.match(text.strip())
    if match is None:
        raise TokenInvalid("This is not a token string: a token string is "
                           "jst.<32 hex digits>.<43 characters>, as createAPIToken or "
                           "send.createSharedToken returned it.")
    return match.group(1), match.group(2)


@dataclass
class Token:
    """An API token or a shared link (``kind``), as stored (hashes, never secrets)."""

    id: str
    kind: str
    owner: str
    create_time_us: int
    secret_hash: str = field(repr=False)
    permissions: list[str]
    #: the folder of the owner's sandbox the token is confined to (a virtual path)
    path: str = "/"
    expiry_time_us: int | None = None
    password_hash: str | None = field(default=None, repr=False)
    description: str = ""
    user_data: dict[str, Any] = field(default_factory=dict)
    owner_token: str | None = None
    owner_token_session: str | None = None
    #: a shared link's manifest, limit and count of the transfers made with it
    manifest_id: str | None = None
    download_limit: int | None = None
    download_count: int = 0

    def expired(self, now: int) -> bool:
        """Whether the token is past its expiry time at ``now``."""
        return self.expiry_time_us is not None and self.expiry_time_us <= now

    def to_api(self) -> dict[str, Any]:
        """The Token structure (no secret and no hash, ever)."""
        api: dict[str, Any] = {
            "token": self.id,
            "owner": self.owner,
            "ownerToken": self.owner_token,
            "ownerTokenSession": self.owner_token_session,
            "permissions": list(self.permissions),
            "passwordRequired": self.password_hash is not None,
            "creationTime": self.create_time_us,
            "expiryTime": self.expiry_time_us,
            "description": self.description,
            "userData": self.user_data,
        }
        if self.kind == API:
            api["path"] = self.path
        else:
            api.update(manifestId=self.manifest_id, downloadLimit=self.download_limit,
                       downloadCount=self.download_count)
        return api


class TokenBook:
    """The server's tokens, kept in the state store (kind ``token``)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.tokens: dict[str, Token] = {}
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[bytes, str] = {}
        for row in state.load("token"):
            token = Token(**row)
            self.tokens[token.id] = token

    def create(self, token_fields: dict[str, Any], password: str | None
               ) -> tuple[Token, str]:
        """A new token (slow: two hashes; call it off the event loop), and its string."""
        secret = secrets.token_urlsafe(32)
        token_id = new_id()
        token = Token(id=token_id, create_time_us=now_us(),
                      secret_hash=hash_password(secret),
                      password_hash=None if password is None else hash_password(password),
                      **token_fields)
        return token, f"{_PREFIX}.{token_id}.{secret}"

    def add(self, token: Token) -> None:
        """Keep a new token."""
        self.tokens[token.id] = token
        self.save(token)

    def save(self, token: Token) -> None:
        """Store a changed token (its download count)."""
        self.state.put("token", token.id, token)

    def delete(self, token_id: str) -> Token | None:
        """Remove a token; the token, if there was one."""
        token = self.tokens.pop(token_id, None)
        if token is not None:
            self.state.delete("token", token_id)
        return token

    def check(self, text: str, password: str | None, now: int) -> Token:
        """The token ``text`` is the string of, if ``password`` is its password (slow:
        call it off the event loop). TokenInvalid, TokenPasswordWrong or TokenExpired,
        in that order: nothing is told of a token to one who does not hold its string."""
        token_id, secret = split_token(text)
        token = self.tokens.get(token_id)
        if token is None or not self._verify(secret, token.secret_hash):
            raise TokenInvalid("No such token: it was deleted, it expired and was purged, "
                               "or the token string is wrong.")
        if token.password_hash is not None and (
                password is None or not self._verify(password, token.password_hash)):
            raise TokenPasswordWrong(
                "This token needs its password: " + ("the password given is wrong." if
                password is not None else "give it with the token."))
        if token.expired(now):
            raise TokenExpired(f"Token {token.id} expired; ask its owner ({token.owner}) "
                               "for a new one.")
        return token

    def _verify(self, secret: str, stored: str) -> bool:
        key = hmac.new(self._pepper, secret.encode("utf-8", "surrogatepass"),
                       "sha256").digest()
        if self._verified.get(key) == stored:
            return True
        ok = verify_password(secret, stored)
        if ok:
            if len(self._verified) >= _VERIFIED_CACHE:
                self._verified.clear()
            self._verified[key] = stored
        return ok

    def expired(self, now: int) -> list[Token]:
        """The tokens past their expiry time."""
        return [t for t in self.tokens.values() if t.expired(now)]

    def next_expiry(self, after: int) -> int | None:
        """The earliest expiry time later than ``after``, if any."""
        times = [t.expiry_time_us for t in self.tokens.values()
                 if t.expiry_time_us is not None and t.expiry_time_us > after]
        return min(times, default=None)


def make_link(address: str, text: str, fingerprint: str) -> str:
    """The link a person pastes: the sharing server's control port, the shared token's
    string, and the fingerprint of the server's certificate (so that the recipient's
    server talks to that server and no other)."""
    body = fingerprint.partition(":")[2]
    digest = base64.b64decode(body + "=" * (-len(body) % 4))
    return f"jetstream://{address}/{text}?fingerprint={digest.hex()}"


def parse_link(link: str) -> tuple[str, int, str, str]:
    """(host, port, token string, fingerprint) of a shared link; InvalidParameter saying
    what is wrong if it is not one."""
    parts = urllib.parse.urlsplit(link.strip())
    fingerprint = urllib.parse.parse_qs(parts.query).get("fingerprint", [""])[0]
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = 0
    if parts.scheme != "jetstream" or not parts.hostname or not port or \
            not _STRING.match(parts.path.lstrip("/")) or not fingerprint:
        raise InvalidParameter(
            "This is not a shared link: a link is jetstream://HOST:PORT/jst.<id>.<secret>"
            "?fingerprint=<hex>, as send.createSharedToken returned it.")
    return parts.hostname, port, parts.path.lstrip("/"), fingerprint
