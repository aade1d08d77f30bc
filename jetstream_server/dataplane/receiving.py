"""The receiving side of the data plane: the data port and one session per incoming transfer.

:class:`DataEndpoint` drains the UDP data socket in batches (``recvfrom_into`` until it
would block, from ``loop.add_reader``) and feeds each datagram to the sans-I/O
:class:`~jetstream_server.protocol.endpoint.ReceiverEndpoint`, which routes it to its
session (and keeps the limits before login); TCP data connections feed it the same
datagrams as frames. Each session's :class:`ReceiveSession` drives its
:class:`~jetstream_server.protocol.receiver.ReceiverCore` and writes through a
:class:`~jetstream_server.dataplane.sink.FileSink` in its own worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..core.ratelog import LimitedLog
from ..errors import Garbage
from ..protocol.endpoint import Address, Opened, ReceiverEndpoint
from ..protocol.lines import encode_message, error_response
from ..protocol.noise import KeyPair
from ..protocol.receiver import RecvPhase
from ..protocol.wire import (
    FRAME,
    MAX_DATAGRAM,
    RECEIVE_HOLD_S,
    TCP_PREFACE,
    encode_frames,
)
from .recv_session import MAX_QUEUED_WRITE_BYTES, ReceiveHost, ReceiveSession, SendFunc
from .s3sink import Carry
from .udpio import MAX_DATAGRAM_BUFFER, arrival_time, enable_gro, receive_batch

__all__ = ["DataEndpoint", "DataStream", "StreamWatch"]

log = logging.getLogger("jetstream.recv")
limited_log = LimitedLog(log)

#: After a read that found fewer than GATHER_BYTES, the next waits RECEIVE_HOLD_S: at 100
#: Mbit/s some 43 datagrams come in 5 ms, and a wake-up of the event loop costs more than
#: handling several.
GATHER_BYTES = 32 * 1500
#: room for one batch of reads, and the most batches read at one wake-up
BATCH_BUFFER = 1024 * 1024 + MAX_DATAGRAM_BUFFER
MAX_BATCHES = 16


class DataEndpoint:
    """The data port: ``udp`` is its bound socket; ``identity`` this server's key pair;
    ``encrypts``: it encrypts data (not --no-data-encryption); ``udp_offload``: GRO where
    the kernel allows."""

    def __init__(self, host: ReceiveHost, udp: socket.socket, identity: KeyPair,
                 encrypts: bool = True, udp_offload: bool = True) -> None:
        self.host = host
        self.udp = udp
        #: the sans-I/O routing: handshakes, sessions, the limits before login
        self.routes = ReceiverEndpoint(identity, encrypts)
        #: this adapter's object of each session the routing has open, by session id
        self.sessions: dict[int, ReceiveSession] = {}
        self.s3_carry = Carry()
        self._buffer = bytearray(BATCH_BUFFER)
        #: a read put off so that datagrams gather (see GATHER_BYTES)
        self._gathering: asyncio.TimerHandle | None = None
        self._paused = False
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                udp.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            except OSError:
                pass
        self._gro = udp_offload and enable_gro(udp)
        arrival_time(udp)  # (turns the kernel's stamping on, before the first datagram)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.udp.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop reading the data socket (sessions are paused by :meth:`shutdown`)."""
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        try:
            asyncio.get_running_loop().remove_reader(self.udp.fileno())
        except (RuntimeError, ValueError):
            pass

    async def shutdown(self) -> None:
        """Pause every session: checkpoint, keep partial files for the next run."""
        self.close()
        await asyncio.gather(*(session.pause("the receiving server is stopping")
                               for session in list(self.sessions.values())))

    def live_transfers(self) -> list[str]:
        return [session.transfer_id for session in self.sessions.values()]

    def session_of(self, transfer_id: str, other_than: ReceiveSession
                   ) -> ReceiveSession | None:
        for session in self.sessions.values():
            if session is not other_than and session.transfer_id == transfer_id:
                return session
        return None

    def _on_readable(self) -> None:
        touched: dict[int, ReceiveSession] = {}
        read = 0
        for _ in range(MAX_BATCHES):  # (until the socket is drained)
            batch, drained = receive_batch(self.udp, self._buffer, self._gro)
            # the time the last one arrived, for all: the newest transmission, which an
            # ACK echoes with the time it was held (the sender takes that off the round
            # trip), is the last to arrive but for reordering (a read put off does not
            # lengthen the round trip the sender measures)
            now = time.monotonic()
            arrived = min(arrival_time(self.udp) or now, now) if batch else now
            for data, address in batch:
                read += len(data)
                session = self.datagram(data, address, self._udp_send, "udp", arrived)
                if session is not None:
                    touched[id(session)] = session
            if drained:
                break
        now = time.monotonic()
        for session in touched.values():
            session.step(now)
        self._apply_backpressure()
        if 0 < read < GATHER_BYTES and not self._paused:
            # few were waiting: let more gather before the next read (waking the event
            # loop costs more than handling a datagram)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.udp.fileno())
            self._gathering = loop.call_later(RECEIVE_HOLD_S, self._gathered)

    def _gathered(self) -> None:
        self._gathering = None
        if not self._paused:
            self.start()
            self._on_readable()

    def _udp_send(self, address: tuple[str, int]) -> SendFunc:
        def send(datagrams: list[bytes]) -> None:
            for datagram in datagrams:
                try:
                    self.udp.sendto(datagram, address)
                except OSError:
                    pass  # lost; the sender asks again

        return send

    def datagram(self, data: memoryview, address: Address,
                 send_for: Callable[[Address], SendFunc], transport: str,
                 now: float) -> ReceiveSession | None:
        """Route one datagram (see ReceiverEndpoint); the session it touched, if any. A
        TCP connection's source address is proven by TCP's own handshake."""
        routes = self.routes
        core = routes.receive_datagram(data, address, now, verified=transport == "tcp")
        while routes.events:
            event = routes.events.popleft()
            if isinstance(event, Opened):
                opened = event.core
                self.sessions[opened.session] = ReceiveSession(
                    self, opened, send_for(opened.address), transport)
            else:  # forgotten to make room
                evicted = self.sessions.get(event.core.session)
                if evicted is not None and evicted.core is event.core:
                    evicted.close()
        for reply, to in routes.datagrams_to_send():
            send_for(to)([reply])
        return self.sessions.get(core.session) if core is not None else None

    def logged_in(self, session: ReceiveSession) -> bool:
        return self.routes.logged_in(session.core)

    def forget(self, session: ReceiveSession) -> None:
        if self.sessions.get(session.core.session) is session:
            del self.sessions[session.core.session]
        self.routes.forget(session.core)

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
        return self.routes.stats()


