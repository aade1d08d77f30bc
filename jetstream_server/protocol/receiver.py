"""The receiving end of one transfer session, sans-I/O.

The endpoint (``protocol/endpoint.py``) answers a sender's HELLO: it completes the Noise
handshake, which authenticates both servers' keys and keys the session's
:class:`~jetstream_server.protocol.channel.Channel`, and makes a :class:`ReceiverCore`
with the handshake's reply to send. The endpoint opens each later message with the
channel and hands its body to :meth:`ReceiverCore.receive`. The core asks who the sender
may send as (:class:`Login`: its user, the password it proved in AUTH if any, its key),
collects the metadata, hands file data out as :attr:`ReceiverCore.writes` (file, offset,
bytes) for the adapter to write, raises events (:class:`MetadataReady`,
:class:`FileReady`, :class:`Closed`) for the adapter to act on, and acknowledges. The
adapter reports back with :meth:`login_decided`, :meth:`metadata_accepted`,
:meth:`file_committed` and :meth:`fail`.

Before the sender has logged in, a session holds only its handshake's reply and keys:
metadata blocks are kept only once it has, as they arrive. A session that has not logged
in within ``UNAUTHENTICATED_TIMEOUT_S`` of its HELLO is forgotten (a HELLO repeated does
not extend it).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from enum import Enum

from ..errors import Garbage
from .channel import Channel
from .layout import DIGEST, MAX_BLOCKS, Layout
from .metadata import Metadata, decode_metadata
from .ranges import RangeSet
from .wire import (
    ACK_COMPLETE,
    ACK_DELAY_S,
    ACK_ECHO,
    ACK_READY,
    CLOSE_PAUSE,
    DATA_HEADER,
    ERROR_REFUSED,
    HELLO_ENCRYPT,
    HELLO_PASSWORD,
    HELLO_TOKEN,
    MAX_ACK_RANGES,
    TS_MASK,
    VERSION,
    Ack,
    Hello,
    Kind,
    decode_error,
    encode_ack,
    encode_error,
)

__all__ = ["Checkpoint", "Closed", "FileReady", "Login", "MetadataReady", "ReceiverCore",
           "RecvPhase"]

#: Data datagrams between two acknowledgements (more often when blocks go missing).
ACK_EVERY = 16
IDLE_TIMEOUT_S = 120.0
#: A session not logged in this long after its HELLO is forgotten; a failed one, this long
#: after its last datagram.
UNAUTHENTICATED_TIMEOUT_S = 10.0
MAX_METADATA_BYTES = 256 * 1024 * 1024
MIN_BLOCK, MAX_BLOCK = 256, 1024 * 1024
#: ACK datagrams sent at once when many ranges are missing.
MAX_ACK_DATAGRAMS = 4
#: The longest password a sender may prove (the users file takes 4096 bytes and more).
MAX_PASSWORD_BYTES = 8192
_U32 = 2**32


class RecvPhase(Enum):
    """Where a receiving session is: login, metadata, preparing, data, complete, or over."""
    LOGIN = "login"
    METADATA = "metadata"
    PREPARING = "preparing"
    DATA = "data"
    COMPLETE = "complete"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Login:
    """The sender asks to send as ``user``: with the ``password`` it proved (None: it has
    none, and may be authorized by its ``client_key``, or be anonymous), or with a
    ``token`` of this server's (and the token's password, if any). The adapter decides,
    then calls :meth:`ReceiverCore.login_decided`."""

    user: str
    password: str | None = None
    client_key: bytes = b""
    token: str | None = None


@dataclass(frozen=True)
class MetadataReady:
    """The metadata is complete, decoded and checked: the adapter prepares the files
    (and may resume an earlier session), then calls :meth:`ReceiverCore.metadata_accepted`."""

    metadata: Metadata
    layout: Layout
    #: names this very transfer (its metadata, block size and protocol version): an
    #: earlier session's checkpoint is resumed only under the same key
    resume_key: str


@dataclass(frozen=True)
class FileReady:
    """Every block of a file has arrived: the adapter verifies and commits it."""
    file: int
    digest: bytes
    size: int


@dataclass(frozen=True)
class Closed:
    """The sender ended the session, or went silent (``pause``: keep the data)."""
    reason: str
    pause: bool = False  # keep what was received for a later session


Event = Login | MetadataReady | FileReady | Closed


@dataclass
class Checkpoint:
    """Blocks safely on disk, digests received, files already in place."""

    ranges: list[tuple[int, int]]
    digests: dict[int, tuple[bytes, int]]
    committed: set[int]

    @classmethod
    def kept(cls, layout: Layout, skipped: set[int], reused: dict[int, list[int]],
             chunk_blocks: int) -> Checkpoint:
        """What the overwrite rule keeps of the files there: the ``skipped`` files whole
        (in place), and of each ``reused`` file the data blocks of its matching chunks
        (chunks of ``chunk_blocks`` blocks)."""
        kept = RangeSet()
        for file in skipped:
            kept.add_range(*layout.file_range(file))
        for file, chunks in reused.items():
            first, end = layout.file_range(file)
            for k in chunks:
                kept.add_range(first + k * chunk_blocks,
                               min(first + (k + 1) * chunk_blocks, end - 1))
        return cls(kept.ranges(), {}, set(skipped))

    def partly_received(self, layout: Layout) -> set[int]:
        """The files this checkpoint holds some data of, not yet in place: their
        temporary files are kept and reopened, not truncated."""
        kept = RangeSet()
        for start, end in self.ranges:
            kept.add_range(start, end)
        return {f for f in layout.files
                if f not in self.committed and kept.count_in(*layout.file_range(f))}

    def without(self, layout: Layout, files: set[int]) -> Checkpoint:
        """This checkpoint with nothing of ``files`` kept (their data is gone)."""
        cuts = sorted(layout.file_range(f) for f in files)
        ranges: list[tuple[int, int]] = []
        for start, end in self.ranges:
            for cut_start, cut_end in cuts:
                if cut_end <= start or cut_start >= end:
                    continue
                if cut_start > start:
                    ranges.append((start, cut_start))
                start = max(start, cut_end)
            if start < end:
                ranges.append((start, end))
        return Checkpoint(ranges, {f: d for f, d in self.digests.items() if f not in files},
                          self.committed - files)


class ReceiverCore:
    """One incoming session (see the module's docstring): ``hello`` as the handshake
    carried it, ``client_key`` the sending server's public key it proved, ``channel``
    its sealed messages, ``reply`` the handshake's answer (sent again for a HELLO
    repeated), ``address`` where its datagrams come from, ``encrypts`` whether this
    server encrypts data (and so refuses a sender that does not)."""

    def __init__(self, session: int, hello: Hello, client_key: bytes, channel: Channel,
                 reply: bytes, now: float, address: tuple[str, int] = ("", 0),
                 encrypts: bool = True) -> None:
        if not MIN_BLOCK <= hello.block_size <= MAX_BLOCK:
            raise Garbage("block size out of range")
        if not 0 < hello.meta_size <= MAX_METADATA_BYTES or \
                hello.meta_blocks != -(-hello.meta_size // hello.block_size):
            raise Garbage("bad metadata size")
        self.session = session
        self.hello = hello
        #: the most the sender may send at (kbit/s; 0: no limit), told in every ACK
        self.rate_limit_kbps = 0
        self.client_key = client_key
        self.channel = channel
        self.address = address
        self.user: str | None = None
        self.error: str | None = None
        self.layout: Layout | None = None
        self.received = RangeSet()
        #: metadata blocks received (only once logged in), joined when all are here
        self._metadata: dict[int, bytes] = {}
        self.writes: list[tuple[int, int, bytes]] = []
        self.events: deque[Event] = deque()
        self.committed_files: set[int] = set()
        self._file_blocks: dict[int, int] = {}
        #: the data blocks [first, end) of the file of the last block, its index and size
        self._span = (0, 0, -1, 0)
        self._digests: dict[int, tuple[bytes, int]] = {}
        self._reply = reply
        self._control: list[bytes] = [reply]
        self._started_s = now
        #: a Login event is with the adapter, not yet decided
        self.login_pending = False
        self._unacked = 0
        self._ack_now = False
        self._ack_due: float | None = None
        self._echo_ts: int | None = None  # low 32 bits of a sender's clock (us)
        self._echo_at = now
        self.last_recv_s = now
        self.packets = 0
        self.bytes = 0
        self.duplicates = 0
        self.phase = RecvPhase.LOGIN
        self._error_code = ERROR_REFUSED
        if encrypts and not hello.flags & HELLO_ENCRYPT:
            self.fail("This server encrypts every transfer, and the sending server has "
                      "data encryption turned off (--no-data-encryption): turn it on there "
                      "to send here.")
        elif not hello.flags & HELLO_PASSWORD:
            self._ask_login(None)

    # -- from the adapter -------------------------------------------------------------

    def fail(self, message: str, code: int = ERROR_REFUSED) -> None:
        """Refuse the transfer (``ERROR_BUSY``: for now; the sender tries again later)."""
        if self.phase in (RecvPhase.FAILED, RecvPhase.CLOSED, RecvPhase.COMPLETE):
            return
        self.phase = RecvPhase.FAILED
        self.error = message
        self._error_code = code
        self._control.append(self.channel.seal(Kind.ERROR, encode_error(message, code)))

    def login_decided(self, user: str | None, refusal: str = "") -> None:
        """The adapter's answer to :class:`Login`: the user the transfer is received as,
        or None and the ``refusal`` the sender gets."""
        self.login_pending = False
        if self.phase is not RecvPhase.LOGIN:
            return
        if user is None:
            self.fail(refusal or "The receiving server refused the transfer.")
        else:
            self._accept(user)

    def metadata_accepted(self, layout: Layout, resume: Checkpoint | None = None,
                          lost: set[int] | None = None) -> None:
        """The files are ready; ``resume``: what an earlier session left on disk, but for
        the files in ``lost`` (whose temporary files are gone: received again)."""
        if self.phase is not RecvPhase.PREPARING:
            return
        if resume is not None and lost:
            resume = resume.without(layout, lost)
        self.layout = layout
        self.phase = RecvPhase.DATA
        self._ack_now = True
        if resume is not None:
            self._resume(layout, resume)
        if len(self.committed_files) == len(layout.files):
            self._complete()

    def _resume(self, layout: Layout, resume: Checkpoint) -> None:
        for start, end in resume.ranges:
            self.received.add_range(max(start, layout.meta_blocks),
                                    min(end, layout.total_blocks))
        self._digests.update(resume.digests)
        self.committed_files.update(resume.committed)
        for file in layout.files:
            first, end = layout.file_range(file)
            count = self.received.count_in(first, end)
            self._file_blocks[file] = count
            if count == end - first and file not in self.committed_files and \
                    file in self._digests:
                digest, size = self._digests[file]
                self.events.append(FileReady(file, digest, size))

    def checkpoint(self) -> Checkpoint:
        """What is received so far (the caller makes the writes durable first)."""
        return Checkpoint(self.received.ranges(), dict(self._digests),
                          set(self.committed_files))

    def durable(self, base: Checkpoint | None) -> Checkpoint:
        """What is safely on disk when the writes since ``base`` (the last checkpoint
        made durable) cannot be trusted (they failed): ``base``, and every file put in
        place since (each was made durable before it was counted)."""
        kept = RangeSet()
        for start, end in base.ranges if base is not None else ():
            kept.add_range(start, end)
        if self.layout is not None:
            for file in self.committed_files:
                kept.add_range(*self.layout.file_range(file))
        return Checkpoint(kept.ranges(), dict(base.digests) if base is not None else {},
                          set(self.committed_files))

    @property
    def committed(self) -> int:
        """How many files are verified and in place."""
        return len(self.committed_files)

    def file_committed(self, file: int) -> None:
        """File ``file`` is verified, durable and in place (counted after a failure too:
        a resume keeps it)."""
        if self.layout is None:
            return
        self.committed_files.add(file)
        if self.phase is RecvPhase.DATA and len(self.committed_files) == len(
                self.layout.files):
            self._complete()

    def _complete(self) -> None:
        self.phase = RecvPhase.COMPLETE
        self._ack_now = True

    def _ask_login(self, password: str | None) -> None:
        self.login_pending = True
        token = None
        if password is not None and self.hello.flags & HELLO_TOKEN:
            token, _, rest = password.partition("\n")
            password = rest or None
        self.events.append(Login(self.hello.user, password, self.client_key, token))

    def _accept(self, user: str) -> None:
        self.user = user
        self.phase = RecvPhase.METADATA
        self._control.append(self.channel.seal(Kind.ACCEPT))

    def hello_again(self) -> None:
        """The sender repeated its HELLO (the reply was lost): answer it again, and the
        login's outcome if there is one."""
        self._control.append(self._reply)
        if self.phase is RecvPhase.FAILED:
            self._tell_failure()
        elif self.phase is not RecvPhase.LOGIN:
            self._control.append(self.channel.seal(Kind.ACCEPT))

    def _tell_failure(self) -> None:
        self._control.append(self.channel.seal(Kind.ERROR, encode_error(
            self.error or "failed", self._error_code)))

    # -- datagrams --------------------------------------------------------------------

    def receive(self, kind: Kind, head: memoryview, body: bytes, size: int,
                now: float) -> None:
        """One message of this session, opened by its channel: ``head`` its clear
        fields, ``body`` its content. Raises Garbage if malformed."""
        self.last_recv_s = now
        self.packets += 1
        self.bytes += size
        phase = self.phase
        if phase in (RecvPhase.FAILED, RecvPhase.CLOSED):
            if phase is RecvPhase.FAILED and kind is not Kind.CLOSE:
                self._tell_failure()
            if kind is Kind.CLOSE:
                self.phase = RecvPhase.CLOSED
            return
        if kind in (Kind.DATA, Kind.PLAIN_DATA):
            self._data(head, body, now)
        elif kind is Kind.AUTH:
            self._auth(body)
        elif kind is Kind.PING:
            if phase is RecvPhase.METADATA:  # (the sender may not have seen ACCEPT)
                self._control.append(self.channel.seal(Kind.ACCEPT))
            if phase is not RecvPhase.LOGIN:
                self._ack_now = True
        elif kind is Kind.CLOSE:
            if phase is not RecvPhase.COMPLETE:
                code, reason = decode_error(body)
                self.events.append(Closed(reason or "closed by the sender",
                                          pause=code == CLOSE_PAUSE))
            self.phase = RecvPhase.CLOSED
        else:
            raise Garbage(f"unexpected {kind.name}")

    def _auth(self, body: bytes) -> None:
        if self.phase is not RecvPhase.LOGIN:
            self._control.append(self.channel.seal(Kind.ACCEPT))
            return
        if self.login_pending or not self.hello.flags & HELLO_PASSWORD:
            return  # (an AUTH repeated while the first is checked)
        if len(body) > MAX_PASSWORD_BYTES:
            raise Garbage("password too long")
        self._ask_login(body.decode("utf-8", "surrogateescape"))

    def _data(self, head: memoryview, payload: bytes, now: float) -> None:
        if self.phase is RecvPhase.LOGIN:
            raise Garbage("data before the login")
        high, low, sent_us = DATA_HEADER.unpack_from(head, 0)
        block = high << 32 | low
        echo = self._echo_ts  # the newest transmission seen, for RTT and losses
        if echo is None or 0 < (sent_us - echo) & TS_MASK < 1 << 31:  # newer, mod 2^32
            self._echo_ts, self._echo_at = sent_us, now
        meta_blocks = self.hello.meta_blocks
        if block < meta_blocks:
            self._metadata_block(block, payload)
        elif self.phase is RecvPhase.DATA and self.layout is not None:
            self._file_block(block, payload, self.layout)
        elif self.phase is RecvPhase.COMPLETE:
            self.duplicates += 1
            self._ack_now = True
            return
        else:
            return  # file data before the metadata is accepted: the sender resends it
        self._unacked += 1

    def _metadata_block(self, block: int, payload: bytes) -> None:
        offset = block * self.hello.block_size
        expected = min(self.hello.block_size, self.hello.meta_size - offset)
        if len(payload) != expected:
            raise Garbage("bad metadata block length")
        if not self.received.add(block):
            self.duplicates += 1
            return
        self._metadata[block] = payload
        count = self.hello.meta_blocks
        if self.phase is RecvPhase.METADATA and self.received.first_missing(0) >= count:
            parts, self._metadata = self._metadata, {}
            self._take_metadata(b"".join(parts[i] for i in range(count)))

    def _take_metadata(self, raw: bytes) -> None:
        """Decode and check the complete metadata: the files to prepare, or a refusal."""
        hello = self.hello
        try:
            meta = decode_metadata(raw)
            if meta.transfer_id != hello.transfer_id.hex():
                raise ValueError("transfer metadata does not match the handshake")
            layout = Layout(hello.block_size, len(raw), meta.sizes)
            if meta.sums is not None and meta.chunk_bytes % hello.block_size:
                raise ValueError("its chunk checksums do not cover whole blocks")
            if layout.total_blocks >= MAX_BLOCKS:
                raise ValueError(f"it needs {MAX_BLOCKS} blocks or more")
        except ValueError as exc:
            self.fail(f"The sender's transfer metadata was refused: {exc}.")
            return
        self.phase = RecvPhase.PREPARING
        # (a checkpoint counts blocks and keeps file digests: valid only for the same
        # metadata, block size and protocol version)
        key = hashlib.sha256(raw + hello.block_size.to_bytes(4, "big") +
                             bytes([VERSION])).hexdigest()
        self.events.append(MetadataReady(meta, layout, key))

    def _file_block(self, block: int, payload: bytes, layout: Layout) -> None:
        first, end, file, size = self._span
        if first <= block < end:  # a data block of the file of the last one: most are
            offset = (block - first) * layout.block_size
            length, is_digest = min(layout.block_size, size - offset), False
        else:
            if block >= layout.total_blocks:
                raise Garbage("block beyond the transfer")
            file, offset, length, is_digest = layout.locate(block)
            if not is_digest:
                file_first, file_end = layout.file_range(file)
                file_size = layout.sizes[file]
                assert file_size is not None
                self._span = (file_first, file_end - 1, file, file_size)
        if len(payload) != length:
            raise Garbage("bad block length")
        highest_end = self.received.end
        if not self.received.add(block):
            self.duplicates += 1
            return
        if block > highest_end:
            self._ack_now = True  # a new gap opened: tell the sender soon
        if is_digest:
            digest, size = DIGEST.unpack(payload[-DIGEST.size:])
            if size != layout.sizes[file]:
                self.fail(f"File {file} changed size during the transfer.")
                return
            self._digests[file] = (digest, size)
            if len(payload) > DIGEST.size:  # a small file's bytes, before its digest
                self.writes.append((file, 0, payload[:-DIGEST.size]))
        else:
            self.writes.append((file, offset, payload))
        count = self._file_blocks.get(file, 0) + 1
        self._file_blocks[file] = count
        if count == layout.data_blocks[file] + 1:
            digest, size = self._digests[file]
            self.events.append(FileReady(file, digest, size))

    # -- outputs and time -------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The answers and acknowledgements to send now."""
        out, self._control = self._control, []
        if self.phase in (RecvPhase.METADATA, RecvPhase.PREPARING, RecvPhase.DATA,
                          RecvPhase.COMPLETE):
            if self._unacked and self._ack_due is None:
                self._ack_due = now + ACK_DELAY_S
            if self._ack_now or self._unacked >= ACK_EVERY or (
                    self._ack_due is not None and now >= self._ack_due):
                out += self._acks(now)
        return out

    def _acks(self, now: float) -> list[bytes]:
        self._unacked, self._ack_now, self._ack_due = 0, False, None
        cum = self.received.first_missing(0)
        flags = 0 if self._echo_ts is None else ACK_ECHO
        if self.phase is RecvPhase.DATA:
            flags |= ACK_READY
        elif self.phase is RecvPhase.COMPLETE:
            flags |= ACK_READY | ACK_COMPLETE
        ranges = self.received.ranges_from(cum, MAX_ACK_RANGES * MAX_ACK_DATAGRAMS)
        out: list[bytes] = []
        delay_us = min(int((now - self._echo_at) * 1e6), _U32 - 1)
        for i in range(0, max(len(ranges), 1), MAX_ACK_RANGES):
            chunk = _fit_u32(cum, ranges[i:i + MAX_ACK_RANGES])
            out.append(self.channel.seal(Kind.ACK, encode_ack(Ack(
                cum, self.packets, self.bytes, int(now * 1e6), self._echo_ts or 0, delay_us,
                self.committed, flags, chunk, self.rate_limit_kbps))))
        return out

    def _expires_at(self) -> float:
        """When the session is forgotten if nothing more arrives."""
        if self.phase is RecvPhase.LOGIN:
            return self._started_s + UNAUTHENTICATED_TIMEOUT_S
        if self.phase is RecvPhase.FAILED:
            return self.last_recv_s + UNAUTHENTICATED_TIMEOUT_S
        return self.last_recv_s + IDLE_TIMEOUT_S

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, if ever."""
        if self.phase is RecvPhase.CLOSED:
            return None
        deadlines = [self._expires_at()]
        if self._ack_due is not None:
            deadlines.append(self._ack_due)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on time: forget a silent session, send an ACK that is due."""
        if self.phase is RecvPhase.CLOSED:
            return
        if now >= self._expires_at():
            if self.phase in (RecvPhase.METADATA, RecvPhase.PREPARING, RecvPhase.DATA):
                self.events.append(Closed(
                    f"The sender was silent for {IDLE_TIMEOUT_S:.0f} s.", pause=True))
            self.phase = RecvPhase.CLOSED
            return


def _fit_u32(cum: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep the ranges whose gaps and lengths fit the ACK's 32-bit fields."""
    out: list[tuple[int, int]] = []
    previous = cum
    for start, end in ranges:
        if start - previous >= _U32 or end - start >= _U32:
            break
        out.append((start, end))
        previous = end
    return out
