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
  a loss while the round trip shows a filling queue, or the queue nearly full. Random
  loss, with the queue near empty, is not congestion and leaves the window alone. The
  transfers of one server to one destination share one window (:class:`Ensemble`);
- ``low`` paces at a rate that keeps the queueing delay under a small target (LEDBAT,
  RFC 6817): it yields to any flow that fills the queue, and takes the link when alone;
- ``fixed`` paces at its rate limit, whatever the path says.

Why each rule is there, and what it was measured to do: docs/protocol.md, "Pacing and
rate control".
"""

from __future__ import annotations

from collections import Counter, deque
from enum import StrEnum

__all__ = ["Ensemble", "Pacer", "RateController", "RatePolicy"]

#: A delivery-rate sample spans at least this long (shorter ones are mostly noise).
MIN_SAMPLE_S = 0.03
#: The pacing gain at start (BBR's 2/ln 2).
STARTUP_GAIN = 2.885
#: The minimum round trip is the least seen over this long.
MIN_RTT_WINDOW_S = 30.0
#: A sendRateMax is paced at this fraction of itself, so that no window of time, however
#: it falls on the pacer's bursts, sees more than the limit.
LIMIT_MARGIN = 0.99
#: Start-up ends when the round trip grows this much (and by STARTUP_QUEUE of itself, or
#: STARTUP_QUEUE_MAX_S on long paths, as HyStart caps it) above its minimum.
QUEUE_BUILDING_S = 0.002
STARTUP_QUEUE = 0.25
STARTUP_QUEUE_MAX_S = 0.02
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
#: - losses HEAVY_LOSS above the path's random loss (smoothed over round trips) while the
#:   round trip shows no such queue: what a flow that came after others sees, whose
#:   minimum round trip holds their queue;
#: - the queue nearly full: the round trip FULL_QUEUE of the way from its minimum to the
#:   highest at which losses were found in the last LOSS_RTT_WINDOW_S (where the queue
#:   overflows; a flow that came after others counts their standing queue in its
#:   minimum, and finds its losses with less queue than above), when that span is at
#:   least FULL_QUEUE_SPAN of the minimum; once a filling (again after the queue drained
#:   to half);
#: - the queue filling: from MARK_FROM of that way to FULL_QUEUE, each datagram sent adds
#:   (fill - MARK_FROM) / (FULL_QUEUE - MARK_FROM) to a count, and at MARK_DATAGRAMS the
#:   window gives way (once a filling, as above): RED's idea, a flow's chance to give way
#:   is its share of the datagrams, so of two flows the larger gives way first.
CONGESTION_QUEUE = 0.5
QUEUE_MIN_S = 0.002
FULL_QUEUE = 0.9
FULL_QUEUE_SPAN = 0.1
HEAVY_LOSS = 0.05
LOSS_RTT_WINDOW_S = 30.0
MARK_FROM = 0.6
MARK_DATAGRAMS = 1000
#: The response function's constant, (C (3 + beta) / (4 (1 - beta)))^(1/4) for CUBIC's
#: C 0.4 and beta 0.7; fair aims at CUBIC's rate at the same events, high at twice that
#: (0.8 of it was too little once the queue's filling counted as events: TCP took 63-74%
#: in some runs; docs/benchmarks.md).
RESPONSE = 1.233 ** 0.25
#: CUBIC's largest window over its average, (1 / (1 - beta)) / (1 / (1 - beta) - 1 / 4).
PLATEAU = 1.333 / 1.233
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
#: The congestion event a member of an ensemble takes from another.
ENSEMBLE_EVENT = "another transfer to the destination"
#: A transfer waits at most this long (from its first file data) for an earlier one of its
#: ensemble to end start-up, then starts up on its own.
ENSEMBLE_WAIT_S = 3.0
#: Out of start-up, the pacing rate is this times the window over the round trip (as
#: Linux paces TCP in congestion avoidance).
WINDOW_PACING_GAIN = 1.2


class _Cubic:
    """CUBIC's window (RFC 9438), in datagrams, driven by explicit time."""

    def __init__(self, beta: float, c: float, cwnd: float, now: float) -> None:
        self.beta, self.c = beta, c
        self.cwnd = self.w_max = cwnd
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

    def congestion(self, now: float, rtt: float, fair: float, floor: float = 0.0) -> bool:
        """A congestion event: decrease (once a round trip). False when ignored.
        ``fair``: the largest window of a flow that shares fairly at the recent rate of
        events (see RateController._fair_window): the window goes toward ``beta`` of it
        (within SHARE_CUT of itself, and to no less than ``floor`` if that is below beta
        of it) and grows back to it, not to where it was."""
        if now < self.recovery_until:
            return False
        low, high = SHARE_CUT
        low = min(max(low, floor / self.cwnd), self.beta)
        cut = min(max(self.beta * fair / self.cwnd, low), high)
        self.w_max = max(fair, self.cwnd * cut)
        self.cwnd = max(self.cwnd * cut, MIN_WINDOW_DATAGRAMS)
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
        self._mark_credit = 0.0  # the queue filling's count (see MARK_DATAGRAMS)
        self._marked_sent = 0  # datagrams sent when it was last counted
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
        #: datagrams sent at the congestion events since the first after start-up (the
        #: loss-event intervals)
        self._event_sent: deque[int] = deque(maxlen=len(EVENT_WEIGHTS) + 1)
        self._startup_end = 0.0  # when start-up ended (or the ensemble last shared)
        #: no event since start-up ended: the window keeps up with the estimate
        self._fresh_window = False
        #: the transfers of this server to the same destination (see Ensemble)
        self.ensemble: Ensemble | None = None
        self._since = 0.0  # when it began sending file data (the end of app-limited)
        self._app_limited = True
        self._clock = 0.0  # the time of the last ACK
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
        if self.ensemble is not None and policy not in CUBIC_PARAMETERS:
            self.ensemble.remove(self, now)  # (its window is no longer a CUBIC one)
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
            building = self.min_rtt_s + min(STARTUP_QUEUE * self.min_rtt_s,
                                            STARTUP_QUEUE_MAX_S) + QUEUE_BUILDING_S
            if self.startup and self.recent_rtt_s > building:
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
        if self._app_limited and not app_limited:
            self._since = now
        self._app_limited, self._clock = app_limited, now
        if self.startup and self.ensemble is not None and not app_limited:
            self.ensemble.join(self, now)
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
            product = self.product
            self._cubic.grow(now, self.rtt_s, max(WINDOW_CEILING * product,
                                                  MIN_WINDOW_DATAGRAMS * 2))
            if self._fresh_window:  # no event since start-up: CUBIC's curve starts
                # flat, so the window keeps up with the estimate start-up left growing
                # (an ensemble's members with an equal part of theirs together)
                if self.ensemble is not None:
                    product = self.ensemble.product_part()
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
        fill = (recent - floor) / span
        if fill < 0.5:
            self._queue_armed = True
        elif self._queue_armed and fill >= FULL_QUEUE:
            self._congestion(now, "full queue")
        elif self._queue_armed and fill >= MARK_FROM:
            # (RED's idea: a flow's chance to give way is its share of the datagrams)
            sent = self._sent - self._marked_sent
            self._mark_credit += sent * (fill - MARK_FROM) / (FULL_QUEUE - MARK_FROM)
            if self._mark_credit >= MARK_DATAGRAMS:
                self._congestion(now, "filling queue")
        self._marked_sent = self._sent

    def _on_loss(self, now: float) -> None:
        """Datagrams were found lost: congestion, when a queue is filling."""
        if self._queue_seen:
            self._holding = True  # the queue overflowed: the estimate lags the path
        if self.congested and not self.startup:
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
                self._mark_credit = 0.0
        elif self.policy in CUBIC_PARAMETERS:
            if self.startup:
                self._end_startup(now)
                self.congestion_events[reason] += 1
            elif self._cubic is not None and self._cubic.congestion(  # (never below what
                    now, self.rtt_s, self._fair_window(now), self.product):  # it delivers)
                self._event_sent.append(self._sent)
                self._fresh_window = False
                self.congestion_events[reason] += 1
                self._queue_armed = False
                self._mark_credit = 0.0
                if self.ensemble is not None and reason != ENSEMBLE_EVENT:
                    self.ensemble.congestion(self, now)

    @property
    def product(self) -> float:
        """The bottleneck-delay product (datagrams): what the estimate takes to fill."""
        return self.btl_bps / 8 * self.min_rtt_s / self.datagram_bytes

    def _fair_window(self, now: float) -> float:
        """The largest window (datagrams) of a CUBIC flow (two, for high) that meets
        congestion events as often as this one has lately: by RFC 9438's response
        function it averages (C (3 + beta) / (4 (1 - beta)))^(1/4) (RTT / p)^(3/4), with p
        the events per datagram (TFRC's average of the last intervals, RFC 5348, from the
        first event on), and its largest window is PLATEAU times that. At the first event
        no interval in datagrams says anything yet (what a flow sent since start-up is the
        share its start-up happened to take), so the time T since start-up sets it: the
        window CUBIC takes T to come back to, C T^3 / (1 - beta) (or the Reno-friendly
        3 T / ((1 + beta) RTT)), the same for every flow that meets the same filling of one
        queue; no more than the window itself."""
        assert self._cubic is not None
        share = 2.0 if self.policy is RatePolicy.HIGH else 1.0
        marks = self._event_sent
        if not marks:
            beta, c = CUBIC_PARAMETERS[RatePolicy.FAIR]
            t = now - self._startup_end
            return min(share * max(c * t ** 3 / (1 - beta), 3 / (1 + beta) * t / self.rtt_s),
                       self._cubic.cwnd)
        intervals = [b - a for a, b in zip(marks, list(marks)[1:], strict=False)][::-1]
        open_interval = self._sent - marks[-1]
        mean: float = open_interval
        if intervals:
            weights = EVENT_WEIGHTS[:len(intervals)]
            mean = sum(w * i for w, i in zip(weights, intervals, strict=False)) / sum(weights)
            if open_interval > mean:  # (TFRC counts the interval since the last event too)
                mean = (mean + open_interval) / 2
        p = 1 / max(mean, 1)
        rtt = (self.min_rtt_s + self.rtt_s) / 2
        return float(share * RESPONSE * PLATEAU * (rtt / p) ** 0.75)

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
                if self.all_loss - self.loss > HEAVY_LOSS and not self.congested:
                    self.all_loss = self.loss
                    self._congestion(now, "heavy loss")
            self._counted = (sent, lost)
        self._last_round_clean, self._round_clean = self._round_clean, self.queue_free
        self._queue_seen = self._holding = False
        if self.policy is RatePolicy.LOW:
            self._low_round()
        elif self.startup:
            if app_limited or self.waiting:
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
        self._new_window(START_WINDOW_GAIN * self.product, now)

    def _new_window(self, cwnd: float, now: float) -> None:
        """A CUBIC window of ``cwnd`` datagrams, its curve and event history starting now
        (out of start-up, or with a new share of the ensemble's)."""
        recovery = self._cubic.recovery_until if self._cubic is not None else now
        beta, c = CUBIC_PARAMETERS[self.policy]
        self._cubic = _Cubic(beta, c, max(cwnd, MIN_WINDOW_DATAGRAMS), now)
        # start-up's own losses are found for a while: the queue it built drains first
        self._cubic.recovery_until = max(recovery,
                                         now + 3 * max(self.rtt_s, 2 * self.min_rtt_s))
        self._startup_end = now
        self._event_sent.clear()
        self._fresh_window = True

    @property
    def gain(self) -> float:
        """Start-up's pacing gain (1 while it holds, and out of start-up)."""
        return STARTUP_GAIN if self.startup and not self._holding and not self.waiting \
            else 1.0

    @property
    def waiting(self) -> bool:
        """Start-up waits for that of an earlier transfer of its ensemble (see Ensemble),
        at most ENSEMBLE_WAIT_S from its first file data."""
        return self.ensemble is not None and self.sending_data and \
            self._clock < self._since + ENSEMBLE_WAIT_S and self.ensemble.starting_before(self)

    @property
    def sending_data(self) -> bool:
        """It has file data to send (it is past the metadata)."""
        return not self._app_limited

    @property
    def window(self) -> float:
        """The CUBIC window, in datagrams (0 before there is one)."""
        return self._cubic.cwnd if self._cubic is not None else 0.0

    @property
    def sharing(self) -> bool:
        """Out of start-up with a CUBIC window: its window can be shared."""
        return self._cubic is not None and not self.startup

    def give_way(self, now: float) -> None:
        """Another transfer of its ensemble met a congestion event: so does this one."""
        self._congestion(now, ENSEMBLE_EVENT)

    def take_share(self, cwnd: float, btl_bps: float, min_rtt_s: float, now: float) -> None:
        """Out of start-up with ``cwnd`` of the ensemble's windows (or into it, already
        out): the curve and the event history start again from it."""
        self.startup = False
        self.all_loss = self.loss
        self.min_rtt_s = min(self.min_rtt_s, min_rtt_s) if self.recent_rtt_s else min_rtt_s
        self.btl_bps = btl_bps
        self._samples.clear()  # (the estimate is of this share from now on)
        self._samples.append((now, btl_bps))
        self._new_window(cwnd, now)

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