class StreamWatch(Protocol):
    """What the server keeps of a TCP data connection (its connection limits)."""

    def spoke(self, now: float, authenticated: bool) -> None:
        """A frame arrived; whether the stream's transfer login has been accepted."""

    def lost(self) -> None:
        """The connection is gone."""


#: Largest frame taken before the stream's session has logged in (a HELLO or an AUTH is
#: a few hundred bytes): what an unauthenticated peer can make the server buffer.
MAX_UNAUTHENTICATED_FRAME = 4096


class DataStream(asyncio.Protocol):
    """One TCP data connection: the preface, then length-prefixed datagrams both ways.

    ``watch`` is told of its frames; or ``admit`` is asked for a watch when the connection
    is made, and a None answer refuses it."""

    def __init__(self, endpoint: DataEndpoint, initial: bytes = b"",
                 watch: StreamWatch | None = None,
                 admit: Callable[[DataStream, tuple[str, int]], StreamWatch | None] | None
                 = None) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.watch = watch
        self._admit = admit
        self._buffer = bytearray(initial)
        self._preface_checked = False
        self._session: ReceiveSession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if not peer:  # reset before it was accepted
            transport.abort()  # type: ignore[attr-defined]
            return
        self._peer: tuple[str, int] = (peer[0], peer[1])
        if self._admit is not None:
            self.watch = self._admit(self, self._peer)
            if self.watch is None:
                self.abort("Too many connections to this server; try again later.", "busy")
                return
        if self._buffer:
            self._process()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._buffer += data
        self._process()

    def abort(self, reason: str, code: str = "connection_closed") -> None:
        """Close the connection (refused, past its time, or making room for another),
        with one JSON error line saying why: the sender reads it as a reason to try again
        later (its first byte, ``{``, cannot start a frame)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_message(error_response(None, code, reason)))
            self.transport.close()

    @property
    def authenticated(self) -> bool:
        return self._session is not None and self._session.core.user is not None

    def _send_for(self, address: tuple[str, int]) -> SendFunc:
        def send(datagrams: list[bytes]) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(encode_frames(datagrams))

        return send

    def _process(self) -> None:
        assert self.transport is not None
        buffer = self._buffer
        if not self._preface_checked:
            if len(buffer) < len(TCP_PREFACE):
                return
            if buffer[:len(TCP_PREFACE)] != TCP_PREFACE:
                self.endpoint.routes.dropped["garbage"] += 1
                self.transport.close()
                return
            del buffer[:len(TCP_PREFACE)]
            self._preface_checked = True
        now = time.monotonic()
        offset = 0
        touched: dict[int, ReceiveSession] = {}
        while len(buffer) - offset >= FRAME.size:
            size = FRAME.unpack_from(buffer, offset)[0]
            if size > (MAX_DATAGRAM if self.authenticated else MAX_UNAUTHENTICATED_FRAME):
                self.endpoint.routes.dropped["garbage"] += 1
                self.transport.close()
                return
            if len(buffer) - offset - FRAME.size < size:
                break
            start = offset + FRAME.size
            frame = memoryview(bytes(buffer[start:start + size]))
            offset = start + size
            try:
                session = self.endpoint.datagram(frame, self._peer, self._send_for, "tcp",
                                                 now)
            except Garbage as exc:
                # TCP delivers what was sent: this was changed on the way (or forged), and
                # what else was is unknown; the session pauses, the sender starts anew
                limited_log.warning("tampered", "closed a TCP data connection from %s: a "
                                    "frame did not open (%s)", self._peer[0], exc.message)
                self.abort(f"A frame on this TCP data connection did not open "
                           f"({exc.message}): the connection is closed.")
                break
            if session is not None:
                if self._session is None:
                    self._session = session
                    session.on_closed = self._session_closed
                touched[id(session)] = session
            if self.watch is not None:
                self.watch.spoke(now, self.authenticated)
        del buffer[:offset]
        for session in touched.values():  # once per chunk, as for a UDP batch
            session.step(now)
        if self._session is not None and self._session.queued_bytes > \
                MAX_QUEUED_WRITE_BYTES:
            self.transport.pause_reading()
            self._session.on_drained = self._resume

    def _session_closed(self) -> None:
        """The stream's session ended (complete, failed, or its sender silent): the
        connection has nothing more to carry."""
        if self.transport is not None:
            self.transport.close()

    def _resume(self) -> None:
        if self._session is not None:
            self._session.on_drained = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        session = self._session
        if session is not None and session.core.phase not in (RecvPhase.COMPLETE,
                                                               RecvPhase.CLOSED):
            session.pause_soon("the TCP data connection was lost")
        elif session is not None:
            session.close()
        self.transport = None
        if self.watch is not None:
            self.watch.lost()
