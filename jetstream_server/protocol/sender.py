"""The sending end of one transfer session, sans-I/O.

Feed it with :meth:`SenderCore.receive_datagram`, take what it wants sent from
:meth:`SenderCore.datagrams_to_send`, and call :meth:`SenderCore.handle_timer` at
:meth:`SenderCore.get_timer`. Time is passed in (seconds, monotonic). File data comes from
a :class:`BlockSource`, which may answer "not yet" (None) while it reads ahead.

Phases: the receiver's public key is asked for (KEY_REQUEST) when none is pinned yet; the
Noise IK handshake (HELLO, REPLY) authenticates the receiver by that key and this server by
its own, and keys the session's channel; then the login (AUTH with the destination's
password, sealed, when it has one) until ACCEPT; then the metadata blocks until the
receiver's ACK says it is ready; then every block, paced, with selective retransmission
of what the receiver's ACKs show missing; then wait for the ACK that says every file is
verified and in place. Everything after the handshake is sealed (``protocol/channel.py``):
a datagram that does not authenticate, or is replayed, is dropped and counted.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from enum import Enum
from typing import Protocol

from ..errors import Garbage, SourceError, SourceUnavailable
from .channel import DATA_OVERHEAD, Channel
from .layout import Layout, Slot
from .noise import Cipher, Handshake, KeyPair, public_key_text
from .ranges import RangeSet
from .rate import Pacer, RateController, RatePolicy
from .wire import (
    ACK_COMPLETE,
    ACK_DELAY_S,
    ACK_ECHO,
    ACK_READY,
    CLOSE_FINAL,
    CLOSE_PAUSE,
    COOKIE_LEN,
    ERROR_BUSY,
    HEADER,
    HELLO_ENCRYPT,
    HELLO_PASSWORD,
    HELLO_TOKEN,
    KEY_ENCRYPTS,
    RECEIVE_HOLD_S,
    SEALED_KINDS,
    TS_MASK,
    Ack,
    Hello,
    Kind,
    decode_ack,
    decode_error,
    decode_key,
    encode_error,
    encode_hello,
    encode_hello_payload,
    encode_key_request,
    hello_prologue,
    new_session_id,
    open_plain,
    parse_header,
)

__all__ = ["KEY_PROBE_TRIES", "KEY_PROBE_WAIT_S", "BlockSource", "KeyProbe", "SendPhase",
           "SenderCore"]

#: The least time a later datagram must have been sent after a block, and seen by the
#: receiver, before the block counts as lost (reordering tolerance).
REORDER_MIN_S = 0.001
HANDSHAKE_RTO_S = 0.25
MAX_RTO_S = 2.0
#: Give up when the receiver has been silent this long.
SILENCE_TIMEOUT_S = 10.0
KEEPALIVE_S = 0.5
UNPACED_BPS = 1e12
#: The window counts as what holds the sender back when it is this many blocks from full
#: (two ACKs' worth): blocks acknowledged together leave it short of full between ACKs.
WINDOW_SLACK = 32
#: Bytes in flight in the TCP data mode (TCP's buffers hold the rest back), and blocks
#: (many small files: each is remembered until acknowledged).
RELIABLE_WINDOW_BYTES = 64 * 1024 * 1024
RELIABLE_WINDOW_BLOCKS = 65536
#: ACK ranges remembered as known (see _on_ack) before the memory starts anew.
MAX_KNOWN_RANGES = 4096


class BlockSource(Protocol):
    """Where a sender's file blocks come from (read ahead by the adapter)."""
    def block(self, slot: Slot) -> bytes | memoryview | None:
        """The payload of a file block or digest block; None when not read yet."""
        ...


class SendPhase(Enum):
    """Where a sending session is: learning the receiver's key, the handshake, the login,
    metadata, data, done or failed."""
    KEY = "key"
    HANDSHAKE = "handshake"
    LOGIN = "login"
    METADATA = "metadata"
    DATA = "data"
    DONE = "done"
    FAILED = "failed"


#: Phases in which blocks go out (the metadata waits for ACCEPT: a receiver checking a
#: password, a slow hash, would drop blocks sent meanwhile).
_SENDING = (SendPhase.METADATA, SendPhase.DATA)
#: Phases repeated on a timer until answered.
_HANDSHAKING = (SendPhase.KEY, SendPhase.HANDSHAKE, SendPhase.LOGIN)


