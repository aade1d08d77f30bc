"""End to end: two `jetstream-server` processes move files to each other."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, ServerProcess, make_home
from tests.transfer_helpers import leftovers, make_tree, tree_listing


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(make_home(tmp_path / "a"))
    b = ServerProcess(make_home(tmp_path / "b"))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()



def _transfer(a: ServerProcess, b: ServerProcess, mapping: str, *extra: str,
              transport: str = "udp", timeout_s: float = 240) -> dict[str, Any]:
    destination = a.call("createDestination",
                       f"--destinationAddress=127.0.0.1:{b.recv_port}",
                       "--destinationUser=bob", f"--destinationPassword={PASSWORDS['bob']}",
                       f"--dataTransport={transport}")
    manifest = a.call("createManifest", f"--fileMappings={mapping}")
    deadline = time.monotonic() + 60
    while a.call("getManifest", f"--manifestId={manifest['manifestId']}")["status"] == \
            "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    transfer = a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                    f"--manifestId={manifest['manifestId']}", *extra)
    deadline = time.monotonic() + timeout_s
    while True:
        got = a.call("getTransfer", f"--transferId={transfer['transferId']}")
        if got["status"] not in ("pending", "sending"):
            return dict(got)
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def test_a_tree_and_a_big_file_arrive_identical_over_udp(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    make_tree(tmp_path / "a" / "sandbox" / "src", small_files=3000, big_bytes=200 * 2**20)
    done = _transfer(a, b, "/src:/received", "--destinationPath=/incoming")
    assert done["status"] == "complete", done["errorMessage"]
    arrived = tmp_path / "b" / "sandbox" / "incoming" / "received"
    assert tree_listing(arrived) == tree_listing(tmp_path / "a" / "sandbox" / "src")
    assert leftovers(tmp_path / "b" / "sandbox") == []
    assert done["blocksAcked"] == done["totalBlocks"]
    assert done["bytesSent"] >= 200 * 2**20 and done["packetsRecv"] > 0
    received = b.call("recv.getTransfers", user="bob")
    assert [(r["transferId"], r["status"], r["filesComplete"]) for r in received] == [
        (done["transferId"], "complete", done["totalFiles"])]
    sources = b.call("recv.getSources", user="bob")
    assert sources[0]["sourceIP"] == "127.0.0.1" and sources[0]["completeTransferCount"] == 1
    # JetStream's names for them are the queued ones
    queued = b.call("recv.getTransfersAsync", user="bob")
    result = b.call("getRequestResult", f"--requestId={queued['requestId']}", user="bob")
    assert result == received
    queued = b.call("recv.getSourcesAsync", user="bob")
    result = b.call("getRequestResult", f"--requestId={queued['requestId']}", user="bob")
    assert result[0]["bytesRecv"] >= 200 * 2**20
    assert b.call("recv.getTransfers", user="alice") == []  # not alice's


def test_the_tcp_data_mode_delivers_the_same(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    make_tree(tmp_path / "a" / "sandbox" / "src", small_files=200, big_bytes=20 * 2**20)
    done = _transfer(a, b, "/src:/tcp", transport="tcp")
    assert done["status"] == "complete", done["errorMessage"]
    assert done["dataTransport"] == "tcp"
    assert tree_listing(tmp_path / "b" / "sandbox" / "tcp") == \
        tree_listing(tmp_path / "a" / "sandbox" / "src")
    # and createTransfer can ask for TCP on a UDP destination
    (tmp_path / "a" / "sandbox" / "one.txt").write_text("one")
    done = _transfer(a, b, "/one.txt:/override/one.txt", "--dataTransport=tcp")
    assert done["status"] == "complete" and done["dataTransport"] == "tcp"
    assert (tmp_path / "b" / "sandbox" / "override" / "one.txt").read_text() == "one"


def test_wrong_credentials_fail_the_transfer_and_write_nothing(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    (tmp_path / "a" / "sandbox" / "f.txt").write_text("secret")
    destination = a.call("createDestination",
                       f"--destinationAddress=127.0.0.1:{b.recv_port}",
                       "--destinationUser=bob", "--destinationPassword=wrong")
    manifest = a.call("createManifest", "--fileMappings=/f.txt:/f.txt")
    time.sleep(0.3)
    transfer = a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                    f"--manifestId={manifest['manifestId']}")
    deadline = time.monotonic() + 30
    while (got := a.call("getTransfer", f"--transferId={transfer['transferId']}"))[
            "status"] not in ("error", "complete"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert got["status"] == "error"
    assert "refused user 'bob': wrong user name or password" in got["errorMessage"]
    assert os.listdir(tmp_path / "b" / "sandbox") == []
    # the receiver's operator sees who tried: a warning with the sender's address
    assert re.search(r" WARNING jetstream\.recv: refused a transfer login from "
                     r"127\.0\.0\.1:\d+ as 'bob': The receiving server refused user 'bob'",
                     b.log_path.read_text())


def test_without_udp_offload_the_same_files_arrive(tmp_path: Path) -> None:
    """--udp-offload false: one datagram per system call on both ends, same result."""
    a = ServerProcess(make_home(tmp_path / "a"), "--udp-offload", "false")
    b = ServerProcess(make_home(tmp_path / "b"), "--udp-offload", "false")
    try:
        make_tree(tmp_path / "a" / "sandbox" / "src", small_files=100, big_bytes=5 * 2**20)
        done = _transfer(a, b, "/src:/plain")
        assert done["status"] == "complete", done["errorMessage"]
        assert tree_listing(tmp_path / "b" / "sandbox" / "plain") == \
            tree_listing(tmp_path / "a" / "sandbox" / "src")
    finally:
        a.stop()
        b.stop()


@pytest.mark.timeout(120)
def test_transfers_per_destination_run_side_by_side_and_the_connection_follows_them(
        tmp_path: Path) -> None:
    """--transfers-per-destination 3 on two real servers: three transfers to one
    destination are sending at once (the fourth waits its turn), all arrive, and the
    destination's connection reads disconnected once the last has ended."""
    a = ServerProcess(make_home(tmp_path / "a"), "--transfers-per-destination", "3")
    b = ServerProcess(make_home(tmp_path / "b"))
    try:
        data = os.urandom(3 << 20)
        (tmp_path / "a" / "sandbox" / "f.bin").write_bytes(data)
        destination = a.call("createDestination",
                             f"--destinationAddress=127.0.0.1:{b.recv_port}",
                             "--destinationUser=bob",
                             f"--destinationPassword={PASSWORDS['bob']}")
        manifest = a.call("createManifest", "--fileMappings=/f.bin:/f.bin")
        time.sleep(0.5)
        for i in range(4):
            a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                   f"--manifestId={manifest['manifestId']}", f"--destinationPath=/t{i}",
                   "--sendRateMax=8000")
        most = 0
        deadline = time.monotonic() + 90
        while True:
            statuses = [t["status"] for t in a.call("send.getTransfers")]
            most = max(most, statuses.count("sending"))
            if all(s == "complete" for s in statuses) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert statuses == ["complete"] * 4 and most == 3, (statuses, most)
        for i in range(4):
            assert (tmp_path / "b" / "sandbox" / f"t{i}" / "f.bin").read_bytes() == data
        assert a.call("getDestination", f"--destinationId={destination['destinationId']}")[
            "encryptedConnectionState"] == "disconnected"
    finally:
        a.stop()
        b.stop()
