"""Pacing and rate control, sans-I/O (time is passed in, in seconds).

:class:`Pacer` is a token bucket: it lets bytes out at ``rate_bps`` with a burst of at
most ``burst_s`` worth of data (and at least one datagram), so a limited sender never
exceeds its limit over any window longer than the burst.

:class:`RateController` measures the path (the receiver's delivery rate over its own
clock, the round trip and its minimum, the random loss) and sets the pacing rate and the
window by the transfer's :class:`RatePolicy`:

- every policy but ``low`` starts as BBR does: the rate doubles each round trip until
  the estimate stops growing or a queue builds;
- ``fair`` and ``high`` then keep a CUBIC window (RFC 9438), decreased on congestion:
  a loss while the round trip shows a filling queue. Random loss, with the queue near
  empty, is not congestion and leaves the window alone;
- ``low`` paces at a rate that keeps the queueing delay under a small target (LEDBAT,
  RFC 6817): it yields to any flow that fills the queue, and takes the link when alone;
- ``fixed`` paces at its rate limit, whatever the path says.

Why each rule is there, and what it was measured to do: docs/protocol.md, "Pacing and
rate control".
"""

from __future__ import annotations

from collections import Counter, deque
from enum import StrEnum

__all__ = ["Pacer", "RateController", "RatePolicy"]

#: A delivery-rate sample spans at least this long (shorter ones are mostly noise).
MIN_SAMPLE_S = 0.03
#: The pacing gain at start (BBR's 2/ln 2).
STARTUP_GAIN = 2.885
#: The minimum round trip is the least seen over this long.
MIN_RTT_WINDOW_S = 30.0
#: A sendRateMax is paced at this fraction of itself, so that no window of time, however
#: it falls on the pacer's bursts, sees more than the limit.
LIMIT_MARGIN = 0.99
#: Start-up ends when the round trip grows this much (and by a quarter) above its minimum.
QUEUE_BUILDING_S = 0.002
#: Loss above this is not compensated for, whatever the round trip says.
MAX_LOSS_COMPENSATED = 0.25
#: The smallest window, in datagrams (twice the datagrams the receiver acknowledges at once).
MIN_WINDOW_DATAGRAMS = 32


class Pacer:
    """A token bucket that spaces datagrams out at the pacing rate."""
    def __init__(self, rate_bps: float, burst_s: float = 0.003, min_burst_bytes: int = 1500,
                 now: float = 0.0) -> None:
        self.rate_bps = rate_bps
        self.burst_s = burst_s
        self.min_burst_bytes = min_burst_bytes
        self._tokens = 0.0
        self._last = now

    @property
    def burst_bytes(self) -> float:
        """How many bytes may leave at once."""
        return max(self.rate_bps / 8 * self.burst_s, self.min_burst_bytes)

    def set_rate(self, rate_bps: float, now: float) -> None:
        """Change the rate (the tokens earned so far are kept, up to a burst)."""
        self._refill(now)
        self.rate_bps = rate_bps
        self._tokens = min(self._tokens, self.burst_bytes)

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._tokens + (now - self._last) * self.rate_bps / 8,
                               self.burst_bytes)
            self._last = now

    def allows(self, size: int, now: float) -> bool:
        """Whether ``size`` bytes may leave at ``now``."""
        self._refill(now)
        return self._tokens >= size - 0.5

    def consume(self, size: int) -> None:
        """Account for ``size`` bytes sent."""
        self._tokens -= size

    def next_time(self, size: float, now: float) -> float:
        """When ``size`` bytes will be allowed."""
        self._refill(now)
        missing = size - 0.5 - self._tokens
        if missing <= 0:
            return now
        return now + max(missing * 8 / self.rate_bps, 1e-6)


