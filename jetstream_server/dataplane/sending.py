"""The sending side of the data plane: one asyncio task per running transfer.

:class:`SendingPlane` implements the scheduler's
:class:`~jetstream_server.core.scheduler.DataPlane`.
Each :class:`SendSession` drives a :class:`~jetstream_server.protocol.sender.SenderCore`:
it owns a UDP socket connected to the destination's data port (or, in the TCP data mode,
a TCP connection to it), feeds received datagrams to the core, sends what the core gives
in paced batches, and re-arms one timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, Protocol

import orjson

from ..core.bandwidth import Bandwidth
from ..core.ids import now_us
from ..core.lifecycle import CONNECTION, ConnectionState, TransferStatus
from ..core.netaddr import is_loopback
from ..core.objects import Destination, Manifest, Transfer
from ..core.progress import RateMeter, intersect
from ..core.sandboxes import Sandbox
from ..core.scheduler import Scheduler
from ..core.stats import Stats
from ..errors import SourceError, SourceUnavailable
from ..protocol.channel import DATA_OVERHEAD
from ..protocol.checksums import chunk_bytes_for
from ..protocol.layout import TCP_BLOCK_SIZE, UDP_BLOCK_SIZE, Layout
from ..protocol.metadata import DEFAULT_CHECKPOINT_S, FileEntry, Metadata, encode_metadata
from ..protocol.noise import Cipher, KeyPair, public_key_bytes, public_key_text
from ..protocol.rate import Ensemble, RatePolicy
from ..protocol.sender import KeyProbe, SenderCore, SendPhase
from ..protocol.wire import (
    FRAME,
    MAX_DATAGRAM,
    TCP_PREFACE,
    Hello,
    encode_frames,
    new_session_id,
)
from .source import FileSource, chunk_sums, reader_for
from .udpio import GsoSender

__all__ = ["LOOPBACK_BLOCK_SIZE", "SendHost", "SendSession", "SendingPlane", "block_size_for"]

log = logging.getLogger("jetstream.send")

#: To a loopback address (the whole path is this machine's 64 KiB-MTU loopback device)
#: datagrams can be nearly 64 KiB, which divides the per-datagram cost.
LOOPBACK_BLOCK_SIZE = 63 * 1024
#: Datagrams are sized to the MTU of the route to the destination (as the kernel knows
#: it), within these bounds: 1200 is what IPv6 guarantees, 8960 a jumbo frame's payload.
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1200, 8960
#: Retry after network trouble: 1 s, doubling up to 30 s.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: How often a running transfer's rates, files done and blocks acknowledged are updated.
PROGRESS_S = 1.0
_SOCKET_BUFFER = 4 * 1024 * 1024
_IP_MTU, _IPV6_MTU = 14, 24  # from <linux/in.h>, <linux/in6.h>; Python does not name them


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def route_mtu(ip: str) -> int | None:
    """The MTU of this machine's route to ``ip`` (no packet is sent), if Linux says."""
    family = _family(ip)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, 9))
            if family == socket.AF_INET6:
                mtu: int = sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
            else:
                mtu = sock.getsockopt(socket.IPPROTO_IP, _IP_MTU)
            return mtu
    except OSError:
        return None


def _error_line(line: bytes) -> str:
    """The message of the JSON error line a server writes on a connection it refuses
    (too many connections, or closed while silent), or the line itself."""
    try:
        message = orjson.loads(line).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message) if message else line.decode(errors="replace").strip()


def block_size_for(transport: str, ip: str) -> int:
    """The block size of a new transfer: by transport, by the route's MTU over UDP (so a
    datagram is one full-size packet), and larger over loopback."""
    if transport == "tcp":
        return TCP_BLOCK_SIZE
    if is_loopback(ip):
        return LOOPBACK_BLOCK_SIZE
    mtu = route_mtu(ip)
    if mtu is None:
        return UDP_BLOCK_SIZE
    overhead = (48 if ":" in ip else 28) + DATA_OVERHEAD
    return max(MIN_BLOCK_SIZE, min(mtu - overhead, MAX_BLOCK_SIZE))


