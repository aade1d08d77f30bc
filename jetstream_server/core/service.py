"""The control plane's model, without sockets: objects, sessions, logins, persistence.

:class:`Service` owns the objects (destinations, manifests, transfers, incoming-transfer
records), the transfer scheduler, queued requests, the users file, the login throttle and
the state store; it authenticates sessions, restores and saves state, and collects what
ended. It imports nothing above the core: the server composes it with the data plane
(:meth:`Service.attach`) and with the trigger runner (``fire``), and the commands act on it
(``jetstream_server.commands``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, TypeVar

from .. import __version__
from ..errors import (
    AuthFailed,
    NotFound,
    SetByConfiguration,
    TokenExpired,
    TokenInvalid,
    TokenPermissionDenied,
    TokensDisabled,
    UnreadableSecret,
)
from ..protocol.noise import CIPHERS, public_key_text
from .atrest import SecretBox
from .bandwidth import KEYS, Bandwidth, Limits
from .config import Settings
from .identity import load_api_certificate, load_server_key
from .ids import new_id, now_us
from .lifecycle import MANIFEST, RECEIVE, TRANSFER, ManifestStatus, ReceiveStatus, TransferStatus
from .netaddr import host_port
from .objects import Destination, FileMapping, Manifest, Owned, Transfer
from .ratelog import LimitedLog
from .receives import Grant, ReceiveRecord, remove_partial_files
from .requests import RequestBook, RequestRecord
from .s3store import abandon
from .sandboxes import S3Sandbox, Sandbox, SandboxMappings
from .scheduler import DataPlane, Scheduler
from .stats import Stats
from .store import StateStore
from .throttle import LoginThrottle
from .tokens import API, PERMISSIONS, SHARED, Token, TokenBook, split_token
from .trust import AuthorizedClients
from .users import Accounts, check_user_name

__all__ = ["API_VERSION", "Fire", "Receiver", "Service", "Session"]

log = logging.getLogger("jetstream.api")
limited_log = LimitedLog(log)
T = TypeVar("T", bound=Owned)

#: Compatibility number of the control API, reported as ``apiVersion``.
API_VERSION = 1
#: JetStream's defaults: collect hourly what ended 48 hours ago.
DEFAULT_GC = {"intervalSeconds": 3600, "timeLimitSeconds": 48 * 3600}
#: Destination fields not stored as they are: the password is stored sealed.
_UNSTORED_DESTINATION_FIELDS = frozenset({"remote_password", "remote_token",
                                          "credentials_error", "connection"})

#: fire(event, *arguments, stdin=b"") queues a trigger event (never blocks).
Fire = Callable[..., None]
#: Expired tokens are purged this often (JetStream: within two hours), and at start.
TOKEN_PURGE_S = 3600.0


def _no_triggers(event: str, *args: str, stdin: bytes = b"") -> None:
    """Where events go when the server runs no triggers."""


class RemoteApi(Protocol):
    """How this server calls another one's control API (a shared link is fetched so)."""

    async def call(self, host: str, port: int, fingerprint: str | None, token: str,
                   password: str | None, command: str, parameters: dict[str, Any]) -> Any:
        """Log in to ``host:port`` with ``token`` (and its password) and run one command;
        its result. CommandFailed with the other server's error, ConnectionFailed if it
        cannot be reached or is not the server ``fingerprint`` names."""
        ...


class Receiver(Protocol):
    """What the control plane asks of the receiving side of the data plane."""

    def live_transfers(self) -> list[str]:
        """The ids of the incoming transfers with a session open now."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for getServerInfo's ``receiver``."""
        ...


