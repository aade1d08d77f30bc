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
from typing import Any, cast

from .codec import LineDecoder, decode_request, encode_message, error_response
from .config import Settings
from .dataplane.receiving import DataEndpoint, DataStream
from .dataplane.sending import SendingPlane
from .errors import ApiError, ConfigError, RemoteControlRefused
from .netaddr import is_loopback, plain_host
from .protocol.wire import TCP_PREFACE
from .service import Service, Session
from .transfers import DataPlane
from .users import UserStore, write_users_file

__all__ = ["Server", "is_loopback", "prepare_settings"]

log = logging.getLogger("jetstream.server")

#: Lines queued on one connection before the server stops reading from it.
MAX_QUEUED_LINES = 32


def prepare_settings(settings: Settings) -> UserStore:
    """Check the settings that name files and folders; create the default ones.

    Raises :class:`ConfigError` with one line that says what to fix.
    """
    defaulted = settings.defaulted
    if "users_file" in defaulted and not settings.users_file.exists():
        write_users_file(settings.users_file, {})
        log.warning("created an empty users file %s: add a user with "
                    "'jetstream-server user add NAME --users-file %s'",
                    settings.users_file, settings.users_file)
    users = UserStore(settings.users_file)
    if "sandbox_dir" in defaulted:
        os.makedirs(settings.sandbox_dir, exist_ok=True)
    fixed = settings.sandbox_dir.split("%", 1)[0]
    if "%" in settings.sandbox_dir:
        fixed = os.path.dirname(fixed) or "/"
    if not os.path.isdir(fixed):
        raise ConfigError(f"Sandbox folder {fixed} does not exist: create it or change "
                          "--sandbox-dir.")
    try:
        settings.persistent_state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create --persistent-state-dir "
                          f"{settings.persistent_state_dir}: {exc.strerror}.") from None
    if not users.names():
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
    def __init__(self, settings: Settings, data_plane: DataPlane | None = None) -> None:
        self.settings = settings
        self._data_plane = data_plane
        self.service: Service | None = None
        self._api_server: asyncio.AbstractServer | None = None
        self._udp: socket.socket | None = None
        self._data_server: asyncio.AbstractServer | None = None
        self.endpoint: DataEndpoint | None = None
        self._connections: set[ControlConnection] = set()
        self._closed = asyncio.Event()

    @property
    def api_port(self) -> int:
        assert self.service is not None, "server not started"
        return self.service.api_port

    @property
    def recv_port(self) -> int:
        assert self.service is not None, "server not started"
        return self.service.recv_port

    async def start(self) -> None:
        settings = self.settings
        users = prepare_settings(settings)
        service = Service(settings, users, self._data_plane)
        service.restore()
        api_sock = _bind(socket.SOCK_STREAM, settings.api_host, settings.api_port, "API TCP")
        try:
            api_port = api_sock.getsockname()[1]
            udp, tcp_data = _bind_data_port(settings.recv_port, api_port,
                                            settings.recv_port == settings.api_port)
        except ConfigError:
            api_sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._api_server = await loop.create_server(
            lambda: ControlConnection(self), sock=api_sock, backlog=1024)
        self._udp = udp
        service.endpoint = self.endpoint = DataEndpoint(service, udp)
        self.endpoint.start()
        if tcp_data is not None:
            endpoint = self.endpoint
            self._data_server = await loop.create_server(lambda: DataStream(endpoint),
                                                         sock=tcp_data, backlog=1024)
        service.api_port = api_port
        service.recv_port = udp.getsockname()[1]
        self.service = service
        log.info("control API listening on TCP %s:%d; data port UDP and TCP %d; sandbox %s; "
                 "users file %s", settings.api_host or "*", service.api_port,
                 service.recv_port, settings.sandbox_dir, settings.users_file)
        service.triggers.api_port = api_port
        service.triggers.fire("launch", str(api_port))
        service.scheduler.poke_all()
        service.spawn(service.collect_garbage_forever())

    async def serve_forever(self) -> None:
        if self.service is None:
            await self.start()
        await self._closed.wait()

    @property
    def closing(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop listening, close API connections, start nothing new. Idempotent.

        :meth:`wait_closed` then drains: running transfers stop to resume at the next
        start (the receiving ends checkpoint and keep their data), triggers already
        queued get up to 30 s, and the state is flushed.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        if self._api_server is not None:
            self._api_server.close()
        if self._data_server is not None:
            self._data_server.close()
        if self.service is not None:
            self.service.scheduler.draining = True
        for connection in list(self._connections):
            connection.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        if self._api_server is not None:
            await self._api_server.wait_closed()
        for connection in list(self._connections):
            await connection.wait_closed()
        if self.service is not None:
            plane = self.service.scheduler.data_plane
            if isinstance(plane, SendingPlane):
                await plane.shutdown()
            if self.endpoint is not None:
                await self.endpoint.shutdown()
            await self.service.close()
        if self._udp is not None:
            self._udp.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class ControlConnection(asyncio.Protocol):
    """One control connection: lines in, one response line out per request, in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.decoder = LineDecoder()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._lines: asyncio.Queue[bytes | ApiError | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.server._connections.add(self)

    def _first_data(self, data: bytes) -> bool:
        """Tell a data stream from an API client by its first byte; False if handed off."""
        assert self.transport is not None
        transport = self.transport
        endpoint = self.server.endpoint
        if data[:1] == TCP_PREFACE[:1] and endpoint is not None:
            self.server._connections.discard(self)
            stream = DataStream(endpoint, data)
            transport.set_protocol(stream)
            stream.connection_made(transport)
            return False
        host, port = transport.get_extra_info("peername")[:2]
        if not self.server.settings.api_allow_remote_control and not is_loopback(host):
            log.warning("refused API connection from %s: remote control is off", host)
            error = RemoteControlRefused(
                "API connections are accepted only from this machine; the operator can "
                "allow others with --api-allow-remote-control.")
            transport.write(encode_message(error_response(None, error.code, error.message)))
            transport.close()
            return False
        self.session = Session((plain_host(host), port))
        self._task = asyncio.get_running_loop().create_task(self._serve())
        return True

    def data_received(self, data: bytes) -> None:
        if self.session is None and not self._first_data(data):
            return
        try:
            lines: list[bytes | ApiError | None] = list(self.decoder.feed(data))
        except ApiError as exc:  # the line is too long
            lines = [exc]
            assert self.transport is not None
            self.transport.pause_reading()
        for line in lines:
            self._lines.put_nowait(line)
        if self._lines.qsize() >= MAX_QUEUED_LINES and not self._paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._lines.put_nowait(None)
        return True  # keep the transport open to answer what was already sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self._lines.put_nowait(None)
        self.server._connections.discard(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def _serve(self) -> None:
        assert self.transport is not None and self.session is not None
        service = self.server.service
        assert service is not None
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
                self._send(await service.handle(self.session, request))
                await self._writable.wait()
        finally:
            self.transport.close()

    def _send(self, response: dict[str, Any]) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(encode_message(response))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

