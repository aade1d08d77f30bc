"""The sending end of one transfer session, sans-I/O.

Feed it with :meth:`SenderCore.receive_datagram`, take what it wants sent from
:meth:`SenderCore.datagrams_to_send`, and call :meth:`SenderCore.handle_timer` at
:meth:`SenderCore.get_timer`. Time is passed in (seconds, monotonic). File data comes from
a :class:`BlockSource`, which may answer "not yet" (None) while it reads ahead.

Phases: HELLO (and CHALLENGE/AUTH when the destination has credentials) until ACCEPT; then
the metadata blocks until the receiver's ACK says it is ready; then every block, paced,
with selective retransmission of what the receiver's ACKs show missing; then wait for the
ACK that says every file is verified and in place.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from enum import Enum
from typing import Protocol

from ..errors import Garbage, SourceError
from .auth import auth_proof
from .layout import Layout, Slot
from .ranges import RangeSet
from .rate import Pacer, RateController
from .wire import (
    ACK_COMPLETE,
    ACK_DELAY_S,
    ACK_ECHO,
    ACK_READY,
    CLOSE_FINAL,
    CLOSE_PAUSE,
    DATA_HEADER,
    DATA_OVERHEAD,
    ERROR_BUSY,
    ERROR_UNKNOWN_SESSION,
    HEADER,
    TS_MASK,
    Ack,
    Challenge,
    Hello,
    Kind,
    decode_ack,
    decode_challenge,
    decode_error,
    encode,
    encode_error,
    encode_hello,
    first_byte,
    new_session_id,
    parse_header,
    seal,
)

__all__ = ["WARM_UP_TRIES", "WARM_UP_WAIT_S", "BlockSource", "SendPhase", "SenderCore",
           "WarmUpCore"]

_DATA_FIRST_BYTE = first_byte(Kind.DATA)

#: The least time a later datagram must have been sent after a block, and seen by the
#: receiver, before the block counts as lost (reordering tolerance).
REORDER_MIN_S = 0.001
HANDSHAKE_RTO_S = 0.25
MAX_RTO_S = 2.0
#: Give up when the receiver has been silent this long.
SILENCE_TIMEOUT_S = 10.0
KEEPALIVE_S = 0.5
UNPACED_BPS = 1e12
#: Bytes in flight in the TCP data mode (TCP's buffers hold the rest back), and blocks
#: (many small files: each is remembered until acknowledged).
RELIABLE_WINDOW_BYTES = 64 * 1024 * 1024
RELIABLE_WINDOW_BLOCKS = 65536


class BlockSource(Protocol):
    """Where a sender's file blocks come from (read ahead by the adapter)."""
    def block(self, slot: Slot) -> bytes | memoryview | None:
        """The payload of a file block or digest block; None when not read yet."""
        ...


class SendPhase(Enum):
    """Where a sending session is: handshake, login, metadata, data, done or failed."""
    HANDSHAKE = "handshake"
    NEED_PROOF = "need proof"
    AUTH_SENT = "auth sent"
    METADATA = "metadata"
    DATA = "data"
    DONE = "done"
    FAILED = "failed"


#: Phases in which blocks go out. The metadata follows AUTH at once, without waiting a
#: round trip for ACCEPT: the receiver checks AUTH as it arrives, so metadata arriving
#: after it is taken (and before it, dropped and sent again).
_SENDING = (SendPhase.AUTH_SENT, SendPhase.METADATA, SendPhase.DATA)