class Ensemble:
    """The transfers of one server to one destination (``fair`` and ``high``): they cross
    the same path, so they share one window's worth of it as RFC 9040's ensemble sharing
    does, instead of each finding its share through congestion events (which takes a
    CUBIC flow many; two transfers started together keep much of the split their
    start-ups made). A transfer that starts while others run takes an equal part of their
    windows instead of a start-up of its own (one whose start-up began first is waited
    for, up to ENSEMBLE_WAIT_S); a congestion event of one is every one's (each gives way
    by its own window and history, so equal shares stay equal); one that ends leaves its
    window to the others."""

    def __init__(self) -> None:
        self.members: list[RateController] = []

    def add(self, controller: RateController) -> None:
        """A transfer to the destination begins (``fair`` and ``high`` only: the others
        have no CUBIC window to share)."""
        if controller.policy in CUBIC_PARAMETERS:
            self.members.append(controller)
            controller.ensemble = self

    def remove(self, controller: RateController, now: float) -> None:
        """``controller``'s transfer ended: the others take its window."""
        if controller not in self.members:
            return
        self.members.remove(controller)
        controller.ensemble = None
        sharing = [m for m in self.members if m.sharing]
        if controller.sharing and sharing:
            extra, btl = controller.window / len(sharing), controller.btl_bps / len(sharing)
            for member in sharing:
                member.take_share(member.window + extra, member.btl_bps + btl,
                                  member.min_rtt_s, now)

    def congestion(self, controller: RateController, now: float) -> None:
        """``controller`` met a congestion event: the path is the others' too, and so is
        the event (each gives way by its own window and history, once a round trip)."""
        for member in self.members:
            if member is not controller and member.sharing:
                member.give_way(now)

    def product_part(self) -> float:
        """An equal part of the members' bottleneck-delay products (out of start-up)."""
        sharing = [m for m in self.members if m.sharing]
        return sum(m.product for m in sharing) / max(len(sharing), 1)

    def starting_before(self, controller: RateController) -> bool:
        """Whether a member that came before ``controller`` is in its start-up, sending
        file data."""
        for member in self.members:
            if member is controller:
                return False
            if member.startup and member.sending_data:
                return True
        return False

    def join(self, controller: RateController, now: float) -> None:
        """``controller`` is in its start-up, sending file data: if others run out of
        theirs, it takes an equal part of their windows (and they give it up)."""
        sharing = [m for m in self.members if m.sharing and m is not controller]
        if not sharing:
            return
        part = len(sharing) / (len(sharing) + 1)
        count = len(sharing) + 1
        total, btl = sum(m.window for m in sharing), sum(m.btl_bps for m in sharing)
        for member in sharing:
            member.take_share(member.window * part, member.btl_bps * part,
                              member.min_rtt_s, now)
        controller.take_share(total / count, btl / count,
                              min(m.min_rtt_s for m in sharing), now)
