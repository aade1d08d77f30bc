"""The receiving end of one transfer session, sans-I/O.

The endpoint parses each datagram's header and hands the body to
:meth:`ReceiverCore.receive`. The core answers the handshake, collects the metadata, hands
file data out as :attr:`ReceiverCore.writes` (file, offset, bytes) for the adapter to write,
raises events (:class:`MetadataReady`, :class:`FileReady`, :class:`Closed`) for the adapter
to act on, and acknowledges. The adapter reports back with :meth:`metadata_accepted`,
:meth:`file_committed` and :meth:`fail`.

Before the sender has logged in, a session holds only its HELLO, its challenge and a
pending proof: metadata blocks are kept only once it has, as they arrive. A session that
has not logged in within ``UNAUTHENTICATED_TIMEOUT_S`` of its HELLO is forgotten (a HELLO
repeated does not extend it). A proof is checked when the :class:`Authorizer` (the login
throttle) lets it; until then the session waits, with a timer.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from ..errors import Garbage
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
    MAX_ACK_RANGES,
    TS_MASK,
    VERSION,
    Ack,
    Challenge,
    Hello,
    Kind,
    decode_error,
    encode,
    encode_ack,
    encode_challenge,
    encode_error,
)

__all__ = ["Authorizer", "Checkpoint", "Closed", "FileReady", "MetadataReady", "ReceiverCore",
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
_U32 = 2**32


class Authorizer(Protocol):
    """Who may send: the receiver's users, and its login throttle."""

    allow_anonymous: bool

    def challenge(self, user: str) -> tuple[bytes, int, int, int]:
        """(salt, log2 n, r, p) of the user's password hash; made up for unknown users."""
        ...

    def wait_s(self, user: str, peer: str, now: float) -> float:
        """How long a login of ``user`` from address ``peer`` must still wait before its
        proof is checked (failed logins slow the next ones); 0: check it now."""
        ...

    def verify(self, user: str, peer: str, proof: bytes, nonce: bytes, session: int,
               transfer_id: bytes, now: float) -> bool:
        """Check the proof (when :meth:`wait_s` says 0) and count the outcome."""
        ...


class RecvPhase(Enum):
    """Where a receiving session is: login, metadata, preparing, data, complete, or over."""
    CHALLENGED = "challenged"
    METADATA = "metadata"
    PREPARING = "preparing"
    DATA = "data"
    COMPLETE = "complete"
    FAILED = "failed"
    CLOSED = "closed"


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


Event = MetadataReady | FileReady | Closed


