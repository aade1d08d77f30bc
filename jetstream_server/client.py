"""The Python client library: :class:`AsyncClient`, and :class:`Client`, its synchronous twin.

    async with await AsyncClient.connect("localhost", 8886) as api:
        await api.auth("alice", "secret")
        manifest = await api.send.createManifest(mappings={"/dst/a.txt": "/src/a.txt"})
        manifest = await api.wait_for_manifest(manifest["manifestId"])
        transfer = await api.send.createTransfer(destinationId=..., manifestId=...)
        await api.wait_for_transfer(transfer["transferId"], on_progress=print)

    with Client.connect("localhost", 8886) as api:
        api.server.auth("alice", "secret")
        api.send.getDestinations()

Commands are reached as ``api.call(name, **parameters)`` or through the namespaces
``api.server``, ``api.send`` and ``api.recv``. A failed command raises
:class:`~jetstream_server.errors.CommandFailed` with the response's ``code`` and
``message``; a server that cannot be reached, or closes the connection,
:class:`~jetstream_server.errors.ConnectionFailed` (both are RemoteErrors of the package's
one exception tree).

To any host but this machine the connection is TLS 1.3, and the server is verified: by
the certificate fingerprint given (``fingerprint``), by a CA (``ca_file``), or else as
ssh does, by the fingerprint remembered the first time in a known-servers file
(``$JETSTREAM_KNOWN_SERVERS``, else ``~/.config/jetstream/known_servers``); a server whose
certificate is not the one trusted raises
:class:`~jetstream_server.errors.UntrustedServer`, whose message says how to proceed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .errors import CommandFailed, ConnectionFailed, TransferFailed, UntrustedServer
from .protocol.tls import certificate_fingerprint, normalize_fingerprint
from .protocol.wire import DEFAULT_PORT as DEFAULT_API_PORT

__all__ = ["DEFAULT_API_PORT", "ENDED", "AsyncClient", "Client", "CommandFailed",
           "ConnectionFailed", "KnownServers", "TransferFailed", "UntrustedServer", "is_local"]

_T = TypeVar("_T")
#: A transfer's statuses once it has ended.
ENDED = ("complete", "error", "cancelled")
#: Longest response line read (a request is at most 1 MiB; an answer listing ten thousand
#: transfers is tens of MiB).
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class _Namespace:
    def __init__(self, call: Callable[..., Any], prefix: str) -> None:
        self._call = call
        self._prefix = prefix

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        full = self._prefix + name

        def command(*args: Any, **parameters: Any) -> Any:
            if full in ("auth", "authAsync") and args:  # auth(user, password)
                parameters.update(zip(("user", "password"), args, strict=False))
            elif args:
                raise TypeError("commands take keyword parameters")
            return self._call(full, **parameters)

        return command


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost`` or a loopback address): plain text
    is allowed there, TLS everywhere else."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class KnownServers:
    """The fingerprints of the servers trusted on first use, one ``host:port SHA256:...``
    a line, as ssh's known_hosts."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            env = os.environ.get("JETSTREAM_KNOWN_SERVERS")
            config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            path = Path(env) if env else Path(config) / "jetstream" / "known_servers"
        self.path = path

    def get(self, server: str) -> tuple[str, int] | None:
        """(fingerprint, line number) remembered for ``server`` (``host:port``)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConnectionFailed(f"Cannot read the known servers file {self.path}: "
                                   f"{exc.strerror}.") from None
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if len(fields) == 2 and fields[0] == server:
                return fields[1], number
        return None

    def add(self, server: str, fingerprint: str) -> None:
        """Remember ``server``'s fingerprint."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(f"{server} {fingerprint}\n")
        except OSError as exc:
            raise ConnectionFailed(f"Cannot write the known servers file {self.path}: "
                                   f"{exc.strerror}.") from None