class SenderCore:
    """The sending end of one transfer session (see the module's docstring)."""
    def __init__(self, session: int, hello: Hello, metadata: bytes, layout: Layout,
                 source: BlockSource, now: float, rate_limit_bps: float | None = None,
                 reliable: bool = False) -> None:
        self.session = session
        self.hello = hello
        self.metadata = metadata
        self.layout = layout
        self.source = source
        self.reliable = reliable  # TCP data mode: nothing is ever lost
        self.phase = SendPhase.HANDSHAKE
        self.challenge: Challenge | None = None
        self.error: str | None = None
        #: failed in a way a new session may cure (network trouble, receiver restart)
        self.retry = False
        self.rate_limit_bps = rate_limit_bps or None
        self.controller = RateController()
        #: bytes of a full data datagram
        self.datagram_size = DATA_OVERHEAD + layout.block_size
        #: recent DATA datagrams' mean size: the window is in bytes, and small files
        #: make small datagrams (a block each)
        self._mean_size = float(self.datagram_size)
        # a burst of at least two datagrams: a wake-up late by up to one loses no time
        self.pacer = Pacer(self._rate(), now=now, min_burst_bytes=2 * self.datagram_size)
        self.suspended = False
        #: new data waited for room in the window since the last ACK
        self.window_limited = False
        self.acked = RangeSet()
        #: block -> time of its last transmission, oldest first
        self.in_flight: OrderedDict[int, float] = OrderedDict()
        self.lost: deque[int] = deque()
        self.next_new = 0
        self._echo_max_s = 0.0
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.committed = 0
        self._control: list[bytes] = [encode_hello(session, hello)]
        self._handshake_at = now + HANDSHAKE_RTO_S
        self._handshake_rto = HANDSHAKE_RTO_S
        self._last_recv_s = now
        self._last_ack_s = now
        self._pto_count = 0
        self._keepalive_at = now + KEEPALIVE_S
        self._proof: bytes | None = None
        # counters, as the Transfer structure shows them
        self.bytes_sent = 0
        self.bytes_recv = 0
        self.packets_sent = 0
        self.packets_recv = 0
        self.blocks_sent = 0
        self.blocks_retransmitted = 0
        #: blocks found lost by later datagrams getting through (the rate control's loss)
        self.blocks_lost = 0
        self.datagrams_dropped = 0

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
        """Change sendRateMax (bits a second; None: automatic)."""
        self.rate_limit_bps = rate_limit_bps or None
        self.pacer.set_rate(self._rate(), now)

    def provide_proof(self, verifier: bytes) -> None:
        """The scrypt hash of the destination password under the receiver's salt."""
        if self.phase is not SendPhase.NEED_PROOF or self.challenge is None:
            return
        self._proof = auth_proof(verifier, self.challenge.nonce, self.session,
                                 self.hello.transfer_id)
        self._control.append(encode(Kind.AUTH, self.session, self._proof))
        self.phase = SendPhase.AUTH_SENT

    def fail(self, message: str) -> None:
        """End the session with ``message`` (the transfer's errorMessage)."""
        if not self.finished:
            self.phase, self.error = SendPhase.FAILED, message

    def close_datagram(self, reason: str, pause: bool = False) -> bytes:
        """The CLOSE that ends the session (``pause``: the receiver keeps its data)."""
        return encode_error(self.session, Kind.CLOSE, reason,
                            CLOSE_PAUSE if pause else CLOSE_FINAL)

    def lose_session(self, message: str) -> None:
        """The session cannot go on, but a new one may (network trouble): retry."""
        if not self.finished:
            self.retry = True
            self.fail(message)

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """One datagram from the receiver."""
        try:
            kind, session = parse_header(data)
        except Garbage:
            self.datagrams_dropped += 1
            return
        if session != self.session:
            self.datagrams_dropped += 1
            return
        self.packets_recv += 1
        self.bytes_recv += len(data)
        self._last_recv_s = now
        body = memoryview(data)[HEADER.size:]
        try:
            self._receive(kind, body, now)
        except Garbage:
            self.datagrams_dropped += 1

    def _receive(self, kind: Kind, body: memoryview, now: float) -> None:
        if kind is Kind.CHALLENGE and self.phase is SendPhase.HANDSHAKE:
            self.challenge = decode_challenge(body)
            self.phase = SendPhase.NEED_PROOF
        elif kind is Kind.ACCEPT and self.phase in (SendPhase.HANDSHAKE, SendPhase.AUTH_SENT):
            self.phase = SendPhase.METADATA
            self._last_ack_s = now
        elif kind is Kind.ERROR and not self.finished:
            code, message = decode_error(body)
            if code == ERROR_UNKNOWN_SESSION:
                self.lose_session("The receiver no longer knows this session (it restarted).")
            elif code == ERROR_BUSY:
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
        self.pacer.set_rate(self._rate(), now)
        in_flight = self.in_flight
        for start, end in [(0, ack.cum), *ack.ranges]:
            end = min(end, self.layout.total_blocks)
            for new_start, new_end in self.acked.add_range(start, end):
                for block in range(new_start, new_end):
                    in_flight.pop(block, None)
        self.committed = ack.committed
        if ack.flags & ACK_READY and self.phase is SendPhase.METADATA:
            self.phase = SendPhase.DATA
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
        if self.reliable and self.rate_limit_bps is None:
            return UNPACED_BPS  # TCP's own flow control sets the pace
        return self.controller.pacing_bps(self.rate_limit_bps)

    def _window_blocks(self) -> float:
        if self.reliable:
            return min(RELIABLE_WINDOW_BYTES / self._mean_size, RELIABLE_WINDOW_BLOCKS)
        return self.controller.window_bytes() / self._mean_size + 64

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
        if self.next_new in self.acked:  # the receiver had it already (resume)
            self.next_new = self.acked.first_missing(self.next_new)
        if self.next_new < limit:
            if len(self.in_flight) < window:
                return self.next_new
            self.window_limited = True
        return None

    def _data_datagram(self, block: int, now: float) -> bytearray | None:
        slot = self.layout.locate(block)
        if slot.file < 0:
            payload: bytes | memoryview | None = self.metadata[slot.offset:
                                                               slot.offset + slot.length]
        else:
            try:
                payload = self.source.block(slot)
            except SourceError as exc:
                self.fail(str(exc))
                return None
        if payload is None:
            return None  # the source is still reading; the adapter wakes us
        if len(payload) != slot.length:
            self.fail(f"internal: block {block} has {len(payload)} bytes, not {slot.length}")
            return None
        datagram = bytearray(DATA_OVERHEAD + slot.length)
        HEADER.pack_into(datagram, 0, _DATA_FIRST_BYTE, self.session, 0)
        DATA_HEADER.pack_into(datagram, HEADER.size, block >> 32, block & 0xFFFFFFFF,
                              int(now * 1e6) & TS_MASK)
        datagram[DATA_OVERHEAD:] = payload
        seal(datagram, len(datagram))
        self._mean_size += (len(datagram) - self._mean_size) / 64
        retransmit = bool(self.lost) and self.lost[0] == block
        if retransmit:
            self.lost.popleft()
            self.blocks_retransmitted += 1
        else:
            self.next_new += 1
        self.in_flight[block] = now
        self.in_flight.move_to_end(block)
        self.blocks_sent += 1
        self.packets_sent += 1
        self.bytes_sent += len(datagram)
        return datagram

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next, if ever."""
        if self.finished:
            return None
        deadlines = [self._last_recv_s + SILENCE_TIMEOUT_S]
        if self.phase in (SendPhase.HANDSHAKE, SendPhase.AUTH_SENT):
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
        taken for lost: a round trip, its variation, and the receiver's ACK delay (the
        ACK of the last blocks may wait that long)."""
        return (self.srtt_s or 0.25) + max(2 * self.rttvar_s, 0.005) + ACK_DELAY_S

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
        if self.phase in (SendPhase.HANDSHAKE, SendPhase.AUTH_SENT) and \
                now >= self._handshake_at:
            if self.phase is SendPhase.HANDSHAKE:
                self._control.append(encode_hello(self.session, self.hello))
            elif self._proof is not None:
                self._control.append(encode(Kind.AUTH, self.session, self._proof))
            self._handshake_rto = min(self._handshake_rto * 2, MAX_RTO_S)
            self._handshake_at = now + self._handshake_rto
        if self.phase in (SendPhase.METADATA, SendPhase.DATA):
            if now >= self._keepalive_at:
                self._control.append(encode(Kind.PING, self.session))
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


