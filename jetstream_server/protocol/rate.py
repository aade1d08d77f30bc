"""Pacing and automatic rate control, sans-I/O (time is passed in, in seconds).

:class:`Pacer` is a token bucket: it lets bytes out at ``rate_bps`` with a burst of at
most ``burst_s`` worth of data (and at least one datagram), so a limited sender never
exceeds its limit over any window longer than the burst.

:class:`RateController` finds the rate in the manner of BBR: the bottleneck estimate is
the largest recent delivery rate the receiver reports (over its own clock), and the
sender paces at it times a gain that cycles 1.25, 0.75, 1, 1, 1, 1, 1, 1 per round trip
(a probe ends early when the round trip shows a queue building). Start-up doubles the
rate every round until the estimate stops growing (sooner, and holding for the rest of a
round, when the round trip shows a queue while datagrams are lost). Loss is not taken for
congestion, a rising round trip is: while the round trip stays near its minimum, a
sample is divided by (1 - the random loss fraction); a round with a queue that loses more
than that by 2% cuts the estimate by 15%, so a competing flow is not starved. At most
1.5 bottleneck-delay products are in flight. Why each rule is there, and what it was
measured to do: docs/protocol.md, "Pacing and rate control".
"""

from __future__ import annotations

from collections import deque

__all__ = ["Pacer", "RateController"]

_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: A delivery-rate sample spans at least this long (shorter ones are mostly noise).
MIN_SAMPLE_S = 0.03
#: The pacing gain at start (BBR's 2/ln 2).
STARTUP_GAIN = 2.885
#: Most bytes in flight, in bottleneck-delay products, after start-up (see window_bytes).
WINDOW_GAIN = 1.5
#: The minimum round trip is the least seen over this long.
MIN_RTT_WINDOW_S = 30.0
#: A sendRateMax is paced at this fraction of itself, so that no window of time, however
#: it falls on the pacer's bursts, sees more than the limit.
LIMIT_MARGIN = 0.99
#: Loss above the random loss, in a round with a queue, that counts as congestion: the
#: estimate is then multiplied by CONGESTION_CUT.
CONGESTION_LOSS = 0.02
CONGESTION_CUT = 0.85
#: Start-up, or a probe for room, ends when the round trip grows this much (and by a
#: quarter) above its minimum.
QUEUE_BUILDING_S = 0.002
#: Loss above this is not compensated for, whatever the round trip says.
MAX_LOSS_COMPENSATED = 0.25


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


class RateController:
    """The sender's rate control: the path's delivery rate and round trip, and the pacing
    rate and window from them."""
    def __init__(self, initial_bps: float = 20e6, max_bps: float = 10e9,
                 min_bps: float = 256e3) -> None:
        self.max_bps = max_bps
        self.min_bps = min_bps
        self.btl_bps = initial_bps / 2  # startup doubles it
        self.min_rtt_s = 0.1
        self.startup = True
        self._full_rounds = 0
        self._full_bw = 0.0
        self._cycle = 0
        #: losses in the first cycle after start-up come from start-up's own overshoot
        self._cycles_since_startup = 0
        self._round_end = 0.0
        self._samples: deque[tuple[float, float]] = deque()  # (time, delivery rate)
        self._deliveries: deque[tuple[float, int]] = deque()  # (receiver time, bytes)
        self._rtt_samples: deque[tuple[float, float]] = deque()
        self.recent_rtt_s: float | None = None  # a smoothed recent round trip
        self.loss = 0.0  # smoothed fraction of datagrams lost, per round
        # the sender's datagram counts (sent, lost) when the loss was last measured
        self._counted = (0, 0)
        self._round_clean = self._last_round_clean = True  # no queue in the round
        # start-up saw a queue this round before its estimate stopped growing; and
        # losses with it: it then paces at the estimate until the round ends
        self._queue_seen = self._holding = False

    @property
    def round_s(self) -> float:
        """The round trip the controller works with."""
        return max(self.min_rtt_s, 0.01)

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
        self.recent_rtt_s = rtt_s if recent is None else 0.75 * recent + 0.25 * rtt_s
        if not self.queue_free:
            self._round_clean = False
            if self.recent_rtt_s > self.min_rtt_s * 1.25 + QUEUE_BUILDING_S:
                # a queue is building at the bottleneck: stop pushing
                if self.startup and self._full_rounds:  # (and the estimate stopped growing)
                    self._end_startup()
                elif self.startup:
                    self._queue_seen = True
                elif not self.startup and self.gain > 1:  # the probe found no room
                    self._cycle = 1  # drain now
                    self._round_end = now + self.round_s

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
        limited = limited or app_limited
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
        if self._queue_seen and lost > self._counted[1]:
            self._holding = True  # the queue overflowed: the estimate lags the path
        if now >= self._round_end:
            self._next_round(now, sent, lost, app_limited)

    def _next_round(self, now: float, sent: int, lost: int, app_limited: bool) -> None:
        self._round_end = now + self.round_s
        round_sent, round_lost = sent - self._counted[0], lost - self._counted[1]
        if round_sent >= 16:  # (losses show a round after their sending)
            ratio = min(round_lost / round_sent, 1.0)
            if self._round_clean and self._last_round_clean:
                self.loss = 0.75 * self.loss + 0.25 * ratio
            elif self._cycles_since_startup and ratio - self.loss > CONGESTION_LOSS:
                # a queue overflowed: others share the bottleneck; give way, as TCP does
                self.btl_bps = max(self.btl_bps * CONGESTION_CUT, self.min_bps)
                self._samples.clear()
            self._counted = (sent, lost)
        self._last_round_clean, self._round_clean = self._round_clean, self.queue_free
        self._queue_seen = self._holding = False
        if self.startup:
            if app_limited:
                return  # a round without enough to send says nothing about the path
            if self.btl_bps >= self._full_bw * 1.25:
                self._full_bw = self.btl_bps
                self._full_rounds = 0
            else:
                self._full_rounds += 1
                if self._full_rounds >= 3:
                    self._end_startup()
        else:
            self._cycle = (self._cycle + 1) % len(_CYCLE)
            if self._cycle == 0:
                self._cycles_since_startup += 1

    def _end_startup(self) -> None:
        self.startup = False
        self._cycle = 1  # drain first

    @property
    def gain(self) -> float:
        """The pacing gain of the current phase."""
        if self.startup:
            return 1.0 if self._holding else STARTUP_GAIN
        return _CYCLE[self._cycle]

    def pacing_bps(self, limit_bps: float | None = None) -> float:
        """The rate to pace at now, never above ``limit_bps`` when one is set."""
        rate = min(self.btl_bps * self.gain, self.max_bps)
        if limit_bps:
            limit_bps *= LIMIT_MARGIN
            if self.btl_bps >= 0.97 * limit_bps:
                return limit_bps  # the path carries the limit: hold it, no drain dips
            rate = min(rate, limit_bps)
        return max(rate, self.min_bps)

    def window_bytes(self) -> float:
        """Most bytes in flight: 1.5 bottleneck-delay products (2/ln 2 at start), at least
        256 KiB. When a queue another flow keeps full doubles the round trip, this caps
        the rate well below the estimate, leaving that flow its share."""
        gain = STARTUP_GAIN if self.startup else WINDOW_GAIN
        return max(gain * self.btl_bps / 8 * max(self.min_rtt_s, 0.005), 256 * 1024)