class SenderCore:
    """The sending end of one transfer session (see the module's docstring).

    ``static``: this server's key pair; ``remote_key``: the receiver's public key pinned
    for the destination (None: ask for it, and report it as :attr:`learned_key`);
    ``password``: the destination password, proven inside the sealed session (None: the
    receiver authorizes this server by its key, or takes it as anonymous); ``token``: a
    token of the receiver's, proven the same way (with ``password``, the token's own);
    ``encrypt_data`` False: this server does not encrypt (``--no-data-encryption``)."""

    def __init__(self, session: int, hello: Hello, metadata: bytes, layout: Layout,
                 source: BlockSource, now: float, *, static: KeyPair,
                 remote_key: bytes | None, cipher: Cipher, password: str | None = None,
                 token: str | None = None, encrypt_data: bool = True,
                 rate_limit_bps: float | None = None, reliable: bool = False,
                 policy: RatePolicy = RatePolicy.FAIR) -> None:
        self.session = session
        if token is not None:
            password = f"{token}\n{password or ''}"
        flags = (HELLO_PASSWORD if password is not None else 0) | (
            HELLO_ENCRYPT if encrypt_data else 0) | (HELLO_TOKEN if token is not None else 0)
        self.hello = Hello(hello.transfer_id, hello.block_size, hello.meta_size,
                           hello.meta_blocks, hello.user, flags)
        self.metadata = metadata
        self.layout = layout
        self.source = source
        self.reliable = reliable  # TCP data mode: nothing is ever lost
        self.static = static
        self.cipher = cipher
        self.password = password
        self.encrypt_data = encrypt_data
        #: the receiver's public key: pinned, or learned in this session
        self.remote_key = remote_key
        #: the key learned from the receiver (none was pinned): the adapter pins it
        self.learned_key: bytes | None = None
        #: the key the receiver named instead of the pinned one (the transfer fails)
        self.key_mismatch: bytes | None = None
        self.channel: Channel | None = None
        self._handshake: Handshake | None = None
        self._hello_message = b""
        self._cookie = bytes(COOKIE_LEN)
        self.phase = SendPhase.KEY
        self.error: str | None = None
        #: failed in a way a new session may cure (network trouble, receiver restart)
        self.retry = False
        self.rate_limit_bps = rate_limit_bps or None
        #: the rate the receiver allows (its incoming limit's share for this transfer)
        self.receiver_limit_bps: float | None = None
        #: bytes of a full data datagram
        self.datagram_size = DATA_OVERHEAD + layout.block_size
        self.controller = RateController(policy, datagram_bytes=self.datagram_size)
        #: recent DATA datagrams' mean size: the window is in bytes, and small files
        #: make small datagrams (a block each)
        self._mean_size = float(self.datagram_size)
        # a burst of at least two datagrams: a wake-up late by up to one loses no time
        self.pacer = Pacer(self._rate(), now=now, min_burst_bytes=2 * self.datagram_size)
        self.suspended = False
        #: new data waited for room in the window since the last ACK
        self.window_limited = False
        self.acked = RangeSet()
        #: ranges of recent ACKs (with their cumulative ones): all in ``acked``
        self._acked_ranges: set[tuple[int, int]] = set()
        #: bytes of file data the receiver has (acknowledged, or had before: a resume,
        #: or a file it keeps by the overwrite rule)
        self.data_acked = 0
        #: blocks the receiver had before they were sent (jumped over, never sent), and
        #: the files (manifest indexes) all of whose blocks it had
        self.had = RangeSet()
        self.files_had = RangeSet()
        #: block -> time of its last transmission, oldest first
        self.in_flight: OrderedDict[int, float] = OrderedDict()
        self.lost: deque[int] = deque()
        self.next_new = 0
        self._echo_max_s = 0.0
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.committed = 0
        self._control: list[bytes] = []
        self._handshake_at = now + HANDSHAKE_RTO_S
        self._handshake_rto = HANDSHAKE_RTO_S
        self._last_recv_s = now
        self._last_ack_s = now
        self._pto_count = 0
        self._keepalive_at = now + KEEPALIVE_S
        # counters, as the Transfer structure shows them
        self.bytes_sent = 0
        self.bytes_recv = 0
        self.packets_sent = 0
        self.packets_recv = 0
        self.blocks_sent = 0
        self.blocks_retransmitted = 0
        #: blocks found lost by later datagrams getting through (the rate control's loss)
        self.blocks_lost = 0
        #: datagrams from the receiver dropped, by reason (garbage, failedAuthentication,
        #: replayed, truncated)
        self.dropped: Counter[str] = Counter()
        if remote_key is None:
            self._control.append(encode_key_request(session))
        else:
            self._start_handshake()

    @property
    def handshake_done(self) -> bool:
        """The receiver proved its key, and the session's messages are sealed."""
        return self.channel is not None

    def _start_handshake(self) -> None:
        assert self.remote_key is not None
        self.phase = SendPhase.HANDSHAKE
        self._handshake = Handshake(self.cipher, self.static,
                                    hello_prologue(self.session, self.cipher.code),
                                    remote_static=self.remote_key)
        self._hello_message = self._handshake.write_message_1(
            encode_hello_payload(self.hello))
        self._control.append(self._hello_datagram())

    def _hello_datagram(self) -> bytes:
        return encode_hello(self.session, self.cipher.code, self._cookie, self._hello_message)

    # -- inputs -----------------------------------------------------------------------

    @property
    def blocks_acked(self) -> int:
        """Distinct blocks the receiver has confirmed."""
        return self.acked.count

    @property
    def finished(self) -> bool:
        """Done or failed: nothing more will be sent."""
        return self.phase in (SendPhase.DONE, SendPhase.FAILED)

    def set_rate_limit(self, rate_limit_bps: float | None, now: float) -> None:
        """Change this server's limit (bits a second; None: automatic)."""
        self.rate_limit_bps = rate_limit_bps or None
        self.pacer.set_rate(self._rate(), now)

    def set_policy(self, policy: RatePolicy, now: float) -> None:
        """Change the rate policy."""
        self.controller.set_policy(policy, now)
        self.pacer.set_rate(self._rate(), now)

    @property
    def limit_bps(self) -> float | None:
        """The rate not to exceed: this server's limit or the receiver's, the lower."""
        limits = [r for r in (self.rate_limit_bps, self.receiver_limit_bps) if r]
        return min(limits) if limits else None

    def fail(self, message: str) -> None:
        """End the session with ``message`` (the transfer's errorMessage)."""
        if not self.finished:
            self.phase, self.error = SendPhase.FAILED, message

    def close_datagrams(self, reason: str, pause: bool = False) -> list[bytes | bytearray]:
        """The CLOSE that ends the session (``pause``: the receiver keeps its data); none
        before the handshake is done (the receiver forgets such a session by itself)."""
        if self.channel is None:
            return []
        return [self.channel.seal(Kind.CLOSE, encode_error(
            reason, CLOSE_PAUSE if pause else CLOSE_FINAL))]

    def lose_session(self, message: str) -> None:
        """The session cannot go on, but a new one may (network trouble): retry."""
        if not self.finished:
            self.retry = True
            self.fail(message)

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """One datagram from the receiver."""
        try:
            kind, session = parse_header(data)
            if session != self.session:
                raise Garbage("another session")
            if kind in SEALED_KINDS:
                if self.channel is None:
                    raise Garbage("sealed before the handshake")
                _, body = self.channel.open(kind, data)
            self.packets_recv += 1
            self.bytes_recv += len(data)
            self._last_recv_s = now
            if kind in SEALED_KINDS:
                self._receive(kind, body, now)
            else:
                self._receive_clear(kind, data, now)
        except Garbage as exc:
            self.dropped[exc.counter] += 1
            if self.reliable and not self.finished:
                # a TCP stream delivers what was sent: a message that does not open was
                # changed on the way, and what else was is unknown (TLS ends there too)
                self.lose_session("The TCP data connection carried a message that does "
                                  f"not open ({exc.message}): changed on the way?")

    def _receive_clear(self, kind: Kind, data: bytes | memoryview, now: float) -> None:
        """A handshake message, or one sent outside the session (unauthenticated: it may
        only start a step the sender would take anyway, or end the session with a
        message the user can check)."""
        if kind is Kind.KEY:
            key, flags = decode_key(data)
            self._on_key(key, flags)
        elif kind is Kind.REPLY and self.phase is SendPhase.HANDSHAKE:
            self._on_reply(memoryview(data)[HEADER.size:], now)
        elif kind is Kind.COOKIE and self.phase is SendPhase.HANDSHAKE:
            cookie = bytes(open_plain(data))
            if len(cookie) != COOKIE_LEN:
                raise Garbage("bad COOKIE")
            self._cookie = cookie  # the receiver is busy: prove our address, at once
            self._control.append(self._hello_datagram())
        elif kind is Kind.UNKNOWN and not self.finished:
            open_plain(data)
            self.lose_session("The receiver no longer knows this session (it restarted).")

    def _on_key(self, key: bytes, flags: int) -> None:
        if self.phase is SendPhase.KEY:
            if self.encrypt_data and not flags & KEY_ENCRYPTS:
                self.fail(_NOT_ENCRYPTING)
                return
            self.remote_key = self.learned_key = key
            self._start_handshake()
        elif self.phase is SendPhase.HANDSHAKE and key != self.remote_key:
            # the receiver could not open our HELLO: it has another key than the pinned one
            assert self.remote_key is not None
            self.key_mismatch = key
            self.fail(f"The destination identified itself with public key "
                      f"{public_key_text(key)}, not {public_key_text(self.remote_key)}, "
                      "the key pinned for it: it may be another server, or its key was "
                      "replaced.")

    def _on_reply(self, message: memoryview, now: float) -> None:
        assert self._handshake is not None
        payload = self._handshake.read_message_2(bytes(message))
        if len(payload) != 1:
            raise Garbage("bad REPLY payload")
        receiver_encrypts = bool(payload[0] & HELLO_ENCRYPT)
        send_key, receive_key = self._handshake.split()
        self._handshake = None
        self.channel = Channel(self.cipher, self.session, send_key, receive_key,
                               encrypt_data=self.encrypt_data and receiver_encrypts)
        if self.encrypt_data and not receiver_encrypts:
            self.fail(_NOT_ENCRYPTING)
            return
        self.phase = SendPhase.LOGIN
        self._login_datagram()
        self._handshake_rto = HANDSHAKE_RTO_S
        self._handshake_at = now + self._handshake_rto

    def _login_datagram(self) -> None:
        """AUTH with the password (repeated until ACCEPT), or a PING to ask for ACCEPT."""
        assert self.channel is not None
        if self.password is not None:
            self._control.append(self.channel.seal(
                Kind.AUTH, self.password.encode("utf-8", "surrogatepass")))
        else:
            self._control.append(self.channel.seal(Kind.PING))

    def _receive(self, kind: Kind, body: bytes, now: float) -> None:
        if kind is Kind.ACCEPT and self.phase is SendPhase.LOGIN:
            self.phase = SendPhase.METADATA
            self._last_ack_s = now
        elif kind is Kind.ERROR and not self.finished:
            code, message = decode_error(body)
            if code == ERROR_BUSY:
                self.lose_session(message or "The receiver is busy.")
            else:
                self.fail(message or "The receiver refused the transfer.")
        elif kind is Kind.ACK and self.phase in (SendPhase.METADATA, SendPhase.DATA):
            self._on_ack(decode_ack(body), now)

    def _on_ack(self, ack: Ack, now: float) -> None:
        self._last_ack_s = now
        self._pto_count = 0
        if ack.flags & ACK_ECHO:
            now_us = int(now * 1e6)  # the echo carries the low 32 bits of a past now_us
            echo_s = (now_us - ((now_us - ack.echo_ts_us) & TS_MASK)) / 1e6
            rtt = now - echo_s - ack.echo_delay_us / 1e6
            if 0 < rtt < 60:
                self._rtt_sample(rtt, now)
            self._echo_max_s = max(self._echo_max_s, echo_s)
        # the metadata is sent at the rate found so far, which it can raise: only file
        # data (of which there is enough) shows where the rate stops growing
        self.controller.on_delivery(ack.recv_ts_us / 1e6, ack.bytes, now,
                                    sent=self.blocks_sent, lost=self.blocks_lost,
                                    limited=self.window_limited,
                                    app_limited=self.phase is not SendPhase.DATA)
        self.window_limited = False
        self.receiver_limit_bps = ack.rate_kbps * 1000 or None
        self.pacer.set_rate(self._rate(), now)
        # an ACK repeats every range the receiver has above ``cum``: those seen before
        # are in ``acked`` already (most of them, on a lossy path), and are passed over
        in_flight, known = self.in_flight, self._acked_ranges
        if len(known) > MAX_KNOWN_RANGES:
            known.clear()
        total = self.layout.total_blocks
        ranges = set(ack.ranges)
        ranges.add((0, ack.cum))
        ranges -= known
        known |= ranges
        for start, end in ranges:
            for new_start, new_end in self.acked.add_range(start, min(end, total)):
                self.data_acked += self.layout.data_bytes(new_start, new_end)
                for block in range(new_start, new_end):
                    in_flight.pop(block, None)
        self.committed = ack.committed
        if ack.flags & ACK_READY and self.phase is SendPhase.METADATA:
            self.phase = SendPhase.DATA
            if self.next_new in self.acked:  # (even if this ACK says it is complete)
                self._jump()
        if ack.flags & ACK_COMPLETE:
            self.phase = SendPhase.DONE
            return
        if not self.reliable:
            self._detect_losses(now)

    def _rtt_sample(self, rtt: float, now: float) -> None:
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = rtt, rtt / 2
        else:
            self.rttvar_s = 0.75 * self.rttvar_s + 0.25 * abs(self.srtt_s - rtt)
            self.srtt_s = 0.875 * self.srtt_s + 0.125 * rtt
        self.controller.on_rtt(rtt, now)

    def _detect_losses(self, now: float) -> None:
        """A block is lost when the receiver has seen a datagram sent a reordering
        window after the block's last transmission, and not the block."""
        horizon = self._echo_max_s - max((self.srtt_s or 0.1) / 8, REORDER_MIN_S)
        in_flight = self.in_flight
        while in_flight:
            block, sent_s = next(iter(in_flight.items()))
            if sent_s >= horizon:
                break
            del in_flight[block]
            self.lost.append(block)
            self.blocks_lost += 1

    def _rate(self) -> float:
        limit = self.limit_bps
        if self.reliable and limit is None:
            return UNPACED_BPS  # TCP's own flow control sets the pace
        return self.controller.pacing_bps(limit)

    def _window_blocks(self) -> float:
        if self.reliable:
            return min(RELIABLE_WINDOW_BYTES / self._mean_size, RELIABLE_WINDOW_BLOCKS)
        return self.controller.window_bytes(self.limit_bps) / self._mean_size

    # -- outputs ----------------------------------------------------------------------

    def datagrams_to_send(self, now: float, limit: int = 64) -> list[bytes | bytearray]:
        """What may leave now: control datagrams, then paced data, at most ``limit``."""
        out: list[bytes | bytearray] = []
        if self._control:
            out, self._control = list(self._control), []
            self.packets_sent += len(out)
            self.bytes_sent += sum(len(d) for d in out)
        if self.finished or self.suspended or self.phase not in _SENDING:
            return out
        pacer = self.pacer
        size = self.datagram_size
        window = self._window_blocks()
        data: list[bytes | bytearray] = []
        while len(out) + len(data) < limit and pacer.allows(size, now):
            block = self._next_block(window)
            if block is None:
                break
            datagram = self._data_datagram(block, now)
            if datagram is None:
                break
            data.append(datagram)
            pacer.consume(len(datagram))
        if len(self.in_flight) >= window - WINDOW_SLACK:
            # (nearly) full: what is acknowledged at once may never let it fill exactly
            self.window_limited = True
        # equal sizes side by side go to the kernel in one system call (GSO): files of a
        # few blocks alternate full blocks, a short last one and a digest block; the order
        # within a batch, all sent at one time, does not matter to the receiver
        data.sort(key=len, reverse=True)
        return out + data

    def _next_block(self, window: float) -> int | None:
        while self.lost:
            block = self.lost[0]
            if block in self.acked:
                self.lost.popleft()
                continue
            return block
        limit = self.layout.meta_blocks if self.phase is not SendPhase.DATA else \
            self.layout.total_blocks
        if self.next_new in self.acked:
            self._jump()
        if self.next_new < limit:
            if len(self.in_flight) < window:
                return self.next_new
            self.window_limited = True
        return None

    def _jump(self) -> None:
        """Go past the blocks the receiver has already (a resume, the overwrite rule)."""
        start, end = self.next_new, self.acked.first_missing(self.next_new)
        self.next_new = end
        if self.phase is not SendPhase.DATA:
            return
        self.had.add_range(start, end)
        for index in self.layout.files_in(start, end):
            first, stop = self.layout.file_range(index)
            if self.had.count_in(first, stop) == stop - first:
                self.files_had.add(index)

    def _data_datagram(self, block: int, now: float) -> bytes | bytearray | None:
        slot = self.layout.locate(block)
        if slot.file < 0:
            payload: bytes | memoryview | None = self.metadata[slot.offset:
                                                               slot.offset + slot.length]
        else:
            try:
                payload = self.source.block(slot)
            except SourceUnavailable as exc:  # (for now: a new session may go on)
                self.lose_session(exc.message)
                return None
            except SourceError as exc:
                self.fail(str(exc))
                return None
        if payload is None:
            return None  # the source is still reading; the adapter wakes us
        if len(payload) != slot.length:
            self.fail(f"internal: block {block} has {len(payload)} bytes, not {slot.length}")
            return None
        assert self.channel is not None
        datagram = self.channel.seal_data(block, int(now * 1e6), payload)
        self._mean_size += (len(datagram) - self._mean_size) / 64
        self.in_flight[block] = now
        if self.lost and self.lost[0] == block:  # a retransmission
            self.lost.popleft()
            self.blocks_retransmitted += 1
            self.in_flight.move_to_end(block)  # (in send order: see _detect_losses)
        else:
            self.next_new += 1
        self.blocks_sent += 1
        self.packets_sent += 1
        self.bytes_sent += len(datagram)
        return datagram

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, if ever."""
        if self.finished:
            return None
        deadlines = [self._last_recv_s + SILENCE_TIMEOUT_S]
        if self.phase in _HANDSHAKING:
            deadlines.append(self._handshake_at)
        elif self.phase in (SendPhase.METADATA, SendPhase.DATA):
            deadlines.append(self._keepalive_at)
            if self.in_flight and not self.reliable:
                deadlines.append(self._last_ack_s + self._pto())
            tail = self._tail_deadline()
            if tail is not None:
                deadlines.append(tail)
        return min(deadlines)

    def _tail_wait(self) -> float:
        """How long after its last transmission an unacknowledged block at the end is
        taken for lost: a round trip, its variation, and how long the receiver may hold
        the last blocks in its socket and then their ACK."""
        return (self.srtt_s or 0.25) + max(2 * self.rttvar_s, 0.005) + ACK_DELAY_S + \
            RECEIVE_HOLD_S

    def _tail_deadline(self) -> float | None:
        """When the oldest unacknowledged block is taken for lost at the end of the data.

        Once every block has been sent, no later datagram can reveal a loss, so a block
        not acknowledged a round trip (and a margin) after it was last sent is sent
        again, twice: the link is otherwise idle, so the copy costs little and saves a
        round trip whenever one of the two is lost."""
        if self.reliable or self.lost or not self.in_flight or \
                self.phase is not SendPhase.DATA or self.next_new < self.layout.total_blocks:
            return None
        return next(iter(self.in_flight.values())) + self._tail_wait()

    def next_event_time(self, now: float) -> float | None:
        """When the adapter should next call :meth:`datagrams_to_send` or
        :meth:`handle_timer`: now if anything is waiting to be sent (or the session just
        ended), else :meth:`next_deadline`."""
        if self._control or self.finished:
            return now
        return self.next_deadline(now)

    def next_deadline(self, now: float) -> float | None:
        """The earlier of the timer and the pacer's next send, if either."""
        deadlines = [t for t in (self.get_timer(), self.next_send_time(now)) if t is not None]
        return min(deadlines) if deadlines else None

    def next_send_time(self, now: float) -> float | None:
        """When datagrams_to_send would next have data to give (pacing), if it has any."""
        if self.finished or self.suspended or self.phase not in _SENDING:
            return None
        if self._next_block(self._window_blocks()) is None:
            return None
        # Wake for half a burst, not for every datagram: waking costs far more than sending
        # one (and event-loop timers are only as fine as a millisecond).
        return self.pacer.next_time(max(self.datagram_size, self.pacer.burst_bytes / 2), now)

    def _pto(self) -> float:
        srtt = self.srtt_s if self.srtt_s is not None else 0.25
        base = srtt + max(4 * self.rttvar_s, 0.01) + 0.025
        return float(min(base * (2 ** self._pto_count), MAX_RTO_S * 4))

    def handle_timer(self, now: float) -> None:
        """Act on time: repeat the handshake, probe, resend the tail, give up on silence."""
        if self.finished:
            return
        if now - self._last_recv_s >= SILENCE_TIMEOUT_S:
            self.lose_session(f"No answer from the receiver for {SILENCE_TIMEOUT_S:.0f} s.")
            return
        if self.phase in _HANDSHAKING and now >= self._handshake_at:
            if self.phase is SendPhase.KEY:
                self._control.append(encode_key_request(self.session))
            elif self.phase is SendPhase.HANDSHAKE:
                self._control.append(self._hello_datagram())
            else:
                self._login_datagram()
            self._handshake_rto = min(self._handshake_rto * 2, MAX_RTO_S)
            self._handshake_at = now + self._handshake_rto
        if self.phase in (SendPhase.METADATA, SendPhase.DATA):
            if now >= self._keepalive_at:
                assert self.channel is not None
                self._control.append(self.channel.seal(Kind.PING))
                self._keepalive_at = now + KEEPALIVE_S
            tail = self._tail_deadline()
            if tail is not None and now >= tail:
                wait = self._tail_wait()
                while self.in_flight:
                    block, sent_s = next(iter(self.in_flight.items()))
                    if sent_s + wait > now:
                        break
                    del self.in_flight[block]
                    self.lost.extend((block, block))  # twice: the link is idle by now
            if self.in_flight and not self.reliable and \
                    now >= self._last_ack_s + self._pto():
                # nothing acknowledged for a while: resend the oldest block and back off
                block = next(iter(self.in_flight))
                del self.in_flight[block]
                self.lost.appendleft(block)
                self._pto_count += 1
                self._last_ack_s = now