@dataclass(eq=False)
class Session:
    """One control connection: who is on the other end and what they may do."""

    peer: tuple[str, int]
    user: str | None = None
    raised: bool = False
    #: the token the session logged in with (None: a user's password); it acts as the
    #: token's owner (``user``), in the token's folder, with the token's permissions
    token: Token | None = None
    #: this token login's id (the ``ownerTokenSession`` of what it makes)
    token_session: str | None = None
    #: closes the connection, telling the peer why (set by the connection)
    end: Callable[[str], None] | None = None

    @property
    def peer_text(self) -> str:
        """The peer as ``host:port`` (``[v6]:port``)."""
        return host_port(*self.peer)

    @property
    def root(self) -> str:
        """The folder of the user's sandbox the session sees as ``/``."""
        return self.token.path if self.token is not None else "/"

    def can_see(self, owner: str | None, owner_token: str | None = None) -> bool:
        """Whether the session may see and change what ``owner`` owns (and made with the
        token ``owner_token``): a token sees only what it made; its owner sees all."""
        if self.raised:
            return True
        if owner is None or owner != self.user:
            return False
        return self.token is None or owner_token == self.token.id

    def sees(self, obj: Owned) -> bool:
        """Whether the session may see and change ``obj``."""
        return self.can_see(obj.owner, obj.owner_token)

    @property
    def owner_token(self) -> str | None:
        """The ``ownerToken`` of what this session makes."""
        return self.token.id if self.token is not None else None

    def ownership(self) -> dict[str, str | None]:
        """The owner-token fields of an object this session makes."""
        return {"owner_token": self.owner_token, "owner_token_session": self.token_session}


