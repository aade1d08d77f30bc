"""The Python client library: :class:`AsyncClient`, and :class:`Client`, its synchronous twin.

    async with await AsyncClient.connect("localhost", 8886) as api:
        await api.auth("alice", "secret")
        manifest = await api.send.createManifest(mappings={"/dst/a.txt": "/src/a.txt"})
        manifest = await api.wait_for_manifest(manifest["manifestId"])

    with Client.connect("localhost", 8886) as api:
        api.server.auth("alice", "secret")
        api.send.getDestinations()

Commands are reached as ``api.call(name, **parameters)`` or through the namespaces
``api.server``, ``api.send`` and ``api.recv``. A failed command raises
:class:`~jetstream_server.errors.CommandFailed` with the response's ``code`` and
``message``; a server that cannot be reached, or closes the connection,
:class:`~jetstream_server.errors.ConnectionFailed` (both are RemoteErrors of the package's
one exception tree).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson

from .errors import CommandFailed, ConnectionFailed
from .protocol.lines import MAX_LINE_BYTES
from .protocol.wire import DEFAULT_PORT as DEFAULT_API_PORT

__all__ = ["DEFAULT_API_PORT", "AsyncClient", "Client", "CommandFailed", "ConnectionFailed"]

_T = TypeVar("_T")


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

    @classmethod
    async def connect(cls, host: str = "localhost", port: int = DEFAULT_API_PORT,
                      timeout_s: float = 10.0) -> AsyncClient:
        """Open a control connection to ``host``:``port``; ConnectionFailed if it cannot."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_LINE_BYTES + 1), timeout_s)
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
                timeout_s: float = 10.0) -> Client:
        """Open a control connection on a private event loop in a thread."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="jetstream-client",
                                  daemon=True)
        thread.start()
        try:
            inner = asyncio.run_coroutine_threadsafe(
                AsyncClient.connect(host, port, timeout_s), loop).result()
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

    def wait_for_manifest(self, manifest_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll until the manifest is no longer pending; return it."""
        return self._run(self._inner.wait_for_manifest(manifest_id, timeout_s))

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