class RatePolicy(StrEnum):
    """How a transfer without a fixed rate shares the path (docs/protocol.md, "Rate
    policies"): ``fair`` takes an equal share beside TCP, ``high`` about twice that,
    ``low`` only what others leave (LEDBAT), ``fixed`` holds its rate limit whatever
    the path says."""
    FAIR = "fair"
    LOW = "low"
    HIGH = "high"
    FIXED = "fixed"


#: The window's response to a congestion event, per policy: (multiplicative decrease,
#: CUBIC's C in datagrams a second cubed). fair is CUBIC's own (RFC 9438); high behaves as
#: two CUBIC flows do together (the decrease and growth of MulTCP's N = 2).
CUBIC_PARAMETERS = {RatePolicy.FAIR: (0.7, 0.4), RatePolicy.HIGH: (0.85, 0.8)}
#: Congestion events (the window gives way, once a round trip), and what is not one:
#: - a loss while the round trip is CONGESTION_QUEUE of its minimum above it (at least
#:   QUEUE_MIN_S): the bottleneck queue is filling, as when a tail-drop queue overflows.
#:   A loss with less queue than that is random loss on the path, which no flow cures by
#:   slowing down (TCP Veno's distinction); at half the path's delay of queue, the window
#:   after the decrease (0.7 x 1.5) still fills the path;
#: - losses HEAVY_LOSS above the path's random loss (smoothed over round trips): what a
#:   flow that came after others sees, whose minimum round trip holds their queue;
#: - the queue nearly full: the round trip FULL_QUEUE of the way from its minimum to the
#:   highest at which losses were found in the last LOSS_RTT_WINDOW_S (where the queue
#:   overflows; a flow that came after others counts their standing queue in its
#:   minimum, and finds its losses with less queue than above), when that span is at
#:   least FULL_QUEUE_SPAN of the minimum; once a filling (again after the queue drained
#:   to half).
CONGESTION_QUEUE = 0.5
QUEUE_MIN_S = 0.002
FULL_QUEUE = 0.9
FULL_QUEUE_SPAN = 0.1
HEAVY_LOSS = 0.05
LOSS_RTT_WINDOW_S = 30.0
#: The response function's constant, (C (3 + beta) / (4 (1 - beta)))^(1/4): CUBIC's
#: (C 0.4, beta 0.7) for fair, for a rate FAIR_FACTOR of CUBIC's (a transfer meets each
#: filling of the queue just before a TCP flow's losses do, and so takes a little more
#: than CUBIC's rate at the same events: measured, docs/benchmarks.md); for high the one
#: that gives twice CUBIC's rate.
FAIR_FACTOR = 0.8
RESPONSE = {RatePolicy.FAIR: (FAIR_FACTOR * 1.233) ** 0.25,
            RatePolicy.HIGH: (2 * 1.233) ** 0.25}
#: A decrease goes toward the response function's window, but to no less than the first
#: and no more than the second fraction of the window.
SHARE_CUT = (0.5, 0.85)
#: TFRC's weights of the last loss-event intervals, newest first (RFC 5348, 5.4).
EVENT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2)
#: The window is at most this many bottleneck-delay products (of the minimum round trip).
WINDOW_CEILING = 4
#: The window out of start-up: this many bottleneck-delay products (room for the
#: receiver's ACK delay and the losses not yet found).
START_WINDOW_GAIN = 1.15
#: low (LEDBAT, RFC 6817): the queueing delay it aims at, a fraction of the path's round
#: trip and at least LOW_TARGET_MIN_S; the rate grows by up to LOW_STEP of the fastest
#: delivery seen per round trip while the queue is below it (at most LOW_CEILING times
#: the recent delivery: the queue would outrun the feedback) and falls by up to
#: LOW_GAIN_DOWN per round above it.
LOW_TARGET = 0.1
LOW_TARGET_MIN_S = 0.005
LOW_STEP = 0.05
LOW_GAIN_DOWN = 0.1
LOW_CEILING = 1.25
#: low's first rate (it grows from there, without a start-up).
LOW_INITIAL_BPS = 2e6
#: Out of start-up, the pacing rate is this times the window over the round trip (as
#: Linux paces TCP in congestion avoidance).
WINDOW_PACING_GAIN = 1.2