class Service:
    """The control plane's model (see the module's docstring)."""
    def __init__(self, settings: Settings, users: Accounts, fire: Fire = _no_triggers
                 ) -> None:
        self.settings = settings
        self.users = users
        #: queues a trigger event (the server's trigger runner, or nothing)
        self.fire = fire
        self.server_id = new_id()
        self.start_time_us = now_us()
        self.api_port = settings.api_port
        self.recv_port = settings.recv_port
        self.destinations: dict[str, Destination] = {}
        self.manifests: dict[str, Manifest] = {}
        self.transfers: dict[str, Transfer] = {}
        #: incoming transfers, by transfer id
        self.receives: dict[str, ReceiveRecord] = {}
        self.receiver: Receiver | None = None
        self.scheduler = Scheduler(self.transfers, self.destinations, self.manifests,
                                   on_change=self.save_transfer,
                                   max_sending=settings.transfers_per_destination)
        #: seals the destination passwords the state database holds
        self.secrets = SecretBox.from_key_file(settings.secret_key_file)
        #: this server's long-term key: its identity to other servers
        self.identity = load_server_key(settings.persistent_state_dir / "server.key")
        #: the control port's TLS certificate
        self.api_certificate = load_api_certificate(settings.api_cert, settings.api_key,
                                                    settings.persistent_state_dir)
        self.state = StateStore(settings.persistent_state_dir)
        #: the sending servers trusted by their keys
        self.trust = AuthorizedClients(self.state)
        self._saved_manifests: set[str] = set()
        self.requests = RequestBook(
            on_change=lambda r: self.state.put("request", str(r.request_id), r.to_state()),
            on_forget=lambda r: self.state.delete("request", str(r.request_id)))
        self.throttle = LoginThrottle()
        #: API tokens and shared links
        self.tokens = TokenBook(self.state)
        self._token_sessions: dict[str, weakref.WeakSet[Session]] = {}
        self._token_wakeup: asyncio.Event | None = None
        #: how a shared link is fetched from another server (the server plugs it in)
        self.remote: RemoteApi | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gc_wakeup: asyncio.Event | None = None
        self._gc: dict[str, int] = {**DEFAULT_GC, **(self.state.setting("gc") or {})}
        #: server-wide rate limits and every running transfer's share of them
        self.bandwidth = Bandwidth(self._bandwidth_base(), settings.bandwidth_schedule)
        #: counts since start, for the metrics endpoint
        self.stats = Stats()
        #: which sandbox each user has (setSandboxMappings; --sandbox-dir by default)
        self.sandboxes = SandboxMappings(settings.sandbox_dir, self.state, self.secrets)
        #: where transfers into S3 sandboxes spool what they receive (a spool file is
        #: of one session: none is in use at start)
        self.spool_dir = settings.persistent_state_dir / "s3-spool"
        for spool in self.spool_dir.glob("*.spool"):
            spool.unlink(missing_ok=True)

    def attach(self, data_plane: DataPlane | None, receiver: Receiver | None,
               api_port: int, recv_port: int) -> None:
        """Plug in the data plane, and the ports as bound (at start, by the server that
        composes them)."""
        self.scheduler.data_plane = data_plane
        self.receiver = receiver
        self.api_port, self.recv_port = api_port, recv_port

    # -- authentication ---------------------------------------------------------------

    async def check_login(self, address: str, user: str, password: str, where: str) -> bool:
        """Check a password against the users file's slow hash, in turn with every other
        login (see throttle.py): the API's ``auth`` and a transfer's login alike. A failure
        is logged (``where``: "login" or "transfer login"), without the password, and the
        name only if it exists. AuthFailed when too many attempts wait already."""
        ok = await self._throttled(address, user, lambda: self.users.verify(user, password))
        if not ok:
            known = self.users.exists(user)
            limited_log.warning(where, "failed %s from %s for %s%s", where, address,
                                user if known else "an unknown user",
                                " (data port)" if where == "transfer login" else "")
        return ok

    async def _throttled(self, address: str, name: str, check: Callable[[], bool]) -> bool:
        """Run the slow ``check`` of a login as ``name`` in a thread, in turn with every
        other login (see throttle.py); a check that raises counts as a failure."""
        throttle = self.throttle
        if not throttle.join(address, name, time.monotonic()):
            limited_log.warning("busy", "refused a login from %s: too many attempts waiting",
                                address)
            raise AuthFailed("Too many login attempts for this user or from this address "
                             "at once; try again later.")
        try:
            # (the throttle says how long; an attempt being checked says 20 ms at a time)
            while (wait := throttle.wait_s(address, name, time.monotonic())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            throttle.begin(address, name, time.monotonic())
            ok = False
            try:
                loop = asyncio.get_running_loop()
                ok = await loop.run_in_executor(None, check)
            finally:
                throttle.end(address, name, ok, time.monotonic())
        finally:
            throttle.leave(address, name)
        return ok

    async def check_token(self, address: str, text: str, password: str | None,
                          kind: str, where: str) -> Token:
        """The token of the string ``text`` (of ``kind``, API or shared), checked as a
        login (throttled, in a thread): TokensDisabled, TokenInvalid, TokenPasswordWrong
        or TokenExpired otherwise. A failure is logged with the token's id, never its
        string or password."""
        self.check_tokens_enabled(kind, ": log in with a user name and password")
        token_id = split_token(text)[0]
        failure: list[AuthFailed] = []
        found: list[Token] = []

        def check() -> bool:
            try:
                found.append(self.tokens.check(text, password, now_us()))
            except AuthFailed as exc:
                failure.append(exc)
                return False
            return True

        if not await self._throttled(address, "token " + token_id, check):
            limited_log.warning(where, "failed %s with token %s from %s: %s", where,
                                token_id, address, failure[0].code if failure else "busy")
            raise failure[0] if failure else AuthFailed("The token could not be checked.")
        token = found[0]
        if token.kind != kind:
            raise TokenInvalid("This is a shared link's token: fetch its files with "
                               "recv.downloadSharedLink (jetstream get LINK)." if
                               token.kind == SHARED else "This is an API token, not a "
                               "shared link.")
        return token

    def check_tokens_enabled(self, kind: str, advice: str = "") -> None:
        """TokensDisabled when the operator turned tokens of ``kind`` (API or shared)
        off (``advice``: what to do instead, after a colon)."""
        if {API: self.settings.api_disable_api_tokens,
                SHARED: self.settings.api_disable_shared_tokens}[kind]:
            what = "API tokens" if kind == API else "Shared links"
            raise TokensDisabled(f"{what} are turned off on this server "
                                 f"(--api-disable-{kind}-tokens){advice}.")

    async def authenticate(self, session: Session, user: str, password: str) -> None:
        """Log an API session in (AuthFailed if the password is wrong)."""
        if not await self.check_login(session.peer[0], user, password, "login"):
            raise AuthFailed("Authentication failed: wrong user name or password.")
        session.user, session.raised = user, False
        session.token = session.token_session = None
        log.debug("%s logged in from %s", user, session.peer_text)

    async def authenticate_token(self, session: Session, text: str, password: str | None
                                 ) -> Token:
        """Log an API session in with an API token or a shared link's token: it acts as
        the token's owner, confined to the token (see Session)."""
        try:
            kind = self.tokens.tokens[split_token(text)[0]].kind
        except KeyError:
            kind = API
        token = await self.check_token(session.peer[0], text, password, kind, "login")
        session.user, session.raised = token.owner, False
        session.token, session.token_session = token, new_id()
        self._token_sessions.setdefault(token.id, weakref.WeakSet()).add(session)
        log.debug("token %s of %s logged in from %s", token.id, token.owner,
                  session.peer_text)
        return token

    def is_superuser(self, user: str) -> bool:
        """Whether ``user`` may raise a session (--superuser; --supergroup's members)."""
        return user in self.settings.superuser or \
            bool(self.users.groups_of(user) & set(self.settings.supergroup))

    def check_session_token(self, session: Session) -> None:
        """Refuse a token session whose token was deleted or has expired since it
        logged in (the session then ends)."""
        token = session.token
        if token is None:
            return
        current = self.tokens.tokens.get(token.id)
        if current is None or current.expired(now_us()):
            self.end_token_sessions(token.id, "was deleted" if current is None else "expired")
            if current is None:
                raise TokenInvalid(f"Token {token.id} was deleted; this session is over.")
            raise TokenExpired(f"Token {token.id} expired; this session is over.")

    def end_token_sessions(self, token_id: str, why: str) -> None:
        """End at once every API session logged in with the token."""
        for session in list(self._token_sessions.pop(token_id, ())):
            session.user = None
            if session.end is not None:
                session.end(f"Token {token_id} {why}; this session is over.")

    def add_token(self, token: Token) -> None:
        """Keep a new token (and wake the expiry timer)."""
        self.tokens.add(token)
        if self._token_wakeup is not None:
            self._token_wakeup.set()

    def delete_token(self, token_id: str, why: str = "was deleted") -> Token | None:
        """Remove a token and end its sessions (telling them ``why``)."""
        token = self.tokens.delete(token_id)
        if token is not None:
            self.end_token_sessions(token_id, why)
        return token

    def purge_tokens(self) -> int:
        """Remove the expired tokens; how many went."""
        gone = self.tokens.expired(now_us())
        for token in gone:
            self.delete_token(token.id, "expired")
        if gone:
            log.info("purged %d expired token(s)", len(gone))
        return len(gone)

    async def expire_tokens_forever(self) -> None:
        """End the sessions of each token when it expires; purge expired tokens every
        TOKEN_PURGE_S (a task; cancel to stop)."""
        wakeup = self._token_wakeup = asyncio.Event()
        last_purge = time.monotonic()
        while True:
            now = now_us()
            for token in self.tokens.expired(now):
                if token.id in self._token_sessions:
                    self.end_token_sessions(token.id, "expired")
            if time.monotonic() - last_purge >= TOKEN_PURGE_S:
                self.purge_tokens()
                last_purge = time.monotonic()
            wait = TOKEN_PURGE_S - (time.monotonic() - last_purge)
            upcoming = self.tokens.next_expiry(now)
            if upcoming is not None:
                wait = min(wait, (upcoming - now) / 1e6 + 0.05)
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), max(wait, 0.05))
            except TimeoutError:
                pass

    async def authorize_sender(self, address: str, user: str, password: str | None,
                               client_key: bytes, token: str | None = None) -> Grant:
        """The user an incoming transfer is received as (contract section 10): the
        account ``user`` when ``password`` is its password; else, when the sending
        server's key is authorized, ``user`` (the sending user's name); else
        ``anonymous`` where the operator allows it. With only authorized clients allowed,
        a key not authorized is refused whatever it brings. AuthFailed with the message
        the sender's transfer fails with."""
        key = public_key_text(client_key)
        trusted = self.trust.trusts(key)
        authorize = f"recv.addAuthorizedClientAsync --clientPublicKey={key}"
        if self.trust.only_authorized and not trusted:
            raise AuthFailed(f"The receiving server accepts transfers only from servers it "
                             f"has authorized, and this server's key {key} is not one of "
                             f"them: its operator can authorize it with {authorize}.")
        if token is not None:
            return self._token_grant(await self.check_token(
                address, token, password, API, "transfer login"))
        if password is not None:
            if not await self.check_login(address, user, password, "transfer login"):
                raise AuthFailed(f"The receiving server refused user {user!r}: wrong user "
                                 "name or password.")
            return Grant(user)
        if trusted:
            try:
                return Grant(check_user_name(user))
            except ValueError as exc:
                raise AuthFailed(f"The receiving server refused the sending user's name: "
                                 f"{exc}") from None
        if self.settings.recv_allow_anonymous:
            return Grant("anonymous")
        raise AuthFailed("The receiving server accepts transfers only from its users and "
                         "from servers it has authorized: give the destination the "
                         "destinationUser and destinationPassword of an account on it, or "
                         f"have its operator authorize this server's key {key} ({authorize}).")

    def _token_grant(self, token: Token) -> Grant:
        """What a destination token lets a sender do: write into the token's folder, as
        its owner."""
        if "receive" not in token.permissions:
            raise TokenPermissionDenied(
                f"Token {token.id} does not permit receiving transfers (it has "
                f"{', '.join(token.permissions) or 'no permission'}): its owner can make "
                "one with --permissions=receive.")
        return Grant(token.owner, token.path, token.id)

    # -- objects ----------------------------------------------------------------------

    def sandbox(self, user: str, path: str = "/") -> Sandbox:
        """Where ``user``'s files are: the folder or bucket place ``user`` sees as ``/``
        (or its folder ``path``, a token's)."""
        return self.sandboxes.sandbox(user, path)

    def find_object(self, session: Session, object_id: str) -> Owned:
        """The destination, manifest or transfer of ``object_id`` the session may see;
        NotFound otherwise."""
        for table in (self.destinations, self.manifests, self.transfers):
            obj = table.get(object_id)
            if obj is not None and session.sees(obj):
                return obj
        raise NotFound(f"No destination, manifest or transfer with id {object_id}.")

    def find_destination(self, session: Session, destination_id: str) -> Destination:
        """The destination the session may see; NotFound otherwise."""
        return _visible(self.destinations, session, destination_id, "destination")

    def find_manifest(self, session: Session, manifest_id: str) -> Manifest:
        """The manifest the session may see; NotFound otherwise."""
        return _visible(self.manifests, session, manifest_id, "manifest")

    def find_transfer(self, session: Session, transfer_id: str) -> Transfer:
        """The transfer the session may see; NotFound otherwise."""
        return _visible(self.transfers, session, transfer_id, "transfer")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task that the service owns and cancels on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel the background tasks and queued requests, flush and close the state."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.requests.close()
        await self.state.flush()
        self.state.close()

    # -- persistence ------------------------------------------------------------------

    def save_destination(self, destination: Destination) -> None:
        """Keep a destination (its password sealed), if destinations persist."""
        if not self.settings.persistent_destinations:
            return
        state = {f.name: getattr(destination, f.name) for f in fields(destination)
                 if f.name not in _UNSTORED_DESTINATION_FIELDS}
        for secret, name in ((destination.remote_password, "sealed_password"),
                             (destination.remote_token, "sealed_token")):
            state[name] = None if secret is None else \
                self.secrets.seal(secret, destination.id)
        self.state.put("destination", destination.id, state)

    def _restore_destination(self, row: dict[str, Any]) -> None:
        sealed = row.pop("sealed_password", None)
        sealed_token = row.pop("sealed_token", None)
        plain = row.pop("remote_password", None)  # (stored so before passwords were sealed)
        destination = Destination(**row)
        self.destinations[destination.id] = destination
        if sealed is not None or sealed_token is not None:
            try:
                if sealed is not None:
                    destination.remote_password = self.secrets.open(sealed, destination.id)
                if sealed_token is not None:
                    destination.remote_token = self.secrets.open(sealed_token,
                                                                 destination.id)
            except UnreadableSecret:
                destination.credentials_error = (
                    f"The stored password of destination {destination.id} cannot be read "
                    f"with this server's secret key ({self.settings.secret_key_file} was "
                    "replaced): delete the destination and create it again.")
                log.warning("%s", destination.credentials_error)
        elif plain is not None:
            destination.remote_password = plain
            self.save_destination(destination)  # sealed from now on

    def save_transfer(self, transfer: Transfer) -> None:
        """Keep a transfer and its manifest, if transfers persist."""
        if not self.settings.persistent_transfers or transfer.id not in self.transfers:
            return
        if transfer.manifest_id not in self._saved_manifests:
            manifest = self.manifests.get(transfer.manifest_id)
            if manifest is not None:
                self.state.put("manifest", manifest.id, manifest)
                self._saved_manifests.add(manifest.id)
        self.state.put("transfer", transfer.id, transfer)

    def save_receive(self, record: ReceiveRecord) -> None:
        """Keep an incoming transfer's record, if transfers persist."""
        if self.settings.persistent_transfers:
            self.state.put("receive", record.transfer_id, record.to_state())

    def save_object(self, obj: Owned) -> None:
        """Keep a changed destination, manifest or transfer."""
        if isinstance(obj, Destination):
            self.save_destination(obj)
        elif isinstance(obj, Transfer):
            self.save_transfer(obj)
        elif obj.id in self._saved_manifests:
            self.state.put("manifest", obj.id, obj)

    def forget(self, kind: str, object_id: str) -> None:
        """Remove a deleted object from the stored state."""
        self.state.delete(kind, object_id)
        self._saved_manifests.discard(object_id)

    def restore(self) -> None:
        """Load the stored state; interrupted transfers go back to their queues.

        What the settings no longer keep (``--persistent-destinations false``,
        ``--persistent-transfers false``) is dropped from the store instead."""
        kinds = {"destination": self.settings.persistent_destinations,
                 **dict.fromkeys(("manifest", "transfer", "receive"),
                                 self.settings.persistent_transfers)}
        for kind, keep in kinds.items():
            if not keep:
                for row in self.state.load(kind):
                    self.state.delete(kind, row.get("id") or row["transfer_id"])
        for row in self.state.load("destination") if kinds["destination"] else []:
            self._restore_destination(row)
        for row in self.state.load("manifest") if kinds["manifest"] else []:
            manifest = Manifest(**{
                **row, "status": ManifestStatus(row["status"]),
                "files": [FileMapping(**f) for f in row["files"]],
                "requested": [tuple(pair) for pair in row["requested"]]})
            if manifest.status is ManifestStatus.PENDING:  # stopped while it was built
                manifest.status = MANIFEST.move(manifest.id, manifest.status, "fail")
                manifest.error_message = "The server restarted while it was being built."
            self.manifests[manifest.id] = manifest
            self._saved_manifests.add(manifest.id)
        for row in self.state.load("transfer") if kinds["transfer"] else []:
            transfer = Transfer(**{**row, "status": TransferStatus(row["status"])})
            if transfer.status is TransferStatus.SENDING:  # resumes from the checkpoint
                transfer.status = TRANSFER.move(transfer.id, transfer.status, "restart")
            lost = [what for what, table, key in (
                ("manifest", self.manifests, transfer.manifest_id),
                ("destination", self.destinations, transfer.destination_id))
                if key not in table]
            if lost and not transfer.status.ended:
                transfer.status = TRANSFER.move(transfer.id, transfer.status, "fail")
                transfer.error_message = (f"Its {' and '.join(lost)} did not survive the "
                                          "restart of the server.")
            self.transfers[transfer.id] = transfer
        self.scheduler.restored()
        self.purge_tokens()
        self.requests.restore([RequestRecord.from_state(row)
                               for row in self.state.load("request")])
        for row in self.state.load("receive") if kinds["receive"] else []:
            record = ReceiveRecord.from_state(row)
            self.receives[record.transfer_id] = record
        if self.transfers or self.destinations:
            log.info("restored %d destination(s), %d manifest(s), %d transfer(s)",
                     len(self.destinations), len(self.manifests), len(self.transfers))

    # -- garbage collection -------------------------------------------------------------

    @property
    def gc_settings(self) -> dict[str, int]:
        """The garbage collection settings (intervalSeconds, timeLimitSeconds)."""
        return dict(self._gc)

    def update_gc_settings(self, settings: dict[str, int]) -> dict[str, int]:
        """Change them (stored), and start the interval again."""
        self._gc.update(settings)
        self.state.put_setting("gc", self._gc)
        if self._gc_wakeup is not None:
            self._gc_wakeup.set()
        return self.gc_settings

    def _remove_partial(self, record: ReceiveRecord) -> None:
        """Free what an abandoned incoming transfer holds: its temporary files, or in an
        S3 sandbox its multipart uploads (aborted in a thread) and spool files."""
        if not any(path.startswith("s3://") for path in record.output_files):
            remove_partial_files(record)
            return
        sandbox = self.sandbox(record.user, record.path)
        if isinstance(sandbox, S3Sandbox):
            self.spawn(asyncio.to_thread(abandon, sandbox, self.spool_dir, record.transfer_id))

    def garbage_collect(self) -> dict[str, int]:
        """Remove what ended more than timeLimitSeconds ago; counts of what went."""
        limit_us = now_us() - self.gc_settings["timeLimitSeconds"] * 1_000_000
        removed = {"transfers": 0, "manifests": 0, "receives": 0}
        for transfer in list(self.transfers.values()):
            if transfer.status.ended and (transfer.end_time_us or 0) <= limit_us:
                del self.transfers[transfer.id]
                self.forget("transfer", transfer.id)
                removed["transfers"] += 1
        used = {t.manifest_id for t in self.transfers.values()}
        for manifest in list(self.manifests.values()):
            if manifest.id not in used and manifest.create_time_us <= limit_us and \
                    manifest.status is not ManifestStatus.PENDING:
                del self.manifests[manifest.id]
                self.forget("manifest", manifest.id)
                removed["manifests"] += 1
        live = set(self.receiver.live_transfers()) if self.receiver is not None else set()
        for record in list(self.receives.values()):
            last = record.last_recv_time_us or record.start_time_us
            if record.status is ReceiveStatus.RECEIVING and record.transfer_id not in live \
                    and last <= limit_us:  # abandoned by its sender: free the disk
                self._remove_partial(record)
                record.status = RECEIVE.move(record.transfer_id, record.status, "fail")
                record.end_time_us = now_us()
                record.error_message = "Abandoned: the sender did not come back."
                record.checkpoint = None
            if record.status is not ReceiveStatus.RECEIVING and \
                    (record.end_time_us or 0) <= limit_us:
                if record.checkpoint is not None:  # kept for a resume that did not come
                    self._remove_partial(record)
                del self.receives[record.transfer_id]
                self.forget("receive", record.transfer_id)
                removed["receives"] += 1
        if any(removed.values()):
            log.info("garbage collection removed %(transfers)d transfer(s), %(manifests)d "
                     "manifest(s), %(receives)d incoming transfer record(s)", removed)
        return removed

    async def collect_garbage_forever(self) -> None:
        """Collect every intervalSeconds (a task; cancel to stop)."""
        self._gc_wakeup = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._gc_wakeup.wait(),
                                       self.gc_settings["intervalSeconds"])
                self._gc_wakeup.clear()  # the interval changed: start it again
                continue
            except TimeoutError:
                pass
            self.garbage_collect()

    # -- server-wide rate limits -------------------------------------------------------

    def _bandwidth_base(self) -> Limits:
        """The limits the configuration gives; those it leaves out as
        updateBandwidthLimits last set them (stored), else none."""
        stored = self.state.setting("bandwidth") or {}
        return Limits(**{attr: stored.get(attr, getattr(self.settings, attr))
                         if attr in self.settings.defaulted else getattr(self.settings, attr)
                         for attr in KEYS.values()})

    def update_bandwidth_limits(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the base limits (API keys), at once for running transfers, and keep
        them across restarts; SetByConfiguration for a limit the configuration gives."""
        for key in changes:
            attr = KEYS[key]
            if attr not in self.settings.defaulted:
                flag = "--" + attr.replace("_", "-")
                raise SetByConfiguration(
                    f"{key} is set by {flag} in this server's configuration (its command "
                    f"line, the environment variable JETSTREAM_{attr.upper()} or the "
                    f"config file); change it there and restart the server, or remove it "
                    "there to manage it with updateBandwidthLimits.")
        base = replace(self.bandwidth.base, **{KEYS[k]: v for k, v in changes.items()})
        self.bandwidth.set_base(base)
        self.state.put_setting("bandwidth", {attr: getattr(base, attr) for attr in
                                             KEYS.values() if attr in self.settings.defaulted})
        log.info("bandwidth limits changed: %s", base.to_api())
        return self.bandwidth.to_api()

    async def follow_bandwidth_schedule_forever(self) -> None:
        """Apply the schedule's limits at each of its boundaries (a task; cancel to
        stop). Checked every minute as well, so that a change of the clock is followed."""
        while self.bandwidth.schedule:
            now = dt.datetime.now()
            self.bandwidth.tick(now)
            wait = (self.bandwidth.next_boundary(now) - now).total_seconds()
            await asyncio.sleep(min(wait, 60.0) + 0.01)

    # -- server information -----------------------------------------------------------

    def server_info(self, session: Session) -> dict[str, Any]:
        """The Server Information structure (with the configuration for a raised session)."""
        info: dict[str, Any] = {
            "allowRemoteControl": self.settings.api_allow_remote_control,
            "apiControlPort": self.api_port,
            "bandwidthLimits": self.bandwidth.to_api(),
            "apiVersion": API_VERSION,
            "APITokensAvailable": not self.settings.api_disable_api_tokens,
            "sharedTokensAvailable": not self.settings.api_disable_shared_tokens,
            "tokenPermissions": dict(PERMISSIONS),
            "authRequired": True,
            "certificateFingerprint": self.api_certificate.fingerprint,
            "certificateValidation": self.api_certificate.days_left(),
            "dataCipher": self.settings.data_cipher,
            "dataCiphers": list(CIPHERS),
            "encryptionAvailable": True,
            "encryptionEnabled": not self.settings.no_data_encryption,
            "eventLogAvailable": False,
            "hostName": socket.gethostname(),
            "minCipher": "none" if self.settings.no_data_encryption else "aes-256-gcm",
            "publicKey": public_key_text(self.identity.public),
            "receiver": {
                "recvPort": self.recv_port,
                "allowAnonymous": self.settings.recv_allow_anonymous,
                "allowOnlyAuthorizedClients": self.trust.only_authorized,
                "dataTransports": ["udp", "tcp"],
                **(self.receiver.stats() if self.receiver is not None else {}),
            },
            "sandboxTypes": ["local", "S3"],
            "serverExternalAddress": self.settings.external_address,
            "serverId": self.server_id,
            "serverName": self.settings.server_name,
            "startTime": self.start_time_us,
            "version": __version__,
        }
        if session.raised:
            info["configuration"] = self.settings.public()
            info["sandboxMappings"] = self.sandboxes.kinds()
        return info


def _visible(table: dict[str, T], session: Session, object_id: str,
                       kind: str) -> T:
    obj = table.get(object_id)
    if obj is None or not session.sees(obj):
        raise NotFound(f"No {kind} with id {object_id}.")
    return obj

