"""The receiving side of the data plane: the data port and one session per incoming transfer.

:class:`DataEndpoint` drains the UDP data socket in batches (``recvfrom_into`` until it
would block, from ``loop.add_reader``), checks each datagram's header, and routes it to its
:class:`ReceiveSession` by session id; TCP data connections feed it the same datagrams as
frames. Garbage, datagrams of unknown sessions and datagrams from the wrong address are
dropped and counted. Each session drives a
:class:`~jetstream_server.protocol.receiver.ReceiverCore` and writes through a
:class:`~jetstream_server.dataplane.sink.FileSink` in its own worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import logging
import re
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..ids import now_us
from ..netaddr import plain_host
from ..protocol.layout import Layout
from ..protocol.metadata import Metadata, decode_metadata
from ..protocol.receiver import Closed, FileReady, MetadataReady, ReceiverCore, RecvPhase
from ..protocol.sender import auth_proof
from ..protocol.wire import (
    HEADER,
    MAX_DATAGRAM,
    TCP_PREFACE,
    Garbage,
    Kind,
    decode_hello,
    parse_header,
)
from ..sandbox import expand_sandbox
from .sink import FileSink, SinkError

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["DataEndpoint", "ReceiveRecord", "UserAuthorizer"]

log = logging.getLogger("jetstream.recv")

MAX_SESSIONS = 256
#: Received bytes waiting for the disk before the data socket stops being read.
MAX_QUEUED_WRITE_BYTES = 64 * 1024 * 1024
_HASH = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
_FRAME = struct.Struct("!I")


class UserAuthorizer:
    """Checks a sender's proof against the users file (see docs/protocol.md)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.allow_anonymous = service.settings.recv_allow_anonymous
        self._secret = secrets.token_bytes(32)

    def _parts(self, user: str) -> tuple[bytes, int, int, int, bytes] | None:
        stored = self.service.users.stored_hash(user)
        match = _HASH.match(stored or "")
        if match is None:
            return None
        return (base64.b64decode(match.group(4)), int(match.group(1)), int(match.group(2)),
                int(match.group(3)), base64.b64decode(match.group(5)))

    def challenge(self, user: str) -> tuple[bytes, int, int, int]:
        parts = self._parts(user)
        if parts is None:  # the same shape of answer for a name that does not exist
            fake = hmac.new(self._secret, user.encode(), hashlib.sha256).digest()[:16]
            return fake, 14, 8, 1
        return parts[0], parts[1], parts[2], parts[3]

    def verify(self, user: str, proof: bytes, nonce: bytes, session: int,
               transfer_id: bytes) -> bool:
        parts = self._parts(user)
        expected = auth_proof(parts[4] if parts else self._secret, nonce, session,
                              transfer_id)
        return hmac.compare_digest(expected, proof) and parts is not None


@dataclass
class ReceiveRecord:
    """A transfer as the receiving server sees it (``recv.getTransfersAsync``)."""

    transfer_id: str
    user: str
    source_ip: str
    source_port: int
    transport: str
    start_time_us: int = field(default_factory=now_us)
    status: str = "receiving"
    error_message: str | None = None
    destination_path: str | None = None
    total_size: int | None = None
    total_files: int | None = None
    files_complete: int = 0
    bytes_recv: int = 0
    packets_recv: int = 0
    duplicate_blocks: int = 0
    last_recv_time_us: int | None = None
    last_send_time_us: int | None = None
    last_error_time_us: int | None = None
    end_time_us: int | None = None
    input_files: list[str] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)
    user_data: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        return {
            "transferId": self.transfer_id,
            "status": self.status,
            "errorMessage": self.error_message,
            "username": self.user,
            "sourceIP": self.source_ip,
            "sourcePort": self.source_port,
            "dataTransport": self.transport,
            "destinationPath": self.destination_path,
            "totalSize": self.total_size,
            "totalFiles": self.total_files,
            "filesComplete": self.files_complete,
            "bytesRecv": self.bytes_recv,
            "packetsRecv": self.packets_recv,
            "duplicateBlocks": self.duplicate_blocks,
            "startTime": self.start_time_us,
            "endTime": self.end_time_us,
            "lastRecvTime": self.last_recv_time_us,
            "lastSendTime": self.last_send_time_us,
            "lastErrorTime": self.last_error_time_us,
        }