class _Cubic:
    """CUBIC's window (RFC 9438), in datagrams, driven by explicit time."""

    def __init__(self, beta: float, c: float, cwnd: float, now: float) -> None:
        self.beta, self.c = beta, c
        self.cwnd = self.w_max = self._w_last_max = cwnd
        self.k = 0.0
        self.epoch = now
        self.epoch_cwnd = cwnd  # the window when the epoch began
        self.recovery_until = now

    def grow(self, now: float, rtt: float, ceiling: float) -> None:
        """The window at ``now`` (growing toward W(t + rtt)), at most ``ceiling``."""
        t = now - self.epoch
        cubic = self.c * (t + rtt - self.k) ** 3 + self.w_max
        beta = self.beta  # the Reno-friendly estimate of the same epoch
        reno = self.epoch_cwnd + 3 * (1 - beta) / (1 + beta) * t / max(rtt, 0.001)
        target = min(max(cubic, reno), self.cwnd * 1.5, ceiling)
        self.cwnd = max(self.cwnd, target)

    def congestion(self, now: float, rtt: float, fair: float | None = None) -> bool:
        """A congestion event: decrease (once a round trip). False when ignored.
        ``fair``: the window the response function gives for the recent events (see
        RateController._fair_window): the decrease goes toward it, within SHARE_CUT."""
        if now < self.recovery_until:
            return False
        beta = self.beta
        if fair is not None:
            low, high = SHARE_CUT
            beta = min(max(fair / self.cwnd, low), high)
        if self.cwnd < self._w_last_max:  # fast convergence: give way to newer flows
            self._w_last_max = self.cwnd
            self.w_max = self.cwnd * (1 + self.beta) / 2
        else:
            self.w_max = self._w_last_max = self.cwnd
        self.cwnd = max(self.cwnd * beta, MIN_WINDOW_DATAGRAMS)
        self.epoch_cwnd = self.cwnd
        self.k = (max(self.w_max - self.cwnd, 0.0) / self.c) ** (1 / 3)  # (RFC 9438 4.2)
        self.epoch = now
        self.recovery_until = now + 1.25 * rtt
        return True