class SendHost(Protocol):
    """What the sending side needs of the server around it."""

    scheduler: Scheduler
    #: the server-wide outgoing limit: each running transfer's share
    bandwidth: Bandwidth
    #: counts since start (the metrics endpoint's)
    stats: Stats

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a task the host owns (and cancels when it closes)."""
        ...

    def sandbox(self, user: str, path: str = "/") -> Sandbox:
        """Where ``user``'s source paths are read (or its folder ``path``'s)."""
        ...

    def save_transfer(self, transfer: Transfer) -> None:
        """Keep the transfer's progress (for a restart)."""
        ...

    def save_destination(self, destination: Destination) -> None:
        """Keep a destination (its key, pinned on first contact)."""
        ...


class SendingPlane:
    """The scheduler's data plane: one :class:`SendSession` per transfer sending.

    ``server_name`` goes into each transfer's metadata; ``identity`` is this server's key
    pair, ``cipher`` the AEAD its sessions use, ``encrypts`` False with
    --no-data-encryption; ``udp_offload``: GSO where the kernel allows."""

    def __init__(self, host: SendHost, server_name: str, identity: KeyPair, cipher: Cipher,
                 encrypts: bool = True, udp_offload: bool = True) -> None:
        self.host = host
        self.server_name = server_name
        self.identity = identity
        self.cipher = cipher
        self.encrypts = encrypts
        self.udp_offload = udp_offload
        self.sessions: dict[str, SendSession] = {}
        #: the UDP transfers to each destination address, sharing its path's window
        self.ensembles: dict[tuple[str, int], Ensemble] = {}
        #: per destination, its sessions between connect and disconnect
        self.connected_sessions: Counter[str] = Counter()
        #: failed attempts in a row, per transfer, for the retry back-off
        self.attempts: dict[str, int] = {}

    def prepare(self, destination: Destination) -> None:
        """A new destination with no key given: learn its key now, in the background."""
        if destination.data_transport == "udp" and destination.public_key is None:
            self.host.spawn(self._learn_key(destination))

    async def _learn_key(self, destination: Destination) -> None:
        """Ask the destination for its public key (see KeyProbe) and pin it, as ssh's
        known_hosts does on first contact. Nothing is reported when it does not answer:
        the first transfer asks again."""
        loop = asyncio.get_running_loop()
        core = KeyProbe(time.monotonic())
        with socket.socket(_family(destination.ip), socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (destination.ip, destination.port))
                while True:
                    for datagram in core.datagrams_to_send(time.monotonic()):
                        await loop.sock_sendall(sock, datagram)
                    timer = core.get_timer()
                    if timer is None:
                        break
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(sock, MAX_DATAGRAM),
                                                      max(timer - time.monotonic(), 0.0))
                    except TimeoutError:
                        core.handle_timer(time.monotonic())
                        continue
                    core.receive_datagram(data, time.monotonic())
            except OSError:
                return
        if core.key is not None:
            self.pin(destination, core.key)

    def pin(self, destination: Destination, key: bytes) -> None:
        """Remember ``key`` as the destination's, unless one is pinned already."""
        if destination.public_key is None:
            destination.public_key = public_key_text(key)
            self.host.save_destination(destination)
            log.info("destination %s (%s:%d): pinned its public key %s on first contact",
                     destination.id, destination.ip, destination.port,
                     destination.public_key)

    def retry_later(self, transfer: Transfer, reason: str) -> None:
        """Network trouble: back to the queue, tried again after a back-off."""
        attempts = self.attempts.get(transfer.id, 0) + 1
        self.attempts[transfer.id] = attempts
        delay = min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)
        scheduler = self.host.scheduler
        scheduler.requeue(transfer, reason, not_before=time.monotonic() + delay)
        log.info("transfer %s: %s; trying again in %.0f s", transfer.id, reason, delay)
        asyncio.get_running_loop().call_later(delay, scheduler.retry_due, transfer)

    async def shutdown(self) -> None:
        """Stop every session to resume it at the next start (the receiver keeps data)."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.pausing = True
            session.stop()
        await asyncio.gather(*(s.task for s in sessions if s.task is not None),
                             return_exceptions=True)

    def block_size(self, transport: str, ip: str) -> int:
        return block_size_for(transport, ip)

    def start(self, transfer: Transfer, destination: Destination, manifest: Manifest) -> None:
        if destination.credentials_error is not None:  # (reported once start returned)
            asyncio.get_running_loop().call_soon(self.host.scheduler.finished, transfer,
                                                 destination.credentials_error)
            return
        session = SendSession(self, transfer, destination, manifest)
        self.sessions[transfer.id] = session
        session.task = self.host.spawn(session.run())

    def stop(self, transfer_id: str) -> None:
        session = self.sessions.get(transfer_id)
        if session is not None:
            session.stop()

    def set_rate(self, transfer_id: str, rate_kbps: int, policy: str) -> None:
        session = self.sessions.get(transfer_id)
        if session is not None:
            session.set_rate(rate_kbps, policy)


class SendSession:
    def __init__(self, plane: SendingPlane, transfer: Transfer, destination: Destination,
                 manifest: Manifest) -> None:
        self.plane = plane
        self.transfer = transfer
        self.destination = destination
        self.manifest = manifest
        self.task: asyncio.Task[None] | None = None
        self.core: SenderCore | None = None
        self._stopped = False
        self._waiter: asyncio.Future[None] | None = None
        #: when the loop wakes by itself (None: only when woken)
        self._sleeping_until: float | None = None
        self._pending: list[bytes | bytearray] = []
        self._sock: socket.socket | None = None
        self._gso: GsoSender | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._refused = 0
        self._in_connection = False  # (counted in the plane's connected_sessions)
        #: its own sendRateMax, and its share of the server's outgoing limit (kbit/s; 0:
        #: none): it sends at the lower
        self.own_kbps = 0
        self.share_kbps = 0
        #: stopping to resume later (server shutdown), not for good
        self.pausing = False
        self._checkpoint_at = time.monotonic() + (transfer.checkpoint_frequency_s or
                                                  DEFAULT_CHECKPOINT_S)
        # counters of earlier sessions of this transfer
        self._base = (transfer.bytes_sent, transfer.bytes_recv, transfer.packets_sent,
                      transfer.packets_recv, transfer.blocks_sent,
                      transfer.blocks_retransmitted)
        self._dropped_base = Counter(transfer.datagrams_dropped)
        self._meter = RateMeter()
        #: this session's counters as last added to the server's stats
        self._counted = (0, 0, Counter[str]())
        self._progress_at = 0.0
        self._done_counted = False
        #: the files earlier sessions found kept by the receiver (None: none got so far)
        self._skipped_base = transfer.skipped

    # -- control from the scheduler -------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True
        self.wake()

    def set_rate(self, rate_kbps: int, policy: str) -> None:
        self.own_kbps = rate_kbps
        if self.core is not None:
            self.core.set_policy(RatePolicy(policy), time.monotonic())
            self.plane.host.bandwidth.change("out", self.transfer.id, cap_kbps=rate_kbps)
            self._apply_rate()

    def _share(self, kbps: int) -> None:
        self.share_kbps = kbps
        self._apply_rate()

    def _apply_rate(self) -> None:
        if self.core is not None:
            limits = [r for r in (self.own_kbps, self.share_kbps) if r]
            self.core.set_rate_limit(min(limits) * 1000 if limits else None,
                                     time.monotonic())
            self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        transfer = self.transfer
        scheduler = self.plane.host.scheduler
        error: str | None = None
        retry: str | None = None
        source: FileSource | None = None
        try:
            loop = asyncio.get_running_loop()
            tcp = transfer.data_transport == "tcp"
            block_size = transfer.block_size  # chosen at createTransfer, kept across resumes
            sandbox = self.plane.host.sandbox(transfer.owner, self.manifest.root)
            metadata = await self._metadata(sandbox, block_size)
            layout = Layout(block_size, len(metadata), self.manifest.sizes)
            def wake_from_thread() -> None:
                loop.call_soon_threadsafe(self.wake)

            source = FileSource(reader_for(sandbox, self.manifest.files), self.manifest.files,
                                block_size, wake_from_thread)
            session_id = new_session_id()
            destination, plane = self.destination, self.plane
            hello = Hello(bytes.fromhex(transfer.id), block_size, len(metadata),
                          layout.meta_blocks, destination.remote_user or transfer.owner)
            self.own_kbps = plane.host.scheduler.effective_rate_kbps(transfer)
            policy = RatePolicy(plane.host.scheduler.effective_policy(transfer))
            pinned = destination.public_key
            self.core = core = SenderCore(
                session_id, hello, metadata, layout, source, time.monotonic(),
                static=plane.identity,
                remote_key=public_key_bytes(pinned) if pinned is not None else None,
                cipher=plane.cipher, password=destination.remote_password,
                token=destination.remote_token,
                encrypt_data=plane.encrypts, reliable=tcp, policy=policy)
            if not tcp:
                ensemble = plane.ensembles.setdefault((destination.ip, destination.port),
                                                      Ensemble())
                ensemble.add(core.controller)
            plane.host.bandwidth.join("out", transfer.id, self._share,
                                      priority=transfer.priority, cap_kbps=self.own_kbps)
            self._apply_rate()
            self._connection("connect")
            if tcp:
                await self._connect_tcp()
            else:
                self._connect_udp()
            log.info("transfer %s: sending %d files, %d bytes to %s:%d over %s",
                     transfer.id, transfer.total_files, transfer.total_bytes,
                     self.destination.ip, self.destination.port, "TCP" if tcp else "UDP")
            error = await self._loop(core)
        except SourceUnavailable as exc:  # (checksumming the files for ifChecksumDiffers)
            retry = exc.message
        except SourceError as exc:
            error = exc.message
        except (OSError, TimeoutError) as exc:
            retry = (f"Cannot reach the destination {self.destination.ip}:"
                     f"{self.destination.port}: {getattr(exc, 'strerror', None) or exc}.")
        except Exception as exc:  # a bug: fail the transfer rather than leave it hanging
            log.exception("transfer %s: internal error", transfer.id)
            error = f"Internal error while sending: {exc!r}; the server log has details."
        finally:
            self.plane.host.bandwidth.leave("out", transfer.id)
            if self.core is not None:
                self._leave_ensemble(self.core)
            self._connection("disconnect")
            self._close_socket()
            if source is not None:
                await asyncio.get_running_loop().run_in_executor(None, source.close)
            if self.plane.sessions.get(transfer.id) is self:
                del self.plane.sessions[transfer.id]
        self._progress_at = 0.0
        self._count()
        transfer.current_rate_kbps = 0
        transfer.eta_s = 0.0 if self.core is not None and \
            self.core.phase is SendPhase.DONE else None
        self.plane.host.save_transfer(transfer)
        if self._stopped:
            return
        if self.core is not None and self.core.retry:
            retry = self.core.error
        if self.core is not None and self.core.key_mismatch is not None:
            error = (f"{error} If you trust the new key, delete destination "
                     f"{self.destination.id} and create it again with "
                     f"--destinationPublicKey={public_key_text(self.core.key_mismatch)}.")
        if retry is not None:
            self.destination.last_error_message = retry
            self.plane.retry_later(transfer, retry)
            return
        self.destination.last_error_message = error
        self.plane.attempts.pop(transfer.id, None)
        scheduler.finished(transfer, error)

    async def _loop(self, core: SenderCore) -> str | None:
        while True:
            now = time.monotonic()
            if self._stopped:
                pause = self.pausing or self.transfer.status is TransferStatus.SUSPENDED
                reason = "The sending server is stopping." if self.pausing else \
                    f"Transfer {self.transfer.status.value} by the sender."
                self._send(core.close_datagrams(reason, pause=pause))
                return None
            timer = core.get_timer()
            if timer is not None and now >= timer:
                core.handle_timer(now)
            if core.learned_key is not None and core.handshake_done:
                self.plane.pin(self.destination, core.learned_key)
            if core.phase is SendPhase.DONE:
                self._send(core.close_datagrams("complete"))
                return None
            if core.phase is SendPhase.FAILED:
                self._send(core.close_datagrams(core.error or "failed", pause=core.retry))
                return core.error
            if now >= self._checkpoint_at:  # keep the counters for a restart
                self._checkpoint_at = now + (self.transfer.checkpoint_frequency_s or
                                             DEFAULT_CHECKPOINT_S)
                self.plane.host.save_transfer(self.transfer)
            if not self._pending:
                while True:
                    batch = core.datagrams_to_send(now)
                    if not batch:
                        break
                    self._send(batch)
                    if self._pending:
                        break
            if self._writer is not None:
                try:
                    await self._writer.drain()
                except (OSError, RuntimeError):
                    core.lose_session(f"The TCP data connection to {self.destination.ip}:"
                                      f"{self.destination.port} was closed.")
            self._count()
            if core.finished:
                continue  # failed while producing datagrams: report it above
            await self._sleep_until(core.next_deadline(time.monotonic()))

    async def _sleep_until(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._sleeping_until = deadline
        handle = None
        if deadline is not None:
            delay = max(deadline - time.monotonic(), 0.0)
            handle = loop.call_later(delay, self.wake)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _metadata(self, sandbox: Sandbox, block_size: int) -> bytes:
        """The transfer's metadata; for ``ifChecksumDiffers`` with its files' chunk
        checksums (read in a thread: every file is read for them)."""
        transfer, manifest = self.transfer, self.manifest
        files = [FileEntry(f.dest_path, f.src_path, None if f.is_empty_dir else f.file_size,
                           f.modification_time_us, f.executable) for f in manifest.files]
        chunk, sums = 0, None
        if transfer.overwrite == "ifChecksumDiffers":
            chunk = chunk_bytes_for(block_size, transfer.total_bytes)
            sums = await asyncio.get_running_loop().run_in_executor(
                None, chunk_sums, reader_for(sandbox, manifest.files), manifest.files, chunk)
        return encode_metadata(Metadata(
            transfer.id, transfer.destination_path, files, transfer.initial_user_data,
            {"serverName": self.plane.server_name, "user": transfer.owner},
            transfer.checkpoint_frequency_s, transfer.overwrite, chunk, sums))

    def _leave_ensemble(self, core: SenderCore) -> None:
        key = (self.destination.ip, self.destination.port)
        ensemble = self.plane.ensembles.get(key)
        if ensemble is not None:
            ensemble.remove(core.controller, time.monotonic())
            if not ensemble.members:
                del self.plane.ensembles[key]

    def _count(self) -> None:
        core, transfer = self.core, self.transfer
        if core is None:
            return
        bytes_sent, bytes_recv, packets_sent, packets_recv, blocks_sent, resent = self._base
        transfer.bytes_sent = bytes_sent + core.bytes_sent
        transfer.bytes_recv = bytes_recv + core.bytes_recv
        transfer.packets_sent = packets_sent + core.packets_sent
        transfer.packets_recv = packets_recv + core.packets_recv
        transfer.blocks_sent = blocks_sent + core.blocks_sent
        transfer.blocks_retransmitted = resent + core.blocks_retransmitted
        if core.dropped:
            transfer.datagrams_dropped = dict(self._dropped_base + core.dropped)
        transfer.blocks_acked = core.blocks_acked
        now = time.monotonic()
        if now >= self._progress_at or (self._meter.empty and core.phase is SendPhase.DATA):
            self._progress_at = now + PROGRESS_S
            self._progress(core, now)
        transfer.rate_limit_kbps = round((core.limit_bps or 0) / 1000)
        transfer.block_size = core.layout.block_size
        transfer.total_blocks = core.layout.total_blocks
        if core.packets_recv:
            self.destination.last_recv_time_us = now_us()
        self.destination.last_send_time_us = now_us()
        if core.handshake_done and \
                self.destination.connection is ConnectionState.NEGOTIATING:
            self._connection("accepted")

    def _progress(self, core: SenderCore, now: float) -> None:
        """Rates, time left, files done and kept, blocks acknowledged (once a second)."""
        transfer = self.transfer
        transfer.bytes_complete = core.data_acked
        sending = core.phase in (SendPhase.DATA, SendPhase.DONE)
        if sending:
            self._meter.sample(now, core.data_acked)
            had = core.files_had.ranges()
            base = self._skipped_base
            transfer.skipped = [list(r) for r in had] if base is None else \
                intersect(base, had)
        transfer.current_rate_kbps, transfer.average_rate_kbps = self._meter.rates_kbps()
        transfer.eta_s = self._meter.seconds_left(transfer.total_bytes - core.data_acked) \
            if sending else None
        transfer.files_complete = max(core.committed - transfer.files_skipped, 0)
        transfer.acked_ranges = [list(r) for r in core.acked.ranges()]
        stats, (sent, resent, dropped) = self.plane.host.stats, self._counted
        stats.bytes_sent += core.bytes_sent - sent
        stats.blocks_retransmitted += core.blocks_retransmitted - resent
        stats.dropped_by_senders.update(core.dropped - dropped)
        self._counted = (core.bytes_sent, core.blocks_retransmitted, Counter(core.dropped))
        if core.phase is SendPhase.DONE and not self._done_counted:
            self._done_counted = True
            stats.files_sent += transfer.files_complete

    def _connection(self, action: str) -> None:
        """Move the destination's connection state (see core/lifecycle.py): it is
        connecting with its first session, connected when one is accepted, and
        disconnected when its last session ends (--transfers-per-destination may run
        several)."""
        destination, sessions = self.destination, self.plane.connected_sessions
        if action == "connect":
            self._in_connection = True
            sessions[destination.id] += 1
            if sessions[destination.id] > 1:
                return
        elif action == "disconnect":
            if not self._in_connection:
                return  # (ended before it connected)
            self._in_connection = False
            sessions[destination.id] -= 1
            if sessions[destination.id] > 0:
                return
            del sessions[destination.id]
        elif destination.connection is ConnectionState.CONNECTED:
            return  # (accepted: another session was first)
        destination.connection = CONNECTION.move(destination.id, destination.connection,
                                                 action)

    # -- sockets --------------------------------------------------------------------------

    def _connect_udp(self) -> None:
        sock = socket.socket(_family(self.destination.ip), socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.connect((self.destination.ip, self.destination.port))
        self._sock = sock
        self._gso = GsoSender(sock, self.plane.udp_offload)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock, core = self._sock, self.core
        assert sock is not None and core is not None
        for _ in range(256):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self._refused += 1
                if self._refused >= 3:
                    core.lose_session(f"Nothing answers on UDP {self.destination.ip}:"
                                      f"{self.destination.port} (connection refused): is "
                                      "jetstream-server running there?")
                break
            except OSError:
                break
            self._refused = 0
            # the time of each ACK, not of the batch: one that arrived while the batch was
            # being read would otherwise shorten the round trip measured from it
            core.receive_datagram(data, time.monotonic())
        # an ACK that leaves the next thing to do about as late as the loop sleeps (the
        # pacer holds data back, no timer is earlier) does not wake it: waking costs more
        # than reading the ACK (and the loop's timers are as fine as a millisecond)
        due = core.next_event_time(time.monotonic())
        if due is not None and (self._sleeping_until is None or
                                due < self._sleeping_until - 0.001):
            self.wake()

    def _on_writable(self) -> None:
        assert self._sock is not None
        asyncio.get_running_loop().remove_writer(self._sock.fileno())
        pending, self._pending = self._pending, []
        self._send(pending)
        self.wake()

    def _send(self, datagrams: list[bytes | bytearray]) -> None:
        if self._writer is not None:
            if self._writer.is_closing():
                return  # the connection broke; _read_tcp has ended the session
            try:
                self._writer.write(encode_frames(datagrams))
            except (OSError, RuntimeError):  # (uvloop: RuntimeError once it is closed)
                pass
            return
        gso = self._gso
        if gso is None:
            return
        sent = gso.send(datagrams)
        self._refused += gso.refused
        gso.refused = 0
        if sent < len(datagrams):
            self._pending = list(datagrams[sent:])
            asyncio.get_running_loop().add_writer(gso.sock.fileno(), self._on_writable)

    async def _connect_tcp(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.destination.ip, self.destination.port), 30)
        writer.write(TCP_PREFACE)
        self._writer = writer
        self.plane.host.spawn(self._read_tcp(reader))

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        core = self.core
        assert core is not None
        try:
            while True:
                header = await reader.readexactly(FRAME.size)
                if header[:1] == b"{":  # (no frame is that long) an API error line
                    core.lose_session("The receiver closed the TCP data connection: "
                                      f"{_error_line(header + await reader.readline())}")
                    break
                size = FRAME.unpack(header)[0]
                if size > MAX_DATAGRAM:
                    core.fail("The receiver sent an oversized frame.")
                    break
                core.receive_datagram(await reader.readexactly(size), time.monotonic())
                self.wake()
        except (asyncio.IncompleteReadError, OSError):
            # the receiver restarted or the network broke: a new session resumes
            core.lose_session(f"The TCP data connection to {self.destination.ip}:"
                              f"{self.destination.port} was closed.")
        self.wake()

    def _close_socket(self) -> None:
        if self._sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = self._gso = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