SendFunc = Callable[[list[bytes]], None]


class ReceiveSession:
    def __init__(self, endpoint: DataEndpoint, core: ReceiverCore, address: tuple[str, int],
                 send: SendFunc, transport: str) -> None:
        self.endpoint = endpoint
        self.core = core
        self.address = address
        self.send = send
        self.record: ReceiveRecord | None = None
        self.transport = transport
        self.sink: FileSink | None = None
        self.meta: Metadata | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "jetstream-sink")
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        #: called when the bytes waiting for the disk fall below half the bound
        self.on_drained: Callable[[], None] | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def step(self, now: float) -> None:
        """Act on what the core produced, send its datagrams, re-arm the timer."""
        core = self.core
        if self.record is None and core.user is not None:
            self._start_record()
        if core.writes and self.sink is not None:
            writes, core.writes = core.writes, []
            size = sum(len(w[2]) for w in writes)
            self._queued_bytes += size
            self._submit(self.sink.write, writes, done=lambda _: self._written(size))
        while core.events:
            event = core.events.popleft()
            if isinstance(event, MetadataReady):
                self._prepare(event.metadata)
            elif isinstance(event, FileReady):
                self._commit(event)
            elif isinstance(event, Closed):
                self._finish("error", event.reason)
        self.send(core.datagrams_to_send(now))
        self._update_record()
        if core.phase is RecvPhase.FAILED and self.record is not None and \
                self.record.status == "receiving":
            self._finish("error", core.error)
        if core.phase is RecvPhase.CLOSED:
            self.close()
            return
        self._arm(core.get_timer())

    def _arm(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0),
                                       self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        self.core.handle_timer(now)
        self.step(now)

    def _submit(self, func: Callable[..., Any], *args: Any,
                done: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        loop = asyncio.get_running_loop()
        future = self._executor.submit(func, *args)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _written(self, size: int) -> None:
        self._queued_bytes -= size
        self.endpoint.resume_if_drained()
        if self.on_drained is not None and self._queued_bytes < MAX_QUEUED_WRITE_BYTES // 2:
            self.on_drained()

    def _failed(self, future: concurrent.futures.Future[Any]) -> bool:
        exc = future.exception()
        if exc is None:
            return False
        message = str(exc) if isinstance(exc, SinkError) else f"Internal error: {exc!r}"
        if not isinstance(exc, SinkError):
            log.error("receive %s: %r", self.core.hello.transfer_id.hex(), exc)
        self.core.fail(message)
        self.step(time.monotonic())
        return True

    def _start_record(self) -> None:
        core = self.core
        assert core.user is not None
        self.record = ReceiveRecord(core.hello.transfer_id.hex(), core.user,
                                    plain_host(self.address[0]), self.address[1],
                                    self.transport)
        self.endpoint.service.receives[self.record.transfer_id] = self.record
        log.info("receiving transfer %s from %s:%d for %s", self.record.transfer_id,
                 self.address[0], self.address[1], core.user)

    def _prepare(self, raw: bytes) -> None:
        try:
            meta = decode_metadata(raw)
            if meta.transfer_id != self.core.hello.transfer_id.hex():
                raise ValueError("transfer metadata does not match the handshake")
        except ValueError as exc:
            self.core.fail(f"The sender's transfer metadata was refused: {exc}.")
            return
        self.meta = meta
        assert self.core.user is not None and self.record is not None
        self.record.destination_path = meta.destination_path
        self.record.total_size = meta.total_size
        self.record.total_files = sum(1 for f in meta.files if f.size is not None)
        self.record.input_files = [f.path for f in meta.files if f.size is not None]
        self.record.user_data = meta.user_data
        root = expand_sandbox(self.endpoint.service.settings.sandbox_dir, self.core.user)
        self.sink = sink = FileSink(root, meta, self.record.transfer_id)

        def prepared(future: concurrent.futures.Future[Any]) -> None:
            if self._failed(future):
                return
            record = self.record
            assert record is not None
            record.output_files = [path for path, entry in zip(future.result(), meta.files,
                                                               strict=True)
                                   if entry.size is not None]
            self.endpoint.service.triggers.fire(
                "recv.transferStarted", record.transfer_id, record.user,
                stdin=_trigger_json(record))
            self.core.metadata_accepted(Layout(self.core.hello.block_size, len(raw),
                                               meta.sizes))
            self.step(time.monotonic())

        self._submit(sink.prepare, done=prepared)

    def _commit(self, event: FileReady) -> None:
        assert self.sink is not None

        def committed(future: concurrent.futures.Future[Any]) -> None:
            if self._failed(future):
                return
            self.core.file_committed(event.file)
            self.step(time.monotonic())

        self._submit(self.sink.commit, event.file, event.digest, event.size, done=committed)

    def _update_record(self) -> None:
        record, core = self.record, self.core
        if record is None:
            return
        record.bytes_recv = core.bytes
        record.packets_recv = core.packets
        record.duplicate_blocks = core.duplicates
        record.files_complete = core.committed
        record.last_recv_time_us = now_us()
        record.last_send_time_us = record.last_recv_time_us
        if core.phase is RecvPhase.COMPLETE and record.status == "receiving":
            record.status = "complete"
            record.end_time_us = now_us()
            if self.sink is not None:
                self._submit(self.sink.close, done=lambda _: None)
            log.info("transfer %s received: %d files, %s bytes", record.transfer_id,
                     record.total_files, record.total_size)
            triggers = self.endpoint.service.triggers
            lines = "".join(f"{_quote(name)} {path}\n" for name, path in
                            zip(record.input_files, record.output_files, strict=True))
            triggers.fire("recv.transferComplete", record.transfer_id, record.user, "",
                          stdin=lines.encode())
            triggers.fire("recv.transferComplete.json", record.transfer_id, record.user, "",
                          stdin=_trigger_json(record))

    def _finish(self, status: str, message: str | None) -> None:
        record = self.record
        if record is not None and record.status == "receiving":
            record.status = status
            record.error_message = message
            record.end_time_us = record.last_error_time_us = now_us()
            log.warning("transfer %s not received: %s", record.transfer_id, message)
        if self.sink is not None:
            self._submit(self.sink.abort, done=lambda _: None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.core.phase is not RecvPhase.COMPLETE:
            self._finish("error", self.core.error or "The transfer was closed.")
        self._executor.shutdown(wait=False)
        self.endpoint.sessions.pop(self.core.session, None)


class DataEndpoint:
    def __init__(self, service: Service, udp: socket.socket) -> None:
        self.service = service
        self.udp = udp
        self.authorizer = UserAuthorizer(service)
        self.sessions: dict[int, ReceiveSession] = {}
        self.dropped: Counter[str] = Counter()
        self._buffer = bytearray(MAX_DATAGRAM)
        self._paused = False
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                udp.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            except OSError:
                pass

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.udp.fileno(), self._on_readable)

    def close(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.udp.fileno())
        except (RuntimeError, ValueError):
            pass
        for session in list(self.sessions.values()):
            session.close()

    def _on_readable(self) -> None:
        buffer, view = self._buffer, memoryview(self._buffer)
        touched: dict[int, ReceiveSession] = {}
        now = time.monotonic()
        for _ in range(1024):
            try:
                size, address = self.udp.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            session = self.datagram(view[:size], (address[0], address[1]), self._udp_send,
                                    "udp", now)
            if session is not None:
                touched[id(session)] = session
        for session in touched.values():
            session.step(now)
        self._apply_backpressure()

    def _udp_send(self, address: tuple[str, int]) -> SendFunc:
        def send(datagrams: list[bytes]) -> None:
            for datagram in datagrams:
                try:
                    self.udp.sendto(datagram, address)
                except OSError:
                    pass  # lost; the sender asks again

        return send

    def datagram(self, data: memoryview, address: tuple[str, int],
                 send_for: Callable[[tuple[str, int]], SendFunc], transport: str,
                 now: float) -> ReceiveSession | None:
        """Route one datagram; the session it touched, if any."""
        try:
            kind, session_id = parse_header(data)
        except Garbage:
            self.dropped["garbage"] += 1
            return None
        session = self.sessions.get(session_id)
        body = data[HEADER.size:]
        if session is None:
            if kind is not Kind.HELLO:
                self.dropped["unknownSession"] += 1
                return None
            if len(self.sessions) >= MAX_SESSIONS:
                self.dropped["tooManySessions"] += 1
                return None
            try:
                core = ReceiverCore(session_id, decode_hello(body), self.authorizer, now)
            except Garbage:
                self.dropped["garbage"] += 1
                return None
            session = ReceiveSession(self, core, address, send_for(address), transport)
            self.sessions[session_id] = session
            return session
        if session.address != address:
            self.dropped["wrongSource"] += 1
            return None
        try:
            session.core.receive(kind, body, len(data), now)
        except Garbage:
            self.dropped["garbage"] += 1
            return None
        return session

    def _apply_backpressure(self) -> None:
        queued = sum(s.queued_bytes for s in self.sessions.values())
        if queued > MAX_QUEUED_WRITE_BYTES and not self._paused:
            asyncio.get_running_loop().remove_reader(self.udp.fileno())
            self._paused = True

    def resume_if_drained(self) -> None:
        if self._paused and sum(s.queued_bytes for s in self.sessions.values()) < \
                MAX_QUEUED_WRITE_BYTES // 2:
            self._paused = False
            self.start()

    def stats(self) -> dict[str, Any]:
        return {"activeSessions": len(self.sessions), "datagramsDropped": dict(self.dropped)}


class DataStream(asyncio.Protocol):
    """One TCP data connection: the preface, then length-prefixed datagrams both ways."""

    def __init__(self, endpoint: DataEndpoint, initial: bytes = b"") -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray(initial)
        self._preface_checked = False
        self._session: ReceiveSession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._buffer:
            self._process()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def _send_for(self, address: tuple[str, int]) -> SendFunc:
        def send(datagrams: list[bytes]) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(_FRAME.pack(len(d)) + d for d in datagrams))

        return send

    def _process(self) -> None:
        assert self.transport is not None
        buffer = self._buffer
        if not self._preface_checked:
            if len(buffer) < len(TCP_PREFACE):
                return
            if buffer[:len(TCP_PREFACE)] != TCP_PREFACE:
                self.endpoint.dropped["garbage"] += 1
                self.transport.close()
                return
            del buffer[:len(TCP_PREFACE)]
            self._preface_checked = True
        host, port = self.transport.get_extra_info("peername")[:2]
        now = time.monotonic()
        offset = 0
        while len(buffer) - offset >= _FRAME.size:
            size = _FRAME.unpack_from(buffer, offset)[0]
            if size > MAX_DATAGRAM:
                self.endpoint.dropped["garbage"] += 1
                self.transport.close()
                return
            if len(buffer) - offset - _FRAME.size < size:
                break
            start = offset + _FRAME.size
            frame = memoryview(bytes(buffer[start:start + size]))
            offset = start + size
            session = self.endpoint.datagram(frame, (host, port), self._send_for, "tcp", now)
            if session is not None:
                if self._session is None:
                    self._session = session
                session.step(now)
        del buffer[:offset]
        if self._session is not None and self._session.queued_bytes > \
                MAX_QUEUED_WRITE_BYTES:
            self.transport.pause_reading()
            self._session.on_drained = self._resume

    def _resume(self) -> None:
        if self._session is not None:
            self._session.on_drained = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        session = self._session
        if session is not None and session.core.phase not in (RecvPhase.COMPLETE,
                                                               RecvPhase.CLOSED):
            session.core.fail("The TCP data connection was lost.")
        if session is not None:
            session.close()
        self.transport = None


def _quote(name: str) -> str:
    """A manifest file name as the first word of a recv.transferComplete stdin line:
    ``%``, space and tab are written %25, %20 and %09, so that the documented
    ``read -r manifest_file file_path`` loop gets the whole absolute path."""
    return name.replace("%", "%25").replace(" ", "%20").replace("\t", "%09")


def _trigger_json(record: ReceiveRecord) -> bytes:
    return orjson.dumps({"inputFiles": record.input_files,
                         "outputFiles": record.output_files,
                         "userData": record.user_data}) + b"\n"
