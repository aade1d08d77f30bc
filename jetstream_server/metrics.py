"""Prometheus metrics (``--metrics-port``): the text format, served over plain HTTP.

The numbers are read when the endpoint is scraped, on the event loop (a small asyncio HTTP
server, not prometheus-client's threaded one: nothing reads the server's state from
another thread): the transfers by status, the counters of :class:`~jetstream_server.core.
stats.Stats`, each sending session's rate, round-trip time and loss, the receiving
endpoint's drops and sessions, the triggers'. Every metric is described in
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .core.lifecycle import ReceiveStatus, TransferStatus
from .core.service import Service
from .dataplane.receiving import DataEndpoint
from .dataplane.sending import SendingPlane
from .triggers import TriggerRunner

__all__ = ["MetricsServer"]

log = logging.getLogger("jetstream.metrics")

#: The most bytes of an HTTP request head read, and how long a client may take to send it.
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


class _Collector(Collector):
    def __init__(self, service: Service, plane: SendingPlane | None,
                 endpoint: DataEndpoint, triggers: TriggerRunner) -> None:
        self.service, self.plane, self.endpoint, self.triggers = \
            service, plane, endpoint, triggers

    def collect(self) -> Iterator[Metric]:
        service, stats = self.service, self.service.stats
        transfers = GaugeMetricFamily("jetstream_transfers", "Transfers known, by direction "
                                      "and status.", labels=["direction", "status"])
        sending = Counter(t.status.value for t in service.transfers.values())
        for status in TransferStatus:
            transfers.add_metric(["send", status.value], sending[status.value])
        receiving = Counter(r.status.value for r in service.receives.values())
        for recv_status in ReceiveStatus:
            transfers.add_metric(["receive", recv_status.value], receiving[recv_status.value])
        yield transfers
        yield _counter("jetstream_sent_bytes", "Data-plane bytes sent (datagrams or frames, "
                       "headers and retransmissions included).", stats.bytes_sent)
        yield _counter("jetstream_received_bytes", "Data-plane bytes received by incoming "
                       "transfers.", stats.bytes_received)
        yield _counter("jetstream_sent_files", "Files delivered by transfers that completed.",
                       stats.files_sent)
        yield _counter("jetstream_received_files", "Files received, verified and put in "
                       "place.", stats.files_received)
        yield _counter("jetstream_retransmitted_blocks", "Blocks sent again (found lost).",
                       stats.blocks_retransmitted)
        dropped = CounterMetricFamily(
            "jetstream_dropped_datagrams", "Datagrams dropped: by the receiving endpoint, "
            "and by sending sessions (from receivers), by reason.", labels=["side", "reason"])
        for reason, count in sorted(self.endpoint.routes.dropped.items()):
            dropped.add_metric(["receiver", reason], count)
        for reason, count in sorted(stats.dropped_by_senders.items()):
            dropped.add_metric(["sender", reason], count)
        yield dropped
        yield from self._sessions()
        requests = CounterMetricFamily("jetstream_api_requests", "API requests, by command "
                                       "and status.", labels=["command", "status"])
        for (command, outcome), count in sorted(stats.api_requests.items()):
            requests.add_metric([command, outcome], count)
        yield requests
        logins = CounterMetricFamily("jetstream_failed_logins", "Refused logins: api (the "
                                     "auth command), transfer (a sending server's).",
                                     labels=["kind"])
        for kind in ("api", "transfer"):
            logins.add_metric([kind], stats.failed_logins[kind])
        yield logins
        yield from _by_event("jetstream_trigger_runs", "Trigger scripts run, by event.",
                             self.triggers.runs)
        yield from _by_event("jetstream_trigger_failures", "Trigger scripts that could not "
                             "start or exited non-zero, by event.", self.triggers.failures)
        yield _gauge("jetstream_trigger_queue_length", "Trigger events waiting for their "
                     "turn.", self.triggers.queued)
        yield _counter("jetstream_trigger_dropped", "Trigger events dropped: the queue was "
                       "full.", self.triggers.dropped)

    def _sessions(self) -> Iterator[Metric]:
        labels = ["transfer_id", "destination"]
        rate = GaugeMetricFamily("jetstream_session_rate_bits_per_second", "File data a "
                                 "second reaching the receiver, per sending session (over "
                                 "the last 5 s).", labels=labels)
        rtt = GaugeMetricFamily("jetstream_session_rtt_seconds", "Smoothed round-trip time, "
                                "per sending session.", labels=labels)
        loss = GaugeMetricFamily("jetstream_session_loss_ratio", "Blocks found lost over "
                                 "blocks sent, per sending session.", labels=labels)
        total = 0.0
        for session in (self.plane.sessions.values() if self.plane is not None else ()):
            core = session.core
            if core is None:
                continue
            names = [session.transfer.id,
                     f"{session.destination.ip}:{session.destination.port}"]
            bps = session.transfer.current_rate_kbps * 1000.0
            total += bps
            rate.add_metric(names, bps)
            if core.srtt_s is not None:
                rtt.add_metric(names, core.srtt_s)
            loss.add_metric(names, core.blocks_lost / core.blocks_sent if core.blocks_sent
                            else 0.0)
        yield rate
        yield rtt
        yield loss
        yield _gauge("jetstream_send_rate_bits_per_second", "File data a second reaching "
                     "receivers, all sending sessions together.", total)
        yield _gauge("jetstream_receive_sessions", "Incoming sessions open.",
                     len(self.endpoint.sessions))


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_event(name: str, documentation: str, counts: Counter[str]) -> Iterable[Metric]:
    family = CounterMetricFamily(name, documentation, labels=["event"])
    for event, count in sorted(counts.items()):
        family.add_metric([event], count)
    yield family


class MetricsServer:
    """``GET /metrics`` (and ``/``) on its own port; anything else is 404 or 405."""

    def __init__(self, service: Service, plane: SendingPlane | None, endpoint: DataEndpoint,
                 triggers: TriggerRunner) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(service, plane, endpoint, triggers))
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError if the port cannot be had)."""
        self._server = await asyncio.start_server(self._serve, host, port, backlog=64,
                                                  limit=MAX_REQUEST_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, body, kind = "200 OK", generate_latest(self.registry), \
                    CONTENT_TYPE_LATEST
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a client that does not speak HTTP, or not in time: closed
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
