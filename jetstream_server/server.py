"""The server: listeners and control connections around a :class:`Service`.

Shaped like :class:`asyncio.Server`: ``start()``, ``serve_forever()``, ``close()``,
``wait_closed()`` and ``async with``. It installs no signal handlers and talks to no
service manager; the CLI does, so tests can embed whole servers in one process.

Listening: the control API on TCP ``--api-host``:``--api-port`` (all interfaces by default,
one dual-stack socket), and the data port ``--recv-port`` on UDP. Port 0 picks a free port;
when the data port number equals the API port number (the default, 8886, or both 0) the
data port takes the API's real number.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from .client import AsyncClient
from .commands import build_registry
from .commands.dispatch import Dispatcher
from .core.config import Settings, default_home
from .core.connections import ConnectionGuard, Tracked
from .core.netaddr import host_port, is_loopback, plain_host
from .core.pam import PamAccounts
from .core.private import private_dir
from .core.ratelog import LimitedLog
from .core.scheduler import DataPlane
from .core.service import Service, Session
from .core.users import Accounts, UserStore, write_users_file
from .dataplane.receiving import DataEndpoint, DataStream, StreamWatch
from .dataplane.sending import SendingPlane
from .errors import (
    ApiError,
    Busy,
    ConfigError,
    ConnectionDropped,
    RemoteControlRefused,
    TlsRequired,
)
from .metrics import MetricsServer
from .protocol.lines import (
    MAX_LINE_BYTES,
    LineDecoder,
    decode_request,
    encode_message,
    error_response,
)
from .protocol.noise import CIPHERS
from .protocol.tls import TLS_RECORD_HANDSHAKE, TlsPipe
from .protocol.wire import TCP_PREFACE
from .triggers import TriggerRunner

__all__ = ["Server", "is_loopback", "prepare_settings"]

log = logging.getLogger("jetstream.server")
limited_log = LimitedLog(log)

#: Lines queued on one connection before the server stops reading from it.
MAX_QUEUED_LINES = 32
#: Before it logs in, a connection's lines may be this long, and this many may wait:
#: what an unauthenticated peer can make the server hold is small and fixed.
UNAUTHENTICATED_LINE_BYTES = 16 * 1024
UNAUTHENTICATED_QUEUED_LINES = 8
#: TCP keepalive: a silent peer is probed after 60 s, every 15 s, and dropped after 4
#: unanswered probes (about two minutes), so a vanished machine frees its connection.
KEEPALIVE = ((socket.TCP_KEEPIDLE, 60), (socket.TCP_KEEPINTVL, 15), (socket.TCP_KEEPCNT, 4))
#: How often connections past their time are looked for.
SWEEP_S = 1.0
#: How long a connection closed after an error line may still send (what it sends is
#: dropped) before it is closed.
LINGER_S = 2.0


def prepare_settings(settings: Settings) -> Accounts:
    """Check the settings that name files and folders; create the default ones.

    Raises :class:`ConfigError` with one line that says what to fix.
    """
    defaulted = settings.defaulted
    pam = settings.auth == "pam"
    if defaulted & {"users_file", "sandbox_dir", "persistent_state_dir", "secret_key_file"}:
        private_dir(default_home())
    if "users_file" in defaulted and not settings.users_file.exists() and not pam:
        write_users_file(settings.users_file, {})
        log.warning("created an empty users file %s: add a user with "
                    "'jetstream-server user add NAME --users-file %s'",
                    settings.users_file, settings.users_file)
    users: Accounts = PamAccounts(settings.pam_service) if pam else \
        UserStore(settings.users_file)
    if "sandbox_dir" in defaulted:
        os.makedirs(settings.sandbox_dir, exist_ok=True)
    fixed = settings.sandbox_dir.split("%", 1)[0]
    if "%" in settings.sandbox_dir:
        fixed = os.path.dirname(fixed) or "/"
    if not os.path.isdir(fixed):
        raise ConfigError(f"Sandbox folder {fixed} does not exist: create it or change "
                          "--sandbox-dir.")
    try:
        private_dir(settings.persistent_state_dir)
    except OSError as exc:
        raise ConfigError(f"Cannot create --persistent-state-dir "
                          f"{settings.persistent_state_dir}: {exc.strerror}.") from None
    if not pam and not users.names():
        log.warning("users file %s has no users: nobody can log in until one is added",
                    settings.users_file)
    return users


def _bind_data_port(recv_port: int, api_port: int, same: bool
                    ) -> tuple[socket.socket, socket.socket | None]:
    """The UDP data socket, and a TCP data listener unless the API listener serves it."""
    if same:
        return _bind(socket.SOCK_DGRAM, None, api_port, "data UDP"), None
    for _ in range(10):
        udp = _bind(socket.SOCK_DGRAM, None, recv_port, "data UDP")
        try:
            return udp, _bind(socket.SOCK_STREAM, None, udp.getsockname()[1], "data TCP")
        except ConfigError:
            udp.close()
            if recv_port != 0:
                raise
    raise ConfigError("Cannot find a free port for both UDP and TCP data; set --recv-port.")


def _bind(kind: int, host: str | None, port: int, what: str) -> socket.socket:
    """Bind a TCP or UDP socket; ``host`` None means every interface (dual stack)."""
    families: list[tuple[int, str]]
    if host is None:
        families = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        families = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    last: OSError | None = None
    for family, address in families:
        try:
            sock = socket.socket(family, kind)
        except OSError as exc:
            last = exc
            continue
        try:
            if family == socket.AF_INET6 and host is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno == errno.EADDRINUSE:
                break
    assert last is not None
    reason = "address already in use" if last.errno == errno.EADDRINUSE else last.strerror
    raise ConfigError(f"Cannot listen on {what} {host or '*'}:{port}: {reason} "
                      f"(choose another --{'api-port' if 'API' in what else 'recv-port'}).")


class Server:
    """A jetstream server, shaped like :class:`asyncio.Server` and websockets' ``Server``.

    :meth:`start` binds the ports and composes the pieces (a start that fails releases
    what it took); :meth:`close` stops accepting and starts the drain; :meth:`wait_closed`
    waits for the drain (any number of times, from any number of tasks);
    :meth:`serve_forever` returns only after it, and closes the server when cancelled;
    ``async with`` starts, then closes and waits.
    """

    def __init__(self, settings: Settings, data_plane: DataPlane | None = None) -> None:
        self.settings = settings
        self._data_plane = data_plane
        self.service: Service | None = None
        self._api_server: asyncio.AbstractServer | None = None
        self._udp: socket.socket | None = None
        self._data_server: asyncio.AbstractServer | None = None
        self.endpoint: DataEndpoint | None = None
        self.triggers: TriggerRunner | None = None
        #: the Prometheus endpoint (--metrics-port), if on
        self.metrics: MetricsServer | None = None
        self.dispatcher: Dispatcher | None = None
        self._connections: set[ControlConnection] = set()
        #: every TCP connection, API or data, from accept to close
        self.guard = ConnectionGuard()
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None
        #: the control port's TLS (its certificate: the service's)
        self.tls_context: ssl.SSLContext | None = None

    @property
    def api_port(self) -> int:
        assert self.service is not None, "server not started"
        return self.service.api_port

    @property
    def recv_port(self) -> int:
        assert self.service is not None, "server not started"
        return self.service.recv_port

    async def start(self) -> None:
        """Bind the ports and compose the pieces: the control plane's model, the data
        plane around it, the commands, the triggers. Raises ConfigError (one line), having
        released whatever it had taken (sockets, the state store's thread and file)."""
        try:
            await self._start()
        except BaseException:
            await self._release()
            raise

    async def _start(self) -> None:
        settings = self.settings
        users = prepare_settings(settings)
        api_sock = _bind(socket.SOCK_STREAM, settings.api_host, settings.api_port, "API TCP")
        try:
            api_port = api_sock.getsockname()[1]
            udp, tcp_data = _bind_data_port(settings.recv_port, api_port,
                                            settings.recv_port == settings.api_port)
        except ConfigError:
            api_sock.close()
            raise
        self._udp = udp
        loop = asyncio.get_running_loop()
        try:
            # (the ports first: a port in use is told before any file is made)
            triggers = self.triggers = TriggerRunner(settings.trigger_dir,
                                                     settings.trigger_log)
            service = self.service = Service(settings, users, triggers.fire)
            self.tls_context = service.api_certificate.server_context()
            service.restore()
            self._api_server = await loop.create_server(
                lambda: ControlConnection(self, serves_data=tcp_data is None),
                sock=api_sock, backlog=1024)
        except BaseException:
            api_sock.close()
            if tcp_data is not None:
                tcp_data.close()
            raise
        encrypts = not settings.no_data_encryption
        endpoint = self.endpoint = DataEndpoint(service, udp, service.identity, encrypts,
                                                settings.udp_offload)
        plane = self._data_plane or SendingPlane(
            service, settings.server_name, service.identity, CIPHERS[settings.data_cipher],
            encrypts, settings.udp_offload)
        service.attach(plane, endpoint, api_port, udp.getsockname()[1])
        self.dispatcher = Dispatcher(service, build_registry(), triggers.fire,
                                     settings.trigger_on_api)
        endpoint.start()
        if tcp_data is not None:
            try:
                self._data_server = await loop.create_server(
                    lambda: DataStream(endpoint, admit=self._admit_stream), sock=tcp_data,
                    backlog=1024)
            except BaseException:
                tcp_data.close()
                raise
        log.info("control API listening on TCP %s:%d; data port UDP and TCP %d; sandbox %s; "
                 "users %s", settings.api_host or "*", service.api_port,
                 service.recv_port, settings.sandbox_dir,
                 f"from PAM service {settings.pam_service}" if settings.auth == "pam" else
                 f"file {settings.users_file}")
        if settings.metrics_port is not None:
            self.metrics = MetricsServer(service, plane if isinstance(plane, SendingPlane)
                                         else None, endpoint, triggers)
            try:
                await self.metrics.start(settings.metrics_host, settings.metrics_port)
            except OSError as exc:
                raise ConfigError(f"Cannot listen for metrics on {settings.metrics_host}:"
                                  f"{settings.metrics_port}: {exc.strerror}.") from None
            log.info("metrics at http://%s/metrics",
                     host_port(settings.metrics_host, self.metrics.port))
        self._sweeper = loop.create_task(self._sweep())
        triggers.api_port = api_port
        triggers.fire("launch", str(api_port))
        service.scheduler.poke_all()
        service.spawn(service.collect_garbage_forever())
        service.spawn(service.expire_tokens_forever())
        service.spawn(service.follow_bandwidth_schedule_forever())
        service.remote = RemoteClient()

    async def _release(self) -> None:
        """Give back what a failed start took."""
        for listener in (self._api_server, self._data_server):
            if listener is not None:
                listener.close()
        if self.endpoint is not None:
            self.endpoint.close()
        if self._udp is not None:
            self._udp.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.service is not None:
            await self.service.close()
        self.service = None

    # -- connections --------------------------------------------------------------------

    def admit(self, tracked: Tracked) -> bool:
        """Track a new TCP connection; False when it must be refused (the caller tells
        the peer and closes it). Connections closed to make room are closed here."""
        evicted = self.guard.admit(tracked, time.monotonic())
        if evicted is None:
            limited_log.warning("refused", "refused a TCP connection from %s: too many "
                                "connections (%d open)", tracked.address, len(self.guard))
            return False
        for victim in evicted:
            limited_log.warning("evicted", "closed a connection from %s that had not logged "
                                "in, to make room for a new one", victim.address)
            victim.close("Closed to make room for a new connection: too many connections "
                         "that have not logged in.")
        return True

    def _admit_stream(self, stream: DataStream, peer: tuple[str, int]) -> StreamWatch | None:
        """A connection to the data listener (the data port apart from the API port)."""
        tracked = self._track(peer[0], stream.abort)
        if not self.admit(tracked):
            return None
        if stream.transport is not None:
            _keepalive(stream.transport)
        return tracked

    def _track(self, address: str, close: Callable[[str], None]) -> Tracked:
        tracked = Tracked(plain_host(address), 0.0, close)
        tracked.on_lost = lambda: self.guard.release(tracked)
        return tracked

    async def _sweep(self) -> None:
        """Close connections past their time (see ConnectionGuard.expired)."""
        while True:
            await asyncio.sleep(SWEEP_S)
            for tracked, reason in self.guard.expired(time.monotonic()):
                self.guard.release(tracked)
                tracked.close(reason)

    async def serve_forever(self) -> None:
        """Serve until the server is closed and drained (starting it if need be);
        cancelled, close the server and wait for the drain."""
        if self.service is None:
            await self.start()
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Stop listening, close API connections, start nothing new, and start the drain:
        running transfers stop to resume at the next start (the receiving ends
        checkpoint and keep their data), triggers already queued get up to 30 s, and the
        state is flushed. Idempotent; :meth:`wait_closed` waits for the drain."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._api_server is not None:
            self._api_server.close()
        if self._data_server is not None:
            self._data_server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.service is not None:
            self.service.scheduler.draining = True
        for connection in list(self._connections):
            connection.close()
        self._drain = asyncio.get_running_loop().create_task(self._drain_all())

    async def wait_closed(self) -> None:
        """Wait until the server is closed (by :meth:`close`) and drained; a cancel of
        this wait does not cancel the drain."""
        await self._closing.wait()
        assert self._drain is not None
        await asyncio.shield(self._drain)

    async def _drain_all(self) -> None:
        if self._sweeper is not None:
            await asyncio.wait({self._sweeper})  # (cancelled by close; ours goes on up)
        if self._api_server is not None:
            await self._api_server.wait_closed()
        for connection in list(self._connections):
            await connection.wait_closed()
        if self.service is not None:
            plane = self.service.scheduler.data_plane
            if plane is not None:
                await plane.shutdown()
            if self.endpoint is not None:
                await self.endpoint.shutdown()
            await self.service.close()
        if self.triggers is not None:
            await self.triggers.close(float(self.settings.trigger_stop_seconds))
        if self.metrics is not None:
            await self.metrics.close()
        if self._udp is not None:
            self._udp.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class RemoteClient:
    """How this server calls another's control API (see Service.remote): one TLS
    connection a call, the certificate pinned by ``fingerprint``."""

    async def call(self, host: str, port: int, fingerprint: str | None, token: str,
                   password: str | None, command: str, parameters: dict[str, Any]) -> Any:
        async with await AsyncClient.connect(host, port, tls=True,
                                             fingerprint=fingerprint) as client:
            await client.auth_token(token, password)
            return await client.call(command, **parameters)


def _keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class ControlConnection(asyncio.Protocol):
    """One control connection: lines in, one response line out per request, in order.

    ``serves_data``: the API listener also serves the data port (the same port number),
    so a connection whose first byte is the data preface is handed to a
    :class:`DataStream`; remote peers may connect for that, and are refused API use at
    their first byte. Otherwise remote peers are refused at accept (unless
    ``--api-allow-remote-control``)."""

    def __init__(self, server: Server, serves_data: bool = True) -> None:
        self.server = server
        self.serves_data = serves_data
        self.decoder = LineDecoder(UNAUTHENTICATED_LINE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.tracked: Tracked | None = None
        self._lines: asyncio.Queue[bytes | ApiError | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._reading = True
        self._lingering = False
        self._task: asyncio.Task[None] | None = None
        #: the TLS of a connection that began with a TLS handshake
        self._tls: TlsPipe | None = None
        #: a remote TLS client to refuse once its handshake is done (remote control off)
        self._refusal = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not peer:  # reset before it was accepted
            transport.abort()
            return
        host = peer[0]
        self.peer: tuple[str, int] = (plain_host(host), peer[1])
        if not self.serves_data and not self._remote_allowed(host):
            self._refuse_remote()
            return
        tracked = self.tracked = self.server._track(host, self._close_with)
        if not self.server.admit(tracked):
            self.tracked = None
            self._refuse(Busy("Too many connections to this server; try again later."))
            return
        _keepalive(transport)
        self.server._connections.add(self)

    def _remote_allowed(self, host: str) -> bool:
        return self.server.settings.api_allow_remote_control or is_loopback(host)

    def _refuse_remote(self) -> None:
        limited_log.warning("remote", "refused API connection from %s: remote control is "
                            "off", self.peer[0])
        self._refuse(RemoteControlRefused(
            "API connections are accepted only from this machine; the operator can allow "
            "others with --api-allow-remote-control."))

    def _refuse_plain(self) -> None:
        limited_log.warning("plain", "refused a plain-text API connection from %s: TLS is "
                            "required from other machines", self.peer[0])
        self._refuse(TlsRequired(
            "Plain-text API connections are accepted only from this machine: connect with "
            "TLS (jetstream api and the Python client use TLS to any host but this one)."))

    def _write(self, data: bytes) -> None:
        """Send ``data`` to the peer (through TLS, on a TLS connection)."""
        assert self.transport is not None
        if self._tls is not None:
            self._tls.send(data)
            data = self._tls.data_to_send()
        self.transport.write(data)

    def _refuse(self, error: ApiError) -> None:
        """Answer one error line and close (the connection is not served): at once
        before a byte was read, else after the peer has read it (see _linger)."""
        assert self.transport is not None
        self._write(encode_message(error_response(None, error.code, error.message)))
        if self.session is None and self._tls is None:
            self.transport.close()
        else:
            self._linger()

    def _close_tls(self) -> None:
        """Send TLS's close_notify, on a TLS connection."""
        if self._tls is not None and self.transport is not None:
            self._tls.close()
            self.transport.write(self._tls.data_to_send())

    def _close_with(self, reason: str) -> None:
        """Close, telling the peer why (an evicted or timed-out connection)."""
        if self.transport is not None and not self.transport.is_closing():
            self._write(encode_message(error_response(None, ConnectionDropped.code, reason)))
            self._linger()
        if self._task is not None:
            self._task.cancel()

    def _linger(self) -> None:
        """Close after an error line, without losing it: a socket closed with unread
        data sends a reset, which can destroy the line before the peer reads it. So stop
        writing, drop what still arrives, and close when the peer does (or after
        LINGER_S)."""
        transport = self.transport
        assert transport is not None
        if self._lingering:
            return
        self._reading, self._lingering = False, True
        self._close_tls()
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def _first_data(self, data: bytes) -> bool:
        """Tell a data stream, a TLS client and a plain-text API client apart by the first
        byte; False if the connection was handed off or refused."""
        assert self.transport is not None and self.tracked is not None
        transport = self.transport
        endpoint = self.server.endpoint
        if self.serves_data and data[:1] == TCP_PREFACE[:1] and endpoint is not None:
            self.server._connections.discard(self)
            stream = DataStream(endpoint, data, watch=self.tracked)
            self.tracked.close = stream.abort
            transport.set_protocol(stream)
            stream.connection_made(transport)
            return False
        tls = data[0] == TLS_RECORD_HANDSHAKE
        if tls:
            assert self.server.tls_context is not None
            self._tls = TlsPipe(self.server.tls_context)
            if not self._remote_allowed(self.peer[0]):
                self._refusal = True  # (told once the TLS handshake is done)
                return True
        elif not is_loopback(self.peer[0]):
            self._forget()
            if self._remote_allowed(self.peer[0]):
                self._refuse_plain()
            else:
                self._refuse_remote()
            return False
        self.session = Session(self.peer, end=self._close_with)
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return True

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or not self._reading:
            return  # refused, or answering its last requests before closing
        if self.session is None and self._tls is None and (
                self.tracked is None or not self._first_data(data)):
            return
        if self._tls is not None:
            try:
                data = self._tls.receive(data)
            except ssl.SSLError as exc:
                limited_log.warning("tls", "TLS from %s failed: %s", self.peer[0],
                                    exc.reason or exc)
                self._reading = False
                transport.close()
                return
            transport.write(self._tls.data_to_send())
            if self._refusal and self._tls.handshake_done:
                self._forget()
                self._refuse_remote()
                return
            if not data:
                if self._tls.closed:  # (close_notify: as the end of a plain stream)
                    self.eof_received()
                return
        tracked = self.tracked
        if tracked is None or self.session is None:
            return
        try:
            lines: list[bytes | ApiError | None] = list(self.decoder.feed(data))
        except ApiError as exc:  # the line is too long
            lines = [exc]
            self._reading = False
            transport.pause_reading()
        if lines:
            tracked.spoke(time.monotonic(), False)
        room = UNAUTHENTICATED_QUEUED_LINES - self._lines.qsize()
        if self._reading and self.session.user is None and len(lines) > room:
            self._reading = False  # answer what came first, then close
            transport.pause_reading()
            lines[max(room, 0):] = [Busy(
                f"More than {UNAUTHENTICATED_QUEUED_LINES} requests sent ahead before "
                "logging in; the connection is closed.")]
        for line in lines:
            self._lines.put_nowait(line)
        if self._lines.qsize() >= MAX_QUEUED_LINES and not self._paused:
            transport.pause_reading()
            self._paused = True
        if self._tls is not None and self._tls.closed:  # (after the lines that came with it)
            self.eof_received()

    def eof_received(self) -> bool:
        if self._task is None or not self._reading:  # nothing (more) to answer
            return False
        self._lines.put_nowait(None)
        return True  # keep the transport open to answer what was already sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self._lines.put_nowait(None)
        self._forget()

    def _forget(self) -> None:
        self.server._connections.discard(self)
        tracked, self.tracked = self.tracked, None
        if tracked is not None:
            tracked.lost()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def _serve(self) -> None:
        assert self.transport is not None and self.session is not None
        assert self.tracked is not None
        dispatcher = self.server.dispatcher
        assert dispatcher is not None
        tracked, session = self.tracked, self.session
        try:
            while True:
                item = await self._lines.get()
                if self._paused and self._lines.qsize() < MAX_QUEUED_LINES // 4:
                    self.transport.resume_reading()
                    self._paused = False
                if item is None or self.transport.is_closing():
                    break
                if isinstance(item, ApiError):
                    self._send(error_response(None, item.code, item.message))
                    break
                if not item.strip():
                    continue
                try:
                    request = decode_request(item)
                except ApiError as exc:
                    self._send(error_response(exc.request_id, exc.code, exc.message))
                    continue
                tracked.busy += 1
                try:
                    response = await dispatcher.handle(session, request)
                finally:
                    tracked.busy -= 1
                if session.user is not None and not tracked.authenticated:
                    self.decoder.max_line_bytes = MAX_LINE_BYTES
                tracked.spoke(time.monotonic(), session.user is not None)
                self._send(response)
                await self._writable.wait()
        finally:
            if self._reading or self.transport.is_closing():
                self._close_tls()
                self.transport.close()
            else:  # stopped reading on an error: the rest of the stream was not read
                self._linger()

    def _send(self, response: dict[str, Any]) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self._write(encode_message(response))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