@dataclass
class Checkpoint:
    """Blocks safely on disk, digests received, files already in place."""

    ranges: list[tuple[int, int]]
    digests: dict[int, tuple[bytes, int]]
    committed: set[int]

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
    """One incoming session; ``address`` is where its datagrams come from."""

    def __init__(self, session: int, hello: Hello, authorizer: Authorizer,
                 now: float, address: tuple[str, int] = ("", 0)) -> None:
        if not MIN_BLOCK <= hello.block_size <= MAX_BLOCK:
            raise Garbage("block size out of range")
        if not 0 < hello.meta_size <= MAX_METADATA_BYTES or \
                hello.meta_blocks != -(-hello.meta_size // hello.block_size):
            raise Garbage("bad metadata size")
        self.session = session
        self.hello = hello
        self.authorizer = authorizer
        self.address = address
        #: the sender's host, as the login throttle counts it
        self.peer = address[0]
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
        self._digests: dict[int, tuple[bytes, int]] = {}
        self._control: list[bytes] = []
        self._nonce = secrets.token_bytes(16)
        self._started_s = now
        #: a proof waiting for its turn (see Authorizer.wait_s), checked at _proof_at
        self._proof: bytes | None = None
        self._proof_at: float | None = None
        self._unacked = 0
        self._ack_now = False
        self._ack_due: float | None = None
        self._echo_ts: int | None = None  # low 32 bits of a sender's clock (us)
        self._echo_at = now
        self.last_recv_s = now
        self.packets = 0
        self.bytes = 0
        self.duplicates = 0
        self.phase = RecvPhase.CHALLENGED
        self._error_code = ERROR_REFUSED
        if hello.user:
            salt, log2_n, r, p = authorizer.challenge(hello.user)
            self._challenge = encode_challenge(
                session, Challenge(self._nonce, log2_n, r, p, salt))
            self._control.append(self._challenge)
        elif authorizer.allow_anonymous:
            self._accept("anonymous")
        else:
            self.fail("This server accepts transfers only from its users: give the "
                      "destination the destinationUser and destinationPassword of an "
                      "account on it.")

    # -- from the adapter -------------------------------------------------------------

    def fail(self, message: str, code: int = ERROR_REFUSED) -> None:
        """Refuse the transfer (``ERROR_BUSY``: for now; the sender tries again later)."""
        if self.phase in (RecvPhase.FAILED, RecvPhase.CLOSED, RecvPhase.COMPLETE):
            return
        self.phase = RecvPhase.FAILED
        self.error = message
        self._error_code = code
        self._control.append(encode_error(self.session, Kind.ERROR, message, code))

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

    def _accept(self, user: str) -> None:
        self.user = user
        self.phase = RecvPhase.METADATA
        self._control.append(encode(Kind.ACCEPT, self.session))

    # -- datagrams --------------------------------------------------------------------

    def receive(self, kind: Kind, body: memoryview, size: int, now: float) -> None:
        """One datagram of this session (header checked); raises Garbage if malformed."""
        self.last_recv_s = now
        self.packets += 1
        self.bytes += size
        phase = self.phase
        if phase in (RecvPhase.FAILED, RecvPhase.CLOSED):
            if phase is RecvPhase.FAILED and kind is not Kind.CLOSE:
                self._control.append(encode_error(self.session, Kind.ERROR,
                                                  self.error or "failed", self._error_code))
            if kind is Kind.CLOSE:
                self.phase = RecvPhase.CLOSED
            return
        if kind is Kind.DATA:
            self._data(body, now)
        elif kind is Kind.HELLO:
            if phase is RecvPhase.CHALLENGED:
                self._control.append(self._challenge)
            else:
                self._control.append(encode(Kind.ACCEPT, self.session))
        elif kind is Kind.AUTH:
            self._auth(bytes(body), now)
        elif kind is Kind.PING:
            self._ack_now = True
        elif kind is Kind.CLOSE:
            if phase is not RecvPhase.COMPLETE:
                code, reason = decode_error(body)
                self.events.append(Closed(reason or "closed by the sender",
                                          pause=code == CLOSE_PAUSE))
            self.phase = RecvPhase.CLOSED
        else:
            raise Garbage(f"unexpected {kind.name}")

    @property
    def auth_waiting(self) -> bool:
        """A proof has arrived and waits for its turn to be checked."""
        return self._proof_at is not None

    def _auth(self, proof: bytes, now: float) -> None:
        if self.phase is not RecvPhase.CHALLENGED:
            if self.phase is not RecvPhase.FAILED:
                self._control.append(encode(Kind.ACCEPT, self.session))
            return
        if self._proof is None:  # (an AUTH repeated while one waits is dropped)
            self._proof = proof
            self._check_proof(now)

    def _check_proof(self, now: float) -> None:
        assert self._proof is not None
        user = self.hello.user
        wait = self.authorizer.wait_s(user, self.peer, now)
        if wait > 0:
            self._proof_at = now + wait
            return
        proof, self._proof, self._proof_at = self._proof, None, None
        if self.authorizer.verify(user, self.peer, proof, self._nonce, self.session,
                                  self.hello.transfer_id, now):
            self._accept(user)
        else:
            self.fail(f"The receiving server refused user {user!r}: wrong user name or "
                      "password.")

    def _data(self, body: memoryview, now: float) -> None:
        if self.phase is RecvPhase.CHALLENGED:
            raise Garbage("data before authentication")
        if len(body) < DATA_HEADER.size:
            raise Garbage("short DATA")
        high, low, sent_us = DATA_HEADER.unpack_from(body, 0)
        block = high << 32 | low
        payload = body[DATA_HEADER.size:]
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

    def _metadata_block(self, block: int, payload: memoryview) -> None:
        offset = block * self.hello.block_size
        expected = min(self.hello.block_size, self.hello.meta_size - offset)
        if len(payload) != expected:
            raise Garbage("bad metadata block length")
        if not self.received.add(block):
            self.duplicates += 1
            return
        self._metadata[block] = bytes(payload)
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

    def _file_block(self, block: int, payload: memoryview, layout: Layout) -> None:
        if block >= layout.total_blocks:
            raise Garbage("block beyond the transfer")
        slot = layout.locate(block)
        if len(payload) != slot.length:
            raise Garbage("bad block length")
        highest_end = self.received.end
        if not self.received.add(block):
            self.duplicates += 1
            return
        if block > highest_end:
            self._ack_now = True  # a new gap opened: tell the sender soon
        if slot.digest:
            digest, size = DIGEST.unpack(payload[-DIGEST.size:])
            if size != layout.sizes[slot.file]:
                self.fail(f"File {slot.file} changed size during the transfer.")
                return
            self._digests[slot.file] = (digest, size)
            if len(payload) > DIGEST.size:  # a small file's bytes, before its digest
                self.writes.append((slot.file, 0, bytes(payload[:-DIGEST.size])))
        else:
            self.writes.append((slot.file, slot.offset, bytes(payload)))
        count = self._file_blocks.get(slot.file, 0) + 1
        self._file_blocks[slot.file] = count
        if count == layout.data_blocks[slot.file] + 1:
            digest, size = self._digests[slot.file]
            self.events.append(FileReady(slot.file, digest, size))

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
            out.append(encode_ack(self.session, Ack(
                cum, self.packets, self.bytes, int(now * 1e6), self._echo_ts or 0, delay_us,
                self.committed, flags, chunk)))
        return out

    def _expires_at(self) -> float:
        """When the session is forgotten if nothing more arrives."""
        if self.phase is RecvPhase.CHALLENGED:
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
        if self._proof_at is not None:
            deadlines.append(self._proof_at)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on time: forget a silent session, check a proof whose turn came."""
        if self.phase is RecvPhase.CLOSED:
            return
        if now >= self._expires_at():
            if self.phase in (RecvPhase.METADATA, RecvPhase.PREPARING, RecvPhase.DATA):
                self.events.append(Closed(
                    f"The sender was silent for {IDLE_TIMEOUT_S:.0f} s.", pause=True))
            self.phase = RecvPhase.CLOSED
            return
        if self._proof_at is not None and now >= self._proof_at and \
                self.phase is RecvPhase.CHALLENGED:
            self._check_proof(now)


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