#: The warm-up's HELLO is sent at most this many times, this long apart.
WARM_UP_TRIES, WARM_UP_WAIT_S = 3, 1.0


class WarmUpCore:
    """Fetch a destination's password challenge without starting a transfer, sans-I/O: a
    HELLO of a throwaway session (metadata of one byte, never sent), repeated up to
    ``tries`` times ``wait_s`` apart until the destination answers; a CHALLENGE is kept in
    :attr:`challenge` and the session closed at once (the receiver makes no record of it
    and runs no trigger). :attr:`finished` once answered, or the tries are spent."""

    def __init__(self, user: str, block_size: int, now: float, tries: int = WARM_UP_TRIES,
                 wait_s: float = WARM_UP_WAIT_S) -> None:
        self.session = new_session_id()
        self.challenge: Challenge | None = None
        self.finished = False
        self._hello = encode_hello(self.session, Hello(secrets.token_bytes(16), block_size,
                                                       1, 1, user))
        self._out = [self._hello]
        self._tries_left = tries - 1
        self._wait_s = wait_s
        self._next_s = now + wait_s

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """One datagram from the destination."""
        try:
            kind, session = parse_header(data)
        except Garbage:
            return
        if session != self.session or self.finished:
            return
        if kind is Kind.CHALLENGE:
            try:
                self.challenge = decode_challenge(memoryview(data)[HEADER.size:])
            except Garbage:
                pass
            self._out.append(encode_error(self.session, Kind.CLOSE, "verifier derived",
                                          CLOSE_FINAL))
        self.finished = True  # (an ERROR is an answer too: there is nothing to derive)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """What to send now."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next; None once finished."""
        return None if self.finished else self._next_s

    def handle_timer(self, now: float) -> None:
        """Send the HELLO again, or give up after the last try."""
        if self.finished or now < self._next_s:
            return
        if self._tries_left <= 0:
            self.finished = True
            return
        self._tries_left -= 1
        self._out.append(self._hello)
        self._next_s = now + self._wait_s