#: A key probe asks at most this many times, this long apart.
KEY_PROBE_TRIES, KEY_PROBE_WAIT_S = 3, 1.0

_NOT_ENCRYPTING = ("The destination does not encrypt transfers (it runs with "
                   "--no-data-encryption), and this server sends only encrypted ones.")


class KeyProbe:
    """Ask a destination for its public key without starting a transfer, sans-I/O: a
    KEY_REQUEST of a throwaway session, repeated up to ``tries`` times ``wait_s`` apart
    until the destination answers with a KEY (kept in :attr:`key`; the receiver makes no
    session of it). :attr:`finished` once answered, or the tries are spent."""

    def __init__(self, now: float, tries: int = KEY_PROBE_TRIES,
                 wait_s: float = KEY_PROBE_WAIT_S) -> None:
        self.session = new_session_id()
        self.key: bytes | None = None
        self.finished = False
        self._request = encode_key_request(self.session)
        self._out = [self._request]
        self._tries_left = tries - 1
        self._wait_s = wait_s
        self._next_s = now + wait_s

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """One datagram from the destination."""
        try:
            kind, session = parse_header(data)
            if session != self.session or self.finished or kind is not Kind.KEY:
                return
            self.key, _ = decode_key(data)
        except Garbage:
            return
        self.finished = True

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """What to send now."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next; None once finished."""
        return None if self.finished else self._next_s

    def handle_timer(self, now: float) -> None:
        """Ask again, or give up after the last try."""
        if self.finished or now < self._next_s:
            return
        if self._tries_left <= 0:
            self.finished = True
            return
        self._tries_left -= 1
        self._out.append(self._request)
        self._next_s = now + self._wait_s
