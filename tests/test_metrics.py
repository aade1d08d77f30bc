"""The Prometheus endpoint (--metrics-port): scraped over real HTTP from two servers that
moved a transfer, refused a login, ran triggers."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jetstream_server.client import AsyncClient
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, make_home, make_settings
from tests.test_triggers import install, wait_calls
from tests.transfer_helpers import send, wait_transfer

pytestmark = pytest.mark.timeout(60)


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's metrics, by name and labels."""
    assert server.metrics is not None
    url = f"http://127.0.0.1:{server.metrics.port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


async def test_metrics_count_what_the_servers_did(tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "recv.transferComplete")
    (triggers / "recv.transferStarted").write_text("#!/bin/sh\nexit 3\n")
    (triggers / "recv.transferStarted").chmod(0o755)
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home, metrics_port=0)) as a, \
            Server(make_settings(b_home, metrics_port=0, trigger_dir=triggers)) as b:
        source = a_home / "sandbox" / "src"
        source.mkdir()
        for i in range(3):
            (source / f"f{i}").write_bytes(os.urandom(400_000))
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        refused = await client.request("auth", {"user": "alice", "password": "wrong"})
        assert refused["status"] == "error"
        await client.auth("alice", PASSWORDS["alice"])
        await client.request("noSuchCommand'); DROP", {})  # a name that is no command
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        # slow enough to be seen while it sends: 1.2 MB at 2 Mbit/s
        transfer = await send(client, destination["destinationId"], {"/src": "/in"},
                              sendRateMax=2000)
        while (await client.call("getTransfer", transferId=transfer["transferId"])
               )["currentRate"] == 0:
            await asyncio.sleep(0.1)
        during = await scrape(a)
        done = await wait_transfer(client, transfer["transferId"])
        assert done["status"] == "complete"
        await wait_calls(triggers, "recv.transferComplete")
        async with asyncio.timeout(10):  # (recv.transferComplete.json's turn, no script)
            while (after_b := await scrape(b))[("jetstream_trigger_queue_length", ())]:
                await asyncio.sleep(0.05)
        after_a = await scrape(a)
        await client.close()

    session = (("destination", f"127.0.0.1:{b.recv_port}"),
               ("transfer_id", transfer["transferId"]))
    assert 1_000_000 <= during[("jetstream_session_rate_bits_per_second", session)] <= 2_500_000
    assert 0 < during[("jetstream_session_rtt_seconds", session)] < 0.5
    assert during[("jetstream_session_loss_ratio", session)] >= 0
    assert during[("jetstream_transfers", (("direction", "send"), ("status", "sending")))] == 1
    assert ("jetstream_session_rtt_seconds", session) not in after_a  # (ended)
    assert after_a[("jetstream_transfers", (("direction", "send"), ("status", "complete")))] \
        == 1
    assert after_b[("jetstream_transfers", (("direction", "receive"),
                                            ("status", "complete")))] == 1
    assert after_a[("jetstream_sent_bytes_total", ())] >= 1_200_000
    assert after_b[("jetstream_received_bytes_total", ())] >= 1_200_000
    assert after_a[("jetstream_sent_files_total", ())] == 3
    assert after_b[("jetstream_received_files_total", ())] == 3
    assert after_a[("jetstream_failed_logins_total", (("kind", "api"),))] == 1
    assert after_a[("jetstream_api_requests_total", (("command", "auth"),
                                                     ("status", "error")))] == 1
    assert after_a[("jetstream_api_requests_total", (("command", "unknown"),
                                                     ("status", "error")))] == 1
    assert after_a[("jetstream_api_requests_total", (("command", "send.createTransfer"),
                                                     ("status", "success")))] == 1
    assert after_b[("jetstream_trigger_runs_total",
                    (("event", "recv.transferComplete"),))] == 1
    assert after_b[("jetstream_trigger_failures_total",
                    (("event", "recv.transferStarted"),))] == 1
    assert after_b[("jetstream_failed_logins_total", (("kind", "transfer"),))] == 0


async def test_the_endpoint_refuses_what_it_does_not_serve_and_goes_on(tmp_path: Path) -> None:
    async with Server(make_settings(make_home(tmp_path), metrics_port=0)) as server:
        assert server.metrics is not None
        port = server.metrics.port
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(urllib.request.urlopen,
                                    f"http://127.0.0.1:{port}/secrets", None, 10)
        assert missing.value.code == 404

        def garbage() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"\x16\x03\x01" + os.urandom(9000))  # no HTTP, over 8 KiB
                return sock.recv(100)

        assert await asyncio.to_thread(garbage) == b""  # closed, nothing said
        assert (await scrape(server))[("jetstream_receive_sessions", ())] == 0
    async with Server(make_settings(make_home(tmp_path / "off"))) as server:
        assert server.metrics is None  # off unless --metrics-port