class RateController:
    """The sender's rate control: the path's delivery rate, round trip and random loss,
    and the pacing rate and window from them by ``policy`` (see the module's docstring).
    ``datagram_bytes``: a full data datagram (the window counts in them)."""
    def __init__(self, policy: RatePolicy = RatePolicy.FAIR, initial_bps: float = 20e6,
                 max_bps: float = 10e9, min_bps: float = 256e3,
                 datagram_bytes: int = 1500) -> None:
        self.policy = policy
        self.max_bps = max_bps
        self.min_bps = min_bps
        self.datagram_bytes = datagram_bytes
        self.btl_bps = initial_bps / 2  # startup doubles it
        self.min_rtt_s = 0.1
        self.startup = policy is not RatePolicy.LOW
        self._full_rounds = 0
        self._full_bw = 0.0
        self._round_end = 0.0
        self._samples: deque[tuple[float, float]] = deque()  # (time, delivery rate)
        self._deliveries: deque[tuple[float, int]] = deque()  # (receiver time, bytes)
        self._rtt_samples: deque[tuple[float, float]] = deque()
        #: the round trips at which losses were found (falling): the recent maximum is
        #: where a tail-drop queue overflows
        self._loss_rtts: deque[tuple[float, float]] = deque()
        self.all_loss = 0.0  # smoothed fraction lost, per round, queue or not
        #: a decrease may be taken (the queue has drained to half since the last one)
        self._queue_armed = True
        self.recent_rtt_s: float | None = None  # a smoothed recent round trip
        self.loss = 0.0  # smoothed fraction of datagrams lost, per round, without a queue
        # the sender's datagram counts (sent, lost) when the loss was last measured
        self._counted = (0, 0)
        self._lost_seen = 0
        self._round_clean = self._last_round_clean = True  # no queue in the round
        # start-up saw a queue this round before its estimate stopped growing; and
        # losses with it: it then paces at the estimate until the round ends
        self._queue_seen = self._holding = False
        self._cubic: _Cubic | None = None
        self._sent = 0  # datagrams sent, at the last ACK
        #: datagrams sent at the last congestion events (the loss-event intervals)
        self._event_sent: deque[int] = deque(maxlen=len(EVENT_WEIGHTS) + 1)
        self.low_bps = LOW_INITIAL_BPS
        self.path_bps = 0.0  # the fastest delivery seen (low's step)
        self._low_queue_s = 0.0  # the queueing delay at the last round's end
        self._low_recovery_until = 0.0
        #: congestion events the window or rate gave way to, by what showed them
        self.congestion_events: Counter[str] = Counter()

    def set_policy(self, policy: RatePolicy, now: float) -> None:
        """Change the policy of a running transfer (from the rate it has reached)."""
        if policy is self.policy:
            return
        rate = self.pacing_bps()
        self.policy = policy
        if policy is RatePolicy.LOW:
            self.startup = False
            self.low_bps = max(rate, self.min_bps)
        elif policy in CUBIC_PARAMETERS and not self.startup:
            self._start_window(now)

    @property
    def round_s(self) -> float:
        """The round trip the controller works with."""
        return max(self.min_rtt_s, 0.01)

    @property
    def rtt_s(self) -> float:
        """The recent round trip (its minimum until one is measured)."""
        return max(self.recent_rtt_s or self.min_rtt_s, self.min_rtt_s, 0.001)

    @property
    def queue_delay_s(self) -> float:
        """How far the recent round trip is above its minimum: the bottleneck's queue."""
        return max((self.recent_rtt_s or self.min_rtt_s) - self.min_rtt_s, 0.0)

    @property
    def congested(self) -> bool:
        """The queue is filling: a loss now is the queue overflowing, not random."""
        return self.queue_delay_s > max(CONGESTION_QUEUE * self.min_rtt_s, QUEUE_MIN_S)

    @property
    def low_target_s(self) -> float:
        """The queueing delay ``low`` aims at."""
        return max(LOW_TARGET * self.min_rtt_s, LOW_TARGET_MIN_S)

    def on_rtt(self, rtt_s: float, now: float) -> None:
        """A round-trip sample."""
        samples = self._rtt_samples  # a monotonic deque: rising RTTs
        while samples and samples[-1][1] >= rtt_s:
            samples.pop()
        samples.append((now, rtt_s))
        while now - samples[0][0] > MIN_RTT_WINDOW_S:
            samples.popleft()
        self.min_rtt_s = samples[0][1]
        recent = self.recent_rtt_s
        self.recent_rtt_s = recent = rtt_s if recent is None else 0.75 * recent + 0.25 * rtt_s
        self._full_queue(now)
        if not self.queue_free:
            self._round_clean = False
            if self.startup and self.recent_rtt_s > self.min_rtt_s * 1.25 + QUEUE_BUILDING_S:
                # a queue is building at the bottleneck: stop pushing
                if self._full_rounds:  # (and the estimate stopped growing)
                    self._end_startup(now)
                else:
                    self._queue_seen = True

    @property
    def queue_free(self) -> bool:
        """The round trip is near its minimum: no queue is building at the bottleneck."""
        recent = self.recent_rtt_s
        return recent is not None and recent <= self.min_rtt_s * 1.1 + 0.001

    def on_delivery(self, receiver_time_s: float, received_bytes: int, now: float, *,
                    sent: int, lost: int, limited: bool = False,
                    app_limited: bool = False) -> None:
        """The receiver had received ``received_bytes`` at ``receiver_time_s``; the sender
        has sent ``sent`` data datagrams so far and found ``lost`` of them lost.
        ``limited``: the sender was held back by its window, not by the path, so a
        sample below the estimate says nothing about the path and is not taken.
        ``app_limited``: the sender has had little to send (the metadata, before the
        receiver is ready for file data): as ``limited``, and start-up goes on."""
        window_limited, limited = limited and not app_limited, limited or app_limited
        self._sent = sent
        deliveries = self._deliveries
        deliveries.append((receiver_time_s, received_bytes))
        span = max(self.round_s, MIN_SAMPLE_S)
        while len(deliveries) > 2 and receiver_time_s - deliveries[1][0] >= span:
            deliveries.popleft()
        first_t, first_b = deliveries[0]
        if receiver_time_s - first_t >= span * 0.5 and received_bytes > first_b:
            rate = (received_bytes - first_b) * 8 / (receiver_time_s - first_t)
            if self.queue_free:
                rate /= 1 - min(self.loss, MAX_LOSS_COMPENSATED)
            samples = self._samples  # a monotonic deque: falling rates
            if not limited or rate >= self.btl_bps:
                while samples and samples[-1][1] <= rate:
                    samples.pop()
                samples.append((now, rate))
        window = 10 * self.round_s
        while len(self._samples) > 1 and now - self._samples[0][0] > window:
            self._samples.popleft()
        if self._samples:
            estimate = max(self._samples[0][1], self.min_bps)
            # in startup the estimate only grows: early samples are small by nature
            self.btl_bps = max(estimate, self.btl_bps) if self.startup else estimate
        if lost > self._lost_seen:
            self._lost_seen = lost
            recent = self.recent_rtt_s or self.min_rtt_s
            highs = self._loss_rtts
            while highs and highs[-1][1] <= recent:
                highs.pop()
            highs.append((now, recent))
            self._on_loss(now)
        if self._cubic is not None and window_limited:
            # the window grows only while it is what holds the sender back, and to no
            # more than a few of the path's products (a queue a few times the path's delay)
            product = self.btl_bps / 8 * self.min_rtt_s / self.datagram_bytes
            self._cubic.grow(now, self.rtt_s, max(WINDOW_CEILING * product,
                                                  MIN_WINDOW_DATAGRAMS * 2))
            if len(self._event_sent) == 1:  # no event since start-up: CUBIC's curve starts
                # flat, so the window keeps up with the estimate start-up left growing
                self._cubic.cwnd = max(self._cubic.cwnd, START_WINDOW_GAIN * product)
        if now >= self._round_end:
            self._next_round(now, sent, lost, app_limited)

    @property
    def _recovery_until(self) -> float:
        """Until when losses are of what was sent before the last decrease."""
        if self.policy is RatePolicy.LOW:
            return self._low_recovery_until
        return self._cubic.recovery_until if self._cubic is not None else 0.0

    def _full_queue(self, now: float) -> None:
        """A congestion event when the queue is nearly as full as it gets (the round trip
        near its recent maximum, well above its minimum): a tail-drop queue is about to
        overflow, and the TCP flows sharing it lose datagrams. A paced flow loses few of
        its own there (the overflow falls on others' bursts), so without this it would
        hardly ever give way. One decrease a filling of the queue, by this or by a loss: the
        next once the queue has drained to half."""
        highs = self._loss_rtts
        while highs and now - highs[0][0] > LOSS_RTT_WINDOW_S:
            highs.popleft()
        if self._cubic is None or self.startup or not highs:
            return
        floor = self.min_rtt_s
        span = highs[0][1] - floor
        recent = self.recent_rtt_s or floor
        if span < max(FULL_QUEUE_SPAN * floor, QUEUE_MIN_S):
            self._queue_armed = True
            return  # no queue worth the name: losses tell
        if recent < floor + span * 0.5:
            self._queue_armed = True
        elif self._queue_armed and recent >= floor + span * FULL_QUEUE:
            self._congestion(now, "full queue")

    def _on_loss(self, now: float) -> None:
        """Datagrams were found lost: congestion, when a queue is filling."""
        if self._queue_seen:
            self._holding = True  # the queue overflowed: the estimate lags the path
        if self.congested and self._queue_armed and not self.startup:
            self._congestion(now, "loss with a queue")  # (start-up ends by its own rules)

    def _congestion(self, now: float, reason: str) -> None:
        """A congestion event: the window (fair, high) or the rate (low, halved as LEDBAT
        does) gives way, once a round trip; start-up ends."""
        if self.policy is RatePolicy.LOW:
            if now >= self._low_recovery_until:
                self.low_bps = max(self.low_bps / 2, self.min_bps)
                self._low_recovery_until = now + 1.25 * self.rtt_s
                self.congestion_events[reason] += 1
                self._queue_armed = False
        elif self.policy in CUBIC_PARAMETERS:
            if self.startup:
                self._end_startup(now)
                self.congestion_events[reason] += 1
            elif self._cubic is not None and self._cubic.congestion(
                    now, self.rtt_s, self._fair_window()):
                self._event_sent.append(self._sent)
                self.congestion_events[reason] += 1
                self._queue_armed = False

    def _fair_window(self) -> float | None:
        """The window (datagrams) at which a CUBIC flow (two, for high) averages at the
        recent rate of congestion events (RFC 9438's response function,
        (C (3 + beta) / (4 (1 - beta)))^(1/4) (RTT / p)^(3/4), with p the events per
        datagram: TFRC's average of the last intervals, RFC 5348; the first from the end
        of start-up). Flows that see the same events (the fillings of one queue) have the
        same fair rate whatever they had before: a decrease toward it converges in a few
        events where CUBIC's own takes many. None at the first event (no interval has
        ended: the decrease is CUBIC's own)."""
        marks = self._event_sent
        if len(marks) < 2:
            return None
        intervals = [b - a for a, b in zip(marks, list(marks)[1:], strict=False)][::-1]
        open_interval = self._sent - marks[-1]
        weights = EVENT_WEIGHTS[:len(intervals)]
        mean = sum(w * i for w, i in zip(weights, intervals, strict=False)) / sum(weights)
        if open_interval > mean:  # (TFRC counts the interval since the last event too)
            mean = (mean + open_interval) / 2
        p = 1 / max(mean, 1)
        rtt = (self.min_rtt_s + self.rtt_s) / 2
        return float(RESPONSE[self.policy] * (rtt / p) ** 0.75)

    def _next_round(self, now: float, sent: int, lost: int, app_limited: bool) -> None:
        self._round_end = now + self.round_s
        round_sent, round_lost = sent - self._counted[0], lost - self._counted[1]
        if round_sent >= 16:  # (losses show a round after their sending)
            ratio = min(round_lost / round_sent, 1.0)
            if self._round_clean and self._last_round_clean:
                self.loss = 0.75 * self.loss + 0.25 * ratio
            if not self.startup and now >= self._recovery_until:
                # (not the losses of what was sent before the last decrease)
                self.all_loss = 0.875 * self.all_loss + 0.125 * ratio
                if self.all_loss - self.loss > HEAVY_LOSS:
                    self.all_loss = self.loss
                    self._congestion(now, "heavy loss")
            self._counted = (sent, lost)
        self._last_round_clean, self._round_clean = self._round_clean, self.queue_free
        self._queue_seen = self._holding = False
        if self.policy is RatePolicy.LOW:
            self._low_round()
        elif self.startup:
            if app_limited:
                return  # a round without enough to send says nothing about the path
            if self.btl_bps >= self._full_bw * 1.25:
                self._full_bw = self.btl_bps
                self._full_rounds = 0
            else:
                self._full_rounds += 1
                if self._full_rounds >= 3:
                    self._end_startup(now)

    def _low_round(self) -> None:
        """LEDBAT's step, once a round: toward the target queueing delay."""
        target, queue = self.low_target_s, self.queue_delay_s
        off_target = max(min((target - queue) / target, 1.0), -1.0)
        draining, self._low_queue_s = queue < self._low_queue_s, queue
        self.path_bps = max(self.path_bps, self.btl_bps)
        if off_target >= 0:
            # (not far above what gets through: the queue would outrun the feedback)
            ceiling = max(LOW_CEILING * self.btl_bps, LOW_INITIAL_BPS)
            self.low_bps = min(self.low_bps + LOW_STEP * self.path_bps * off_target, ceiling)
        elif not draining:  # (a queue that drains already says the rate is right)
            self.low_bps = max(self.low_bps * (1 + LOW_GAIN_DOWN * off_target),
                               self.min_bps)

    def _end_startup(self, now: float) -> None:
        self.startup = False
        self.all_loss = self.loss  # (start-up's own overshoot is over)
        if self.policy in CUBIC_PARAMETERS:
            self._start_window(now)

    def _start_window(self, now: float) -> None:
        """The CUBIC window begins at the path's bottleneck-delay product (the queue
        start-up built drains)."""
        beta, c = CUBIC_PARAMETERS[self.policy]
        cwnd = START_WINDOW_GAIN * self.btl_bps / 8 * self.min_rtt_s / self.datagram_bytes
        self._cubic = _Cubic(beta, c, max(cwnd, MIN_WINDOW_DATAGRAMS), now)
        # start-up's own losses are found for a while: the queue it built drains first
        self._cubic.recovery_until = now + 3 * max(self.rtt_s, 2 * self.min_rtt_s)
        self._event_sent.append(self._sent)  # (the first interval runs from here)

    @property
    def gain(self) -> float:
        """Start-up's pacing gain (1 while it holds, and out of start-up)."""
        return STARTUP_GAIN if self.startup and not self._holding else 1.0

    def pacing_bps(self, limit_bps: float | None = None) -> float:
        """The rate to pace at now, never above ``limit_bps`` when one is set."""
        if limit_bps:
            limit_bps *= LIMIT_MARGIN
            if self.policy is RatePolicy.FIXED:
                return limit_bps
        if self.policy is RatePolicy.LOW:
            rate = self.low_bps
        elif self.startup or self._cubic is None:
            rate = self.btl_bps * self.gain
        else:
            rate = WINDOW_PACING_GAIN * self._cubic.cwnd * self.datagram_bytes * 8 / self.rtt_s
        rate = min(rate, self.max_bps)
        if limit_bps:
            if self.btl_bps >= 0.97 * limit_bps and self.policy is not RatePolicy.LOW:
                return limit_bps  # the path carries the limit: hold it
            rate = min(rate, limit_bps)
        return max(rate, self.min_bps)

    def window_bytes(self, limit_bps: float | None = None) -> float:
        """Most bytes in flight. In start-up 2/ln 2 bottleneck-delay products; then the
        CUBIC window (fair, high), or two of the rate's delay products (low, fixed)."""
        if self.policy is RatePolicy.FIXED and limit_bps:
            return max(4 * limit_bps / 8 * self.rtt_s, 256 * 1024)
        if self.policy is RatePolicy.LOW:  # (a rate above the path's fills the queue to
            # the target, no further: the window damps the rate's swings)
            return max(self.low_bps / 8 * (self.min_rtt_s + self.low_target_s),
                       MIN_WINDOW_DATAGRAMS * self.datagram_bytes)
        if self.startup or self._cubic is None:  # (and 64 datagrams for a short path)
            return max(STARTUP_GAIN * self.btl_bps / 8 * max(self.min_rtt_s, 0.005),
                       256 * 1024) + 64 * self.datagram_bytes
        return self._cubic.cwnd * self.datagram_bytes