async def _open_tls(host: str, port: int, timeout_s: float, fingerprint: str | None,
                    ca_file: str | Path | None, known: KnownServers
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]:
    """A verified TLS connection (see the module's docstring), and the note to show when
    the server was trusted just now on first use."""
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    wanted = normalize_fingerprint(fingerprint) if fingerprint is not None else None
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # (verified below, by its fingerprint)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, limit=MAX_RESPONSE_BYTES), timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise UntrustedServer(
            f"The TLS certificate of {server} is not trusted by the CA in {ca_file}: "
            f"{exc.verify_message}. Check that the server uses a certificate this CA signed "
            f"(--api-cert) for the name {host!r}, or connect with --api-fingerprint "
            "instead.") from None
    except ssl.SSLError as exc:
        raise ConnectionFailed(f"TLS with {server} failed ({exc.reason or exc}): is it a "
                               "jetstream-server that accepts API connections from this "
                               "machine (--api-allow-remote-control)?") from None
    except (OSError, TimeoutError) as exc:
        raise ConnectionFailed(f"Cannot connect to {server}: {exc}") from None
    if ca_file is not None:
        return reader, writer, None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    seen = certificate_fingerprint(der)
    note = None
    if wanted is not None:
        if wanted != seen:
            writer.close()
            raise UntrustedServer(
                f"The TLS certificate of {server} has fingerprint {seen}, not "
                f"{wanted} as given: this may be another server. "
                "Compare with certificateFingerprint in getServerInfo on the server itself.")
    else:
        remembered = known.get(server)
        if remembered is None:
            known.add(server, seen)
            note = (f"The server {server} is trusted from now on: its certificate "
                    f"fingerprint {seen} was added to {known.path}.")
        elif remembered[0] != seen:
            writer.close()
            raise UntrustedServer(
                f"REFUSED: the TLS certificate of {server} has CHANGED: it was "
                f"{remembered[0]}, it is now {seen}. Someone may be intercepting this "
                "connection, or the server's certificate was replaced. Check the new "
                "fingerprint with the server's operator (certificateFingerprint in "
                "getServerInfo, on the server itself); if it is right, remove line "
                f"{remembered[1]} of {known.path}, or connect with "
                f"--api-fingerprint={seen}.")
    return reader, writer, note


