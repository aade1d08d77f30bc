"""One incoming transfer session: the receiver core, its login, its disk writer,
checkpoints, triggers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..core.bandwidth import Bandwidth
from ..core.ids import now_us
from ..core.lifecycle import RECEIVE, ReceiveStatus
from ..core.netaddr import host_port, plain_host
from ..core.ratelog import LimitedLog
from ..core.receives import Grant, ReceiveRecord
from ..core.s3store import Bucket
from ..core.sandboxes import S3Sandbox, Sandbox
from ..core.stats import Stats
from ..errors import AuthFailed, DiskError, PermissionDenied, StorageUnavailable
from ..protocol.metadata import DEFAULT_CHECKPOINT_S, Metadata
from ..protocol.noise import public_key_text
from ..protocol.receiver import (
    Checkpoint,
    Closed,
    FileReady,
    Login,
    MetadataReady,
    ReceiverCore,
    RecvPhase,
)
from ..protocol.wire import ERROR_BUSY, ERROR_REFUSED
from .s3sink import Carry, S3Sink
from .sink import FileSink

__all__ = ["MAX_QUEUED_WRITE_BYTES", "ReceiveHost", "ReceiveSession", "SendFunc",
           "SessionOwner"]

log = logging.getLogger("jetstream.recv")
#: refused logins are warnings, but a guesser's flood is not (at most 5 in 10 s)
limited_log = LimitedLog(log)

#: Received bytes waiting for the disk before the data socket stops being read.
MAX_QUEUED_WRITE_BYTES = 64 * 1024 * 1024
#: Blocks are handed to the writer thread in batches: a batch goes when it has this many
#: blocks, when the writer is idle and WRITE_DELAY_S has passed since the first block
#: waited, or at once before any other disk operation (commit, sync, close) is queued.
WRITE_BATCH_BLOCKS = 64
WRITE_DELAY_S = 0.002

SendFunc = Callable[[list[bytes]], None]


class ReceiveHost(Protocol):
    """What the receiving side needs of the server around it."""

    #: incoming transfers by id, kept (and stored) by the host
    receives: dict[str, ReceiveRecord]
    #: the server-wide incoming limit: each incoming transfer's share, told its sender
    bandwidth: Bandwidth
    #: counts since start (the metrics endpoint's)
    stats: Stats

    async def authorize_sender(self, address: str, user: str, password: str | None,
                               client_key: bytes, token: str | None = None) -> Grant:
        """Who a sending server at ``address``, whose key is ``client_key``, may send as
        (``user`` with its ``password``, a ``token`` of this server's, or by its key, or
        anonymous); AuthFailed with the message for the sender if none. Slow (a
        password's hash), and in turn with every other login."""
        ...

    def sandbox(self, user: str, path: str = "/") -> Sandbox:
        """Where ``user``'s transfers are written (or its folder ``path``'s)."""
        ...

    #: where transfers into S3 sandboxes spool what they receive (made when needed)
    spool_dir: Path

    def save_receive(self, record: ReceiveRecord) -> None:
        """Keep an incoming transfer's record (for a restart)."""
        ...

    def fire(self, event: str, *args: str, stdin: bytes = b"") -> None:
        """Queue a trigger event."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a task the host owns (and cancels when it closes)."""
        ...


class Sink(Protocol):
    """Where a session's files go: a sandbox folder (FileSink) or bucket (S3Sink). Its
    methods are blocking, called in the session's writer thread, one at a time."""

    paths: list[str]
    lost: set[int]

    def prepare(self) -> list[str]: ...
    def keep_existing(self, block_size: int) -> tuple[set[int], dict[int, list[int]]]: ...
    def write(self, writes: list[tuple[int, int, bytes]]) -> None: ...
    def commit_many(self, items: list[tuple[int, bytes, int]]) -> list[str | DiskError]: ...
    def sync(self) -> None: ...
    def release(self) -> None: ...
    def close_keeping(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class SessionOwner(Protocol):
    """What a session needs of the endpoint that routes its datagrams to it."""

    host: ReceiveHost
    #: what sessions into S3 leave for the next session of their transfer
    s3_carry: Carry

    def logged_in(self, session: ReceiveSession) -> bool:
        """The session's sender has logged in: False if it must be refused for now."""
        ...

    def session_of(self, transfer_id: str, other_than: ReceiveSession
                   ) -> ReceiveSession | None:
        """Another open session of the same transfer, if any."""
        ...

    def resume_if_drained(self) -> None:
        """Bytes waiting for the disk went down: read the data socket again if paused."""
        ...

    def forget(self, session: ReceiveSession) -> None:
        """The session is closed."""
        ...


class ReceiveSession:
    def __init__(self, endpoint: SessionOwner, core: ReceiverCore, send: SendFunc,
                 transport: str) -> None:
        self.endpoint = endpoint
        self.host = endpoint.host
        self.core = core
        self.address = core.address
        self.send = send
        self.transport = transport
        self.transfer_id = core.hello.transfer_id.hex()
        self.record: ReceiveRecord | None = None
        #: who the sender was authorized as (once its login is decided)
        self.grant: Grant | None = None
        self.sink: Sink | None = None
        self.checkpoint_s = float(DEFAULT_CHECKPOINT_S)
        self._next_checkpoint: float | None = None
        #: the disk writer's thread, made when the first disk operation is queued (a
        #: session that never logs in costs no thread)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._queued_bytes = 0
        self._counted_bytes = 0  # (added to the server's stats)
        self._writes_in_flight = 0
        self._commit_queue: list[FileReady] = []
        self._committing = False
        self._write_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # (its deadline, on time.monotonic()'s clock)
        self._closed = False
        #: failed on a condition the operator can cure: keep the data for a resume
        self._curable = False
        #: ... and every write went through (not a disk's failure)
        self._writes_sound = False
        self.paused: asyncio.Future[None] | None = None
        #: called when the bytes waiting for the disk fall below half the bound
        self.on_drained: Callable[[], None] | None = None
        #: called once the session is closed (its TCP data connection then closes)
        self.on_closed: Callable[[], None] | None = None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "jetstream-sink")
        return self._writer

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    # -- driving the core -----------------------------------------------------------------

    def step(self, now: float) -> None:
        """Act on what the core produced, send its datagrams, re-arm the timer."""
        if self._closed:
            return
        core = self.core
        if self.record is None and core.user is not None and core.phase is not \
                RecvPhase.FAILED:
            if self.endpoint.logged_in(self):
                self._start_record()
            else:
                core.fail("The receiving server is busy (too many transfers at once); "
                          "trying again later.", ERROR_BUSY)
        self._flush_writes(force=bool(core.events))
        while core.events:
            event = core.events.popleft()
            if isinstance(event, Login):
                self.host.spawn(self._login(event))
            elif isinstance(event, MetadataReady):
                self.host.spawn(self._prepare(event))
            elif isinstance(event, FileReady):
                self._commit(event)
            elif isinstance(event, Closed):
                if event.pause:
                    self.pause_soon(event.reason)
                else:
                    self._fail(event.reason)
        self.send(core.datagrams_to_send(now))
        self._update_record()
        if core.phase is RecvPhase.FAILED and self.record is not None and \
                self.record.status is ReceiveStatus.RECEIVING:
            self._fail(core.error)
        if core.phase is RecvPhase.DATA and self._next_checkpoint is not None and \
                now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_s
            self.host.spawn(self.make_checkpoint())
        if core.phase is RecvPhase.CLOSED and self.paused is None:
            self.close()
            return
        self._arm(core.get_timer())

    def _flush_writes(self, force: bool = True) -> None:
        """Hand the received blocks to the writer thread (see WRITE_BATCH_BLOCKS)."""
        core = self.core
        if not core.writes or self.sink is None:
            return
        if not force and len(core.writes) < WRITE_BATCH_BLOCKS:
            if self._write_timer is None and not self._writes_in_flight:
                self._write_timer = asyncio.get_running_loop().call_later(
                    WRITE_DELAY_S, self._flush_writes)
            return  # a timer or the write in progress flushes them
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        writes, core.writes = core.writes, []
        size = sum(len(w[2]) for w in writes)
        self._queued_bytes += size
        self._writes_in_flight += 1
        loop = asyncio.get_running_loop()
        future = self._executor().submit(self.sink.write, writes)
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._written, f, size))

    def _arm(self, deadline: float | None) -> None:
        if self._next_checkpoint is not None:
            deadline = self._next_checkpoint if deadline is None else \
                min(deadline, self._next_checkpoint)
        # a timer already set for the same time or sooner stays (one that fires early
        # finds nothing due and sets the next): most steps then set no timer at all
        if self._timer is not None:
            if deadline is not None and self._timer_at <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer_at = deadline
            self._timer = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0),
                                       self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        self.core.handle_timer(now)
        self.step(now)

    def _submit(self, func: Callable[..., Any], *args: Any,
                done: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        """Queue a disk operation after the blocks received and files ready so far."""
        self._flush_writes()
        self._flush_commits()
        loop = asyncio.get_running_loop()
        future = self._executor().submit(func, *args)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        self._flush_writes()
        self._flush_commits()
        return await asyncio.wrap_future(self._executor().submit(func, *args))

    def _written(self, future: concurrent.futures.Future[Any], size: int) -> None:
        self._queued_bytes -= size
        self._writes_in_flight -= 1
        self._flush_writes(force=False)
        exc = future.exception()
        if exc is not None and self.core.phase is RecvPhase.DATA:
            self._sink_failed(exc)
        self.endpoint.resume_if_drained()
        if self.on_drained is not None and self._queued_bytes < MAX_QUEUED_WRITE_BYTES // 2:
            self.on_drained()

    def _sink_failed(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, DiskError) else f"Internal error: {exc!r}"
        if not isinstance(exc, DiskError):
            log.error("receive %s: %r", self.transfer_id, exc)
        elif exc.curable and self.core.phase is not RecvPhase.FAILED:
            self._curable = True  # keep what is on disk: the transfer can be resumed
            # an object store out of reach: every write went through, so all that was
            # received is kept (not only what the last checkpoint made durable), and the
            # sender is told to try again later by itself
            self._writes_sound = isinstance(exc, StorageUnavailable)
        self.core.fail(message, ERROR_BUSY if isinstance(exc, StorageUnavailable)
                       else ERROR_REFUSED)
        self.step(time.monotonic())

    async def _login(self, login: Login) -> None:
        """Decide who the sender may send as (a task: a password's hash is slow, and waits
        its turn in the login throttle)."""
        user: str | None = None
        try:
            self.grant = await self.host.authorize_sender(
                plain_host(self.address[0]), login.user, login.password, login.client_key,
                login.token)
            user, refusal = self.grant.user, ""
        except (AuthFailed, PermissionDenied) as exc:
            self.host.stats.failed_logins["transfer"] += 1
            limited_log.warning("login", "refused a transfer login from %s as %r: %s",
                                host_port(plain_host(self.address[0]), self.address[1]),
                                login.user, exc.message)
            # (a refusal of a token's says its stable code: the sender's errorCode)
            refusal = exc.message if exc.code == AuthFailed.code else \
                f"{exc.code}: The receiving server refused the destination token: " \
                f"{exc.message}"
        if not self._closed:
            self.core.login_decided(user, refusal)
            if user is not None:
                self.host.bandwidth.join("in", self, self._share)
            self.step(time.monotonic())

    def _share(self, kbps: int) -> None:
        """This transfer's share of the incoming limit: told to the sender in each ACK."""
        self.core.rate_limit_kbps = kbps

    # -- records ----------------------------------------------------------------------------

    def _start_record(self) -> None:
        core, grant = self.core, self.grant
        assert core.user is not None and grant is not None
        known = self.host.receives.get(self.transfer_id)
        if known is not None and (known.user, known.token, known.path) == (
                grant.user, grant.token, grant.path):
            self.record = known  # a new session of a transfer seen before: resume
            known.status = RECEIVE.move(known.transfer_id, known.status, "resume")
            known.error_message = known.end_time_us = None
            known.source_ip, known.source_port = plain_host(self.address[0]), self.address[1]
        else:
            self.record = ReceiveRecord(self.transfer_id, core.user,
                                        plain_host(self.address[0]), self.address[1],
                                        self.transport, token=grant.token, path=grant.path)
            self.host.receives[self.transfer_id] = self.record
        self.record.client_key = public_key_text(core.client_key)
        self.record.encrypted = core.channel.encrypt_data
        log.info("receiving transfer %s from %s:%d for %s", self.transfer_id,
                 self.record.source_ip, self.address[1], core.user)

    def _save_record(self) -> None:
        if self.record is not None:
            self.host.save_receive(self.record)

    def _update_record(self) -> None:
        record, core = self.record, self.core
        if record is None:
            return
        self.host.stats.bytes_received += core.bytes - self._counted_bytes
        self._counted_bytes = record.bytes_recv = core.bytes
        record.packets_recv = core.packets
        record.duplicate_blocks = core.duplicates
        record.files_complete = core.committed - len(record.skipped)
        record.last_recv_time_us = record.last_send_time_us = now_us()
        if core.phase is RecvPhase.COMPLETE and record.status is ReceiveStatus.RECEIVING:
            record.status = RECEIVE.move(record.transfer_id, record.status, "complete")
            record.end_time_us = now_us()
            record.checkpoint = None
            self._save_record()
            if self.sink is not None:
                self._submit(self.sink.close, done=lambda _: None)
            log.info("transfer %s received: %d files, %s bytes", record.transfer_id,
                     record.total_files, record.total_size)
            lines = "".join(f"{_quote(name)} {path}\n" for name, path in
                            _written(record))
            token = record.token or ""
            self.host.fire("recv.transferComplete", record.transfer_id, record.user, token,
                           stdin=lines.encode())
            self.host.fire("recv.transferComplete.json", record.transfer_id, record.user,
                           token, stdin=_trigger_json(record))

    # -- metadata, commits, checkpoints ---------------------------------------------------

    async def _prepare(self, ready: MetadataReady) -> None:
        """Prepare the files the metadata describes (a task of its own: nothing it raises
        may leave the sender without an answer)."""
        try:
            await self._prepare_files(ready)
        except Exception:
            log.exception("receive %s: the metadata could not be taken", self.transfer_id)
            self.core.fail("The receiving server could not take the transfer's metadata "
                           "(an internal error: its log has the details).")
            self.step(time.monotonic())

    async def _prepare_files(self, ready: MetadataReady) -> None:
        """The disk work of the core's decisions: an earlier session paused, the record
        updated, the folders made and the paths checked, the kept files found."""
        core, record, meta, layout = self.core, self.record, ready.metadata, ready.layout
        assert core.user is not None and record is not None
        self.checkpoint_s = float(meta.checkpoint_s or DEFAULT_CHECKPOINT_S)
        earlier = self.endpoint.session_of(self.transfer_id, other_than=self)
        if earlier is not None:  # the sender started over: take the earlier one's place
            await earlier.pause("replaced by a new session of the same transfer")
        resume = record.checkpoint if record.meta_digest == ready.resume_key else None
        record.meta_digest = ready.resume_key
        record.destination_path = meta.destination_path
        record.total_size = meta.total_size
        record.total_files = sum(1 for f in meta.files if f.size is not None)
        record.input_files = [f.path for f in meta.files if f.size is not None]
        record.user_data = meta.user_data
        keep = resume.partly_received(layout) if resume is not None else set()
        try:
            self.sink = sink = self._sink(meta, keep)
            paths = await self._run(sink.prepare)
        except Exception as exc:
            self._sink_failed(exc)
            return
        record.output_files = [p for p, f in zip(paths, meta.files, strict=True)
                               if f.size is not None]
        record.overwrite = meta.overwrite
        if resume is not None:
            log.info("transfer %s resumes: %d blocks and %d files kept (%d gone)",
                     self.transfer_id, sum(e - s for s, e in resume.ranges),
                     len(resume.committed), len(sink.lost))
        elif meta.overwrite != "always":
            try:
                skipped, reused = await self._run(sink.keep_existing, layout.block_size)
            except Exception as exc:
                self._sink_failed(exc)
                return
            resume = Checkpoint.kept(layout, skipped, reused,
                                     meta.chunk_bytes // layout.block_size)
            files = [i for i, f in enumerate(meta.files) if f.size is not None]
            record.skipped = [n for n, i in enumerate(files) if i in skipped]
            log.info("transfer %s: %s keeps %d files as they are; %d files received in "
                     "part", self.transfer_id, meta.overwrite, len(skipped), len(reused))
        if not record.announced:
            record.announced = True
            self.host.fire("recv.transferStarted", record.transfer_id, record.user,
                           record.token or "", stdin=_trigger_json(record))
        self._save_record()
        core.metadata_accepted(layout, resume, sink.lost)
        self._next_checkpoint = time.monotonic() + self.checkpoint_s
        self.step(time.monotonic())

    def _sink(self, meta: Metadata, keep: set[int]) -> Sink:
        assert self.core.user is not None and self.record is not None
        sandbox = self.host.sandbox(self.core.user, self.record.path)
        if isinstance(sandbox, S3Sandbox):
            return S3Sink(Bucket(sandbox), meta, self.transfer_id, self.host.spool_dir, keep,
                          self.endpoint.s3_carry)
        return FileSink(sandbox, meta, self.transfer_id, keep)

    def _commit(self, event: FileReady) -> None:
        """Files ready are committed in groups: one group at a time goes to the writer
        thread, and the files that become ready meanwhile make the next (see
        FileSink.commit_many: a group costs one flush to disk, not one per file)."""
        self._commit_queue.append(event)
        if not self._committing:
            self._flush_commits()

    def _flush_commits(self) -> None:
        if not self._commit_queue or self.sink is None:
            return
        events, self._commit_queue = self._commit_queue, []
        self._committing = True

        def committed(future: concurrent.futures.Future[Any]) -> None:
            self._committing = False
            exc = future.exception()
            results = [exc] * len(events) if exc is not None else future.result()
            failures = [r for r in results if isinstance(r, BaseException)]
            for event, result in zip(events, results, strict=True):
                if not isinstance(result, BaseException):
                    self.core.file_committed(event.file)
                    self.host.stats.files_received += 1
            record = self.record
            if record is not None and record.status is ReceiveStatus.ERROR and \
                    record.checkpoint is not None:
                record.checkpoint = self.core.durable(record.checkpoint)  # (failed since)
                self._save_record()
            if failures:
                self._sink_failed(failures[0])
                return
            self._flush_commits()
            self.step(time.monotonic())

        self._submit(self.sink.commit_many, [(e.file, e.digest, e.size) for e in events],
                     done=committed)

    async def make_checkpoint(self) -> None:
        """Make what is written durable and record it (for a later session)."""
        if self.sink is None or self.record is None or \
                self.core.phase not in (RecvPhase.DATA, RecvPhase.CLOSED):
            return
        self._flush_writes()
        snapshot: Checkpoint = self.core.checkpoint()
        try:
            await self._run(self.sink.sync)
        except Exception as exc:
            self._sink_failed(exc)
            return
        if self.record.status is ReceiveStatus.RECEIVING:
            self.record.checkpoint = snapshot
            self._save_record()

    def pause_soon(self, reason: str) -> asyncio.Future[None]:
        """End this session, keeping what was received for a later one; the future is
        done when the data is durable and recorded."""
        if self.paused is None:
            self.paused = asyncio.get_running_loop().create_future()
            self.host.spawn(self._pause(reason, self.paused))
        return self.paused

    async def pause(self, reason: str) -> None:
        await self.pause_soon(reason)

    async def _pause(self, reason: str, done: asyncio.Future[None]) -> None:
        try:
            if self.core.phase in (RecvPhase.DATA, RecvPhase.CLOSED) and self.sink and \
                    self.record is not None and self.record.status is ReceiveStatus.RECEIVING:
                await self.make_checkpoint()
                await self._run(self.sink.release)
                self.record.last_error_time_us = now_us()
                log.info("transfer %s paused: %s", self.transfer_id, reason)
            # before its data flowed a session has nothing to keep but its earlier
            # checkpoint, which stays as it is
        finally:
            self.sink = None
            self.close()
            done.set_result(None)

    def _fail(self, message: str | None) -> None:
        """The transfer is not received (refused, closed by its sender, or failed)."""
        record = self.record
        keep = self._curable and record is not None
        if record is not None and record.status is ReceiveStatus.RECEIVING:
            record.status = RECEIVE.move(record.transfer_id, record.status, "fail")
            record.error_message = message
            record.end_time_us = record.last_error_time_us = now_us()
            if keep and self._writes_sound and self.core.layout is not None:
                # (hand the sink the blocks still waiting now: below it is let go of
                # before it is closed, and _submit flushes only the session's own sink)
                self._flush_writes()
                record.checkpoint = self.core.checkpoint()
            else:
                record.checkpoint = self.core.durable(record.checkpoint) if keep else None
            self._save_record()
            log.warning("transfer %s not received: %s%s", record.transfer_id, message,
                        " (what it has is kept: it can be resumed)" if keep else "")
        if self.sink is not None:
            sink, self.sink = self.sink, None
            self._submit(sink.close_keeping if keep else sink.abort, done=lambda _: None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.host.bandwidth.leave("in", self)
        for timer in (self._timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        if self.core.phase is not RecvPhase.COMPLETE and self.paused is None:
            self._fail(self.core.error or "The transfer was closed.")
        if self._writer is not None:
            self._writer.shutdown(wait=False)
        self.endpoint.forget(self)
        if self.on_closed is not None:
            self.on_closed()


def _quote(name: str) -> str:
    """A manifest file name as the first word of a recv.transferComplete stdin line:
    ``%``, space and tab are written %25, %20 and %09, so that the documented
    ``read -r manifest_file file_path`` loop gets the whole absolute path."""
    return name.replace("%", "%25").replace(" ", "%20").replace("\t", "%09")


def _written(record: ReceiveRecord) -> list[tuple[str, str]]:
    """(input, output) of each file written (not of those the overwrite rule kept)."""
    skipped = set(record.skipped)
    return [pair for n, pair in enumerate(zip(record.input_files, record.output_files,
                                              strict=True)) if n not in skipped]


def _trigger_json(record: ReceiveRecord) -> bytes:
    """The Transfer Meta Data: the files written, userData; and with an overwrite rule
    other than ``always``, the rule and the files it kept as they were."""
    written = _written(record)
    meta: dict[str, Any] = {"inputFiles": [i for i, _ in written],
                            "outputFiles": [o for _, o in written],
                            "userData": record.user_data}
    if record.overwrite != "always":
        meta.update(overwrite=record.overwrite,
                    skippedFiles=[record.input_files[n] for n in record.skipped],
                    skippedOutputFiles=[record.output_files[n] for n in record.skipped])
    return orjson.dumps(meta) + b"\n"