class AsyncClient:
    """One control connection. Requests may be sent concurrently; ids pair the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed: BaseException | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read())
        self.server = _Namespace(self.call, "")
        self.send = _Namespace(self.call, "send.")
        self.recv = _Namespace(self.call, "recv.")
        #: set when the server's certificate was trusted on first use by this connection
        self.trust_note: str | None = None

    @classmethod
    async def connect(cls, host: str = "localhost", port: int = DEFAULT_API_PORT,
                      timeout_s: float = 10.0, *, tls: bool | None = None,
                      fingerprint: str | None = None, ca_file: str | Path | None = None,
                      known_servers: Path | None = None) -> AsyncClient:
        """Open a control connection to ``host``:``port`` (TLS unless ``host`` is this
        machine, or as ``tls`` says); ConnectionFailed if it cannot, UntrustedServer if
        its certificate is not the one trusted; ValueError for a malformed
        ``fingerprint``. :attr:`trust_note` says when the server was trusted on first use
        just now."""
        if tls if tls is not None else not is_local(host):
            reader, writer, note = await _open_tls(host, port, timeout_s, fingerprint,
                                                   ca_file, KnownServers(known_servers))
            client = cls(reader, writer)
            client.trust_note = note
            return client
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_RESPONSE_BYTES), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"Cannot connect to {host}:{port}: {exc}") from None
        return cls(reader, writer)

    async def _read(self) -> None:
        error: BaseException = ConnectionFailed("The server closed the connection.")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                message = orjson.loads(line)
                future = self._waiting.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif message.get("status") == "error":  # refused before any request
                    error = CommandFailed(message.get("code", "error"), message.get("message", ""))
        except (OSError, ValueError) as exc:
            error = ConnectionFailed(f"Connection to the server failed: {exc}")
        self._closed = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def request(self, name: str, parameters: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Send one request and return the whole response (success or error)."""
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        line = orjson.dumps({"request": name, "parameters": parameters or {},
                             "id": request_id}) + b"\n"
        try:
            self._writer.write(line)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:  # (uvloop: RuntimeError once closed)
            self._waiting.pop(request_id, None)
            raise ConnectionFailed(f"Connection to the server failed: {exc}") from None
        return await future

    async def call(self, name: str, **parameters: Any) -> Any:
        """Run a command and return its result; raise :class:`CommandFailed` on failure."""
        response = await self.request(name, parameters)
        if response.get("status") != "success":
            raise CommandFailed(response.get("code", "error"), response.get("message", ""))
        return response.get("result")

    async def auth(self, user: str, password: str) -> Any:
        """Log the connection in."""
        return await self.call("auth", user=user, password=password)

    async def auth_token(self, token: str, password: str | None = None) -> Any:
        """Log in with an API token's string (and its password, if it has one)."""
        parameters = {"token": token} if password is None else \
            {"token": token, "password": password}
        return await self.call("auth", **parameters)

    async def wait_for_manifest(self, manifest_id: str, timeout_s: float = 60.0,
                                poll_s: float = 0.05) -> dict[str, Any]:
        """Poll until the manifest is no longer pending; return it."""
        async with asyncio.timeout(timeout_s):
            while True:
                manifest: dict[str, Any] = await self.call("send.getManifest",
                                                           manifestId=manifest_id)
                if manifest["status"] != "pending":
                    return manifest
                await asyncio.sleep(poll_s)

    async def transfer_progress(self, transfer_id: str, interval_s: float = 1.0
                                ) -> AsyncIterator[dict[str, Any]]:
        """The transfer's Transfer structure every ``interval_s`` until it ends (the last
        one yielded is its final state: complete, error or cancelled)::

            async for transfer in api.transfer_progress(transfer_id):
                print(transfer["bytesComplete"], transfer["currentRate"])
        """
        while True:
            transfer: dict[str, Any] = await self.call("send.getTransfer",
                                                       transferId=transfer_id)
            yield transfer
            if transfer["status"] in ENDED:
                return
            await asyncio.sleep(interval_s)

    async def wait_for_transfer(
            self, transfer_id: str,
            timeout: float | None = None,  # noqa: ASYNC109 (the documented signature)
            on_progress: Callable[[dict[str, Any]], object] | None = None,
            interval_s: float = 1.0) -> dict[str, Any]:
        """Wait until the transfer ends; return its final Transfer structure if it is
        complete, raise :class:`TransferFailed` if it ended in error or was cancelled
        (TimeoutError after ``timeout`` seconds; the transfer goes on). ``on_progress``
        is called with each Transfer structure looked at."""
        async with asyncio.timeout(timeout):
            async for transfer in self.transfer_progress(transfer_id, interval_s):
                if on_progress is not None:
                    on_progress(transfer)
        if transfer["status"] != "complete":
            raise TransferFailed(transfer)
        return transfer

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        self._reader_task.cancel()
        await asyncio.wait({self._reader_task})  # (a cancel of close itself goes on up)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """A synchronous wrapper: an :class:`AsyncClient` on a private loop in a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 inner: AsyncClient) -> None:
        self._loop = loop
        self._thread = thread
        self._inner = inner
        self.server = _Namespace(self.call, "")
        self.send = _Namespace(self.call, "send.")
        self.recv = _Namespace(self.call, "recv.")

    @classmethod
    def connect(cls, host: str = "localhost", port: int = DEFAULT_API_PORT,
                timeout_s: float = 10.0, **tls: Any) -> Client:
        """Open a control connection on a private event loop in a thread (``tls``: the
        keyword arguments of :meth:`AsyncClient.connect`)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="jetstream-client",
                                  daemon=True)
        thread.start()
        try:
            inner = asyncio.run_coroutine_threadsafe(
                AsyncClient.connect(host, port, timeout_s, **tls), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, inner)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, name: str, **parameters: Any) -> Any:
        """Run a command and return its result; CommandFailed on failure."""
        return self._run(self._inner.call(name, **parameters))

    def request(self, name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the whole response."""
        return self._run(self._inner.request(name, parameters))

    def auth(self, user: str, password: str) -> Any:
        """Log the connection in."""
        return self.call("auth", user=user, password=password)

    def auth_token(self, token: str, password: str | None = None) -> Any:
        """Log in with an API token's string (and its password, if it has one)."""
        return self._run(self._inner.auth_token(token, password))

    def wait_for_manifest(self, manifest_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll until the manifest is no longer pending; return it."""
        return self._run(self._inner.wait_for_manifest(manifest_id, timeout_s))

    def wait_for_transfer(
            self, transfer_id: str, timeout: float | None = None,
            on_progress: Callable[[dict[str, Any]], object] | None = None,
            interval_s: float = 1.0) -> dict[str, Any]:
        """As :meth:`AsyncClient.wait_for_transfer` (``on_progress`` runs in the client's
        thread)."""
        return self._run(self._inner.wait_for_transfer(transfer_id, timeout, on_progress,
                                                       interval_s))

    def close(self) -> None:
        """Close the connection and stop the private loop."""
        if self._loop.is_closed():
            return
        self._run(self._inner.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
