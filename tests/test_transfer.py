"""Transfers between two real servers in this process: sandbox rules, hostile input,
rate limits, suspend/resume/cancel, and source files that change."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.commands import send as commands_send
from jetstream_server.core.sandbox import written_path
from jetstream_server.dataplane.sending import LOOPBACK_BLOCK_SIZE
from jetstream_server.errors import CommandFailed, PathRefused
from jetstream_server.protocol.noise import public_key_text
from jetstream_server.protocol.sender import SendPhase
from jetstream_server.protocol.wire import TCP_PREFACE, Kind, encode_hello, encode_plain
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, make_home, make_settings
from tests.raw_sender import raw_send
from tests.transfer_helpers import leftovers, send, wait_transfer


@pytest.mark.parametrize(("sandbox", "destination_path", "target", "expected"), [
    # JetStream's "Where do transfers go" table (no sandbox is a sandbox of /)
    ("/", None, "/mnt/data/file.txt", "/mnt/data/file.txt"),
    ("/", None, "file.txt", "/file.txt"),
    ("/storage", None, "/mnt/data/file.txt", "/storage/mnt/data/file.txt"),
    ("/storage", "/repository1", "/mnt/data/file.txt",
     "/storage/repository1/mnt/data/file.txt"),
    ("/storage/%u", None, "/mnt/data/file.txt", "/storage/alice/mnt/data/file.txt"),
    ("/storage/%u", "/repository1", "/mnt/data/file.txt",
     "/storage/alice/repository1/mnt/data/file.txt"),
    # and the other placeholders
    ("/storage/%d/%u", "in", "x", "/storage/corp/alice/in/x"),
    ("/s/%f/100%%", None, "x", "/s/alice@corp/100%/x"),
])
def test_written_paths_follow_jetstreams_table(sandbox: str, destination_path: str | None,
                                              target: str, expected: str) -> None:
    user = "alice@corp" if "%d" in sandbox or "%f" in sandbox else "alice"
    assert written_path(sandbox, user, destination_path, target) == expected


@pytest.mark.parametrize("target", ["/a/../../etc/passwd", "../x", "a\x00b", "/", ""])
def test_written_paths_refuse_escapes(target: str) -> None:
    with pytest.raises(PathRefused):
        written_path("/storage", "alice", None, target)



@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Server, Server, AsyncClient, Path, Path]]:
    """Servers A and B, a client of A logged in as alice, and both sandboxes."""
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home)) as a, Server(make_settings(b_home)) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        try:
            yield a, b, client, a_home / "sandbox", b_home / "sandbox"
        finally:
            await client.close()


async def _destination(client: AsyncClient, b: Server, **params: Any) -> str:
    destination = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"], **params)
    return str(destination["destinationId"])


@pytest.mark.parametrize(("destination_path", "target"), [
    (None, "/../escape.txt"),
    ("/../..", "x.txt"),
    (None, "/ok/\x00/x.txt"),
    ("/a/../../b", "x.txt"),
])
async def test_hostile_paths_from_a_forged_sender_are_refused(
        pair: tuple[Server, Server, AsyncClient, Path, Path], tmp_path: Path,
        destination_path: str | None, target: str) -> None:
    _, b, _, _, b_box = pair
    core = await raw_send(b.recv_port, [(target, b"evil")],
                          destination_path=destination_path)
    assert core.phase is SendPhase.FAILED
    assert core.error is not None and "refused" in core.error
    assert sorted(p.name for p in tmp_path.rglob("escape.txt")) == []
    assert os.listdir(b_box) == []


async def test_symlinks_in_the_sandbox_are_never_followed(
        pair: tuple[Server, Server, AsyncClient, Path, Path], tmp_path: Path) -> None:
    _, b, client, a_box, b_box = pair
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, b_box / "link")
    (a_box / "f.txt").write_text("data")
    transfer = await send(client, await _destination(client, b), {"/f.txt": "/link/f.txt"})
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "error"
    assert "/link/f.txt" in done["errorMessage"] and "symlink" in done["errorMessage"]
    assert os.listdir(outside) == []


async def test_a_symlink_swapped_in_while_the_transfer_runs_is_not_followed(
        pair: tuple[Server, Server, AsyncClient, Path, Path], tmp_path: Path) -> None:
    _, b, client, a_box, b_box = pair
    outside = tmp_path / "outside"
    outside.mkdir()
    (a_box / "first.bin").write_bytes(os.urandom(400_000))
    (a_box / "second.bin").write_bytes(b"second")
    (b_box / "in" / "later").mkdir(parents=True)
    manifest = await client.call("createManifest", fileMappings={
        "/first.bin": "/in/first.bin", "/second.bin": "/in/later/second.bin"})
    await client.wait_for_manifest(manifest["manifestId"])
    transfer = await client.call("createTransfer", destinationId=await _destination(client, b),
                                 manifestId=manifest["manifestId"], sendRateMax=2000)
    await wait_transfer(client, transfer["transferId"], until=("sending",))
    async with asyncio.timeout(20):  # the first file is flowing: swap the folder
        while (await client.call("getTransfer", transferId=transfer["transferId"]))[
                "bytesSent"] < 50_000:
            await asyncio.sleep(0.05)
    os.rename(b_box / "in" / "later", b_box / "in" / "was-later")
    os.symlink(outside, b_box / "in" / "later")
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "error"
    assert "later/second.bin" in done["errorMessage"]
    assert os.listdir(outside) == []


async def test_garbage_at_the_data_port_is_dropped_and_counted(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, b_box = pair
    (a_box / "big.bin").write_bytes(os.urandom(30_000_000))
    transfer = await send(client, await _destination(client, b), {"/big.bin": "/big.bin"},
                          sendRateMax=100_000)  # (still running while the junk arrives)
    async with asyncio.timeout(10):
        while not (b.endpoint and b.endpoint.sessions):
            await asyncio.sleep(0.01)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", b.recv_port)
    for datagram in (b"", b"x" * 10, b"\x07" + os.urandom(1399),  # no version 6
                     b"JS\x01\x06" + os.urandom(40),  # version 1's magic
                     encode_hello(999, 7, bytes(16), b"short")):  # an unknown cipher
        junk.sendto(datagram, target)
    junk.sendto(encode_plain(Kind.KEY, 999, b"\0" * 33), target)  # no sender sends one
    junk.sendto(b"\x66\0\0\x30\x39" + os.urandom(100), target)  # DATA, unknown session
    junk.sendto(encode_hello(998, 1, bytes(16), os.urandom(200)), target)  # fails its tag
    # a datagram of a live session from the wrong address (forged)
    session_id = next(iter(b.endpoint.sessions))
    junk.sendto(b"\x68" + session_id.to_bytes(4, "big") + os.urandom(40), target)
    junk.close()
    for payload in (TCP_PREFACE + b"\xff\xff\xff\xff",
                    TCP_PREFACE + b"\0\0\0\x05xbcde"):  # (a version 7 message)
        _, writer = await asyncio.open_connection("127.0.0.1", b.recv_port)
        writer.write(payload)
        await writer.drain()
        writer.close()
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "complete", done["errorMessage"]
    assert (b_box / "big.bin").read_bytes() == (a_box / "big.bin").read_bytes()
    viewer = await AsyncClient.connect("127.0.0.1", b.api_port)
    info = await viewer.call("getServerInfo")
    await viewer.close()
    dropped = info["receiver"]["datagramsDropped"]
    assert dropped["garbage"] >= 6 and dropped["unknownSession"] >= 1, dropped
    assert dropped["failedAuthentication"] >= 1 and dropped["truncated"] >= 1


async def _rates(client: AsyncClient, transfer_id: str, seconds: float) -> list[float]:
    """bytesSent per second over successive one-second windows."""
    samples: list[tuple[float, int]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = await client.call("getTransfer", transferId=transfer_id)
        samples.append((time.monotonic(), got["bytesSent"]))
        await asyncio.sleep(0.05)
    rates = []
    for i, (t0, b0) in enumerate(samples):
        for t1, b1 in samples[i:]:
            if t1 - t0 >= 1.0:
                rates.append((b1 - b0) / (t1 - t0))
                break
    return rates


async def test_send_rate_max_is_never_exceeded_and_changes_apply_at_once(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, _ = pair
    (a_box / "f.bin").write_bytes(os.urandom(8_000_000))
    transfer = await send(client, await _destination(client, b), {"/f.bin": "/f.bin"},
                          sendRateMax=16_000)  # 16 Mbit/s = 2 MB/s
    await wait_transfer(client, transfer["transferId"], until=("sending",))
    await asyncio.sleep(0.5)
    rates = await _rates(client, transfer["transferId"], 2.0)
    assert rates and max(rates) <= 2_000_000 * 1.05
    assert min(rates) >= 2_000_000 * 0.8
    await client.call("setSendRate", transferId=transfer["transferId"], sendRateMax=8_000)
    await asyncio.sleep(1.0)
    rates = await _rates(client, transfer["transferId"], 1.5)
    assert rates and max(rates) <= 1_000_000 * 1.05
    await client.call("cancelTransfer", transferId=transfer["transferId"])


async def test_suspend_resume_and_cancel_act_on_the_running_flow(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, b_box = pair
    data = os.urandom(2_000_000)
    (a_box / "f.bin").write_bytes(data)
    destination = await _destination(client, b)
    transfer = await send(client, destination, {"/f.bin": "/f.bin"}, sendRateMax=4_000)
    tid = transfer["transferId"]
    await wait_transfer(client, tid, until=("sending",))
    await asyncio.sleep(1.5)  # about 500 blocks in
    connected = await client.call("getDestination", destinationId=destination)
    assert connected["encryptedConnectionState"] == "connected"  # its data session is up
    await client.call("suspendTransfer", transferId=tid)
    await asyncio.sleep(0.3)
    idle = await client.call("getDestination", destinationId=destination)
    assert idle["encryptedConnectionState"] == "disconnected"
    before = (await client.call("getTransfer", transferId=tid))["bytesSent"]
    await asyncio.sleep(0.7)
    assert (await client.call("getTransfer", transferId=tid))["bytesSent"] == before
    await client.call("setSendRate", transferId=tid, sendRateMax=0)
    await client.call("resumeTransfer", transferId=tid)
    done = await wait_transfer(client, tid)
    assert done["status"] == "complete"
    assert (b_box / "f.bin").read_bytes() == data
    # the receiver kept what it had when the transfer was suspended (~750 KB in)
    resent_bytes = (done["blocksSent"] - done["totalBlocks"]) * done["blockSize"]
    assert resent_bytes <= 280_000, done
    second = await send(client, destination, {"/f.bin": "/g.bin"}, sendRateMax=2_000)
    await wait_transfer(client, second["transferId"], until=("sending",))
    await asyncio.sleep(0.5)
    await client.call("cancelTransfer", transferId=second["transferId"])
    viewer = await AsyncClient.connect("127.0.0.1", b.api_port)
    await viewer.auth("bob", PASSWORDS["bob"])
    async with asyncio.timeout(10):
        while True:
            records = {r["transferId"]: r for r in await viewer.call("recv.getTransfers")}
            if records.get(second["transferId"], {}).get("status") == "error":
                break
            await asyncio.sleep(0.05)
    await viewer.close()
    assert "cancelled" in records[second["transferId"]]["errorMessage"]
    await asyncio.sleep(0.2)
    assert not (b_box / "g.bin").exists() and leftovers(b_box) == []


async def test_a_source_changed_after_the_manifest_fails_the_transfer(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, b_box = pair
    (a_box / "f.txt").write_text("original")
    manifest = await client.call("createManifest", fileMappings={"/f.txt": "/f.txt"})
    await client.wait_for_manifest(manifest["manifestId"])
    (a_box / "f.txt").write_text("changed, and longer")
    transfer = await client.call("createTransfer", destinationId=await _destination(client, b),
                                 manifestId=manifest["manifestId"])
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "error"
    assert "/f.txt changed since the manifest was built" in done["errorMessage"]
    await asyncio.sleep(0.2)
    assert not (b_box / "f.txt").exists() and leftovers(b_box) == []


async def test_a_source_truncated_while_sending_fails_the_transfer(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, b_box = pair
    # larger than the sender's read-ahead (8 chunks of 4 MiB), so it is still reading
    (a_box / "f.bin").write_bytes(os.urandom(60_000_000))
    transfer = await send(client, await _destination(client, b), {"/f.bin": "/f.bin"},
                          sendRateMax=40_000)
    await wait_transfer(client, transfer["transferId"], until=("sending",))
    await asyncio.sleep(0.3)
    os.truncate(a_box / "f.bin", 100_000)
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "error"
    assert "/f.bin" in done["errorMessage"] and ("shorter" in done["errorMessage"] or
                                                 "changed" in done["errorMessage"])
    await asyncio.sleep(0.2)
    assert not (b_box / "f.bin").exists() and leftovers(b_box) == []


async def test_anonymous_transfers_need_the_operators_consent(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    (a_home / "sandbox" / "f.txt").write_text("hi")
    (b_home / "sandbox" / "anonymous").mkdir()
    async with Server(make_settings(a_home)) as a, \
            Server(make_settings(b_home)) as closed, \
            Server(make_settings(b_home, recv_allow_anonymous=True,
                                 sandbox_dir=str(b_home / "sandbox" / "%u"))) as open_:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        for server, expected in ((closed, "error"), (open_, "complete")):
            destination = await client.call(
                "createDestination", destinationAddress=f"127.0.0.1:{server.recv_port}")
            transfer = await send(client, destination["destinationId"], {"/f.txt": "/f.txt"})
            done = await wait_transfer(client, transfer["transferId"])
            assert done["status"] == expected, done
            if expected == "error":
                assert "destinationUser" in done["errorMessage"]
        await client.close()
    assert (b_home / "sandbox" / "anonymous" / "f.txt").read_text() == "hi"
    assert not (b_home / "sandbox" / "f.txt").exists()


async def test_a_missing_per_user_sandbox_fails_with_its_name(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    (a_home / "sandbox" / "f.txt").write_text("hi")
    async with Server(make_settings(a_home)) as a, \
            Server(make_settings(b_home, sandbox_dir=str(b_home / "sandbox" / "%u"))) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        transfer = await send(client, await _destination(client, b), {"/f.txt": "/f.txt"})
        done = await wait_transfer(client, transfer["transferId"])
        await client.close()
    assert done["status"] == "error"
    assert f"{b_home}/sandbox/bob does not exist" in done["errorMessage"]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_file_larger_than_4_gib_arrives_intact(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    _, b, client, a_box, b_box = pair
    size = 4 * 2**30 + 12345
    with open(a_box / "huge.bin", "wb") as stream:  # data near both ends, sparse between
        stream.write(os.urandom(1 << 20))
        stream.seek(size - (1 << 20))
        stream.write(os.urandom(1 << 20))
    transfer = await send(client, await _destination(client, b), {"/huge.bin": "/huge.bin"})
    done = await wait_transfer(client, transfer["transferId"], timeout_s=850)
    assert done["status"] == "complete", done["errorMessage"]
    assert os.path.getsize(b_box / "huge.bin") == size
    with open(a_box / "huge.bin", "rb") as x, open(b_box / "huge.bin", "rb") as y:
        for offset in (0, 2**32 - 4096, size - (1 << 20)):
            x.seek(offset)
            y.seek(offset)
            assert x.read(1 << 20) == y.read(1 << 20)


async def test_a_data_port_apart_from_the_api_port_serves_udp_and_tcp(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    (a_home / "sandbox" / "f.txt").write_text("apart")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        data_port = probe.getsockname()[1]
    async with Server(make_settings(a_home)) as a, \
            Server(make_settings(b_home, recv_port=data_port)) as b:
        assert b.recv_port == data_port != b.api_port
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        for transport in ("udp", "tcp"):
            destination = await _destination(client, b, dataTransport=transport)
            transfer = await send(client, destination, {"/f.txt": f"/{transport}.txt"})
            done = await wait_transfer(client, transfer["transferId"])
            assert done["status"] == "complete", done["errorMessage"]
        await client.close()
    assert (b_home / "sandbox" / "udp.txt").read_text() == "apart"
    assert (b_home / "sandbox" / "tcp.txt").read_text() == "apart"


async def test_outcomes_are_logged_once_and_abandoned_partial_files_are_collected(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="jetstream.transfers")
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    b_box = b_home / "sandbox"
    (a_home / "sandbox" / "small.txt").write_text("small")
    (a_home / "sandbox" / "big.bin").write_bytes(os.urandom(4_000_000))
    async with Server(make_settings(b_home)) as b:
        async with Server(make_settings(a_home)) as a:
            client = await AsyncClient.connect("127.0.0.1", a.api_port)
            await client.auth("alice", PASSWORDS["alice"])
            destination = await _destination(client, b)
            small = await send(client, destination, {"/small.txt": "/small.txt"})
            assert (await wait_transfer(client, small["transferId"]))["status"] == "complete"
            big = await send(client, destination, {"/big.bin": "/big.bin"},
                             sendRateMax=4_000, checkpointFrequencySeconds=1)
            await wait_transfer(client, big["transferId"], until=("sending",))
            await asyncio.sleep(1.5)
            await client.close()
        # A stopped for good while sending: B keeps the partial file for a resume...
        assert b.endpoint is not None
        async with asyncio.timeout(10):
            while b.endpoint.sessions:
                await asyncio.sleep(0.05)
        assert len(leftovers(b_box)) == 1
        # ...until garbage collection decides the sender is not coming back
        root = await AsyncClient.connect("127.0.0.1", b.api_port)
        await root.auth("root", PASSWORDS["root"])
        await root.call("superuser")
        await root.call("updateGarbageCollectSettings", timeLimitSeconds=0)
        removed = await root.call("garbageCollect")
        records = {r["transferId"]: r for r in await root.call("recv.getTransfers")}
        await root.close()
    assert removed["receives"] == 1  # the complete one; the abandoned one goes next time
    assert records[big["transferId"]]["status"] == "error"
    assert "Abandoned" in records[big["transferId"]]["errorMessage"]
    assert leftovers(b_box) == [] and not (b_box / "big.bin").exists()
    lines = [r.getMessage() for r in caplog.records]
    assert sum(f"transfer {small['transferId']} complete:" in line for line in lines) == 1


async def test_a_new_destination_learns_and_pins_the_receivers_key_ahead(
        pair: tuple[Server, Server, AsyncClient, Path, Path]) -> None:
    """createDestination without destinationPublicKey asks the destination for its key in
    the background and pins it (ssh's known_hosts, on first contact); the exchange leaves
    nothing behind on the receiving side, and the transfers then use that key."""
    _, b, client, a_box, b_box = pair
    assert b.service is not None and b.endpoint is not None
    destination = await _destination(client, b)
    async with asyncio.timeout(10):
        while (await client.call("getDestination", destinationId=destination))[
                "destinationPublicKey"] is None:
            await asyncio.sleep(0.02)
    got = await client.call("getDestination", destinationId=destination)
    assert got["destinationPublicKey"] == public_key_text(b.service.identity.public)
    assert got["encryptionEnabled"] is True
    assert b.service.receives == {} and not b.endpoint.sessions  # no record, no trigger
    (a_box / "f.txt").write_text("data")
    transfer = await send(client, destination, {"/f.txt": "/f.txt"})
    assert (await wait_transfer(client, transfer["transferId"]))["status"] == "complete"
    assert (b_box / "f.txt").read_text() == "data"


async def test_a_transfer_of_too_many_blocks_is_refused_at_creation(
        pair: tuple[Server, Server, AsyncClient, Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Block numbers are 40-bit on the wire: createTransfer refuses a manifest that would
    need 2^40 blocks or more, naming the count (the bound lowered here to 4 blocks; a
    real one is 1.6 PB of files)."""
    monkeypatch.setattr(commands_send, "MAX_BLOCKS", 4)
    _, b, client, a_box, _ = pair
    # 2 data blocks and a digest block: 3, the most; 3 and a digest: 4, one too many
    (a_box / "small.bin").write_bytes(b"x" * (2 * LOOPBACK_BLOCK_SIZE))
    (a_box / "big.bin").write_bytes(b"x" * (3 * LOOPBACK_BLOCK_SIZE))
    destination = await _destination(client, b)
    transfer = await send(client, destination, {"/small.bin": "/small.bin"})
    assert (await wait_transfer(client, transfer["transferId"]))["status"] == "complete"
    with pytest.raises(CommandFailed) as refused:
        await send(client, destination, {"/big.bin": "/big.bin"})
    assert refused.value.code == "invalid_parameter"
    assert refused.value.message == (f"The manifest needs 4 blocks of {LOOPBACK_BLOCK_SIZE} "
                                     "bytes; one transfer can carry 3.")


async def test_a_5000_byte_password_logs_in_to_the_api_and_authorizes_a_transfer(
        tmp_path: Path) -> None:
    password = "x" * 4999 + "é"  # 5001 bytes of UTF-8
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b", {"bob": password})
    async with Server(make_settings(a_home)) as a, Server(make_settings(b_home)) as b:
        viewer = await AsyncClient.connect("127.0.0.1", b.api_port)
        await viewer.auth("bob", password)
        await viewer.close()
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=password)
        (a_home / "sandbox" / "f.txt").write_text("long")
        transfer = await send(client, destination["destinationId"], {"/f.txt": "/f.txt"})
        done = await wait_transfer(client, transfer["transferId"])
        assert done["status"] == "complete", done["errorMessage"]
        assert (b_home / "sandbox" / "f.txt").read_text() == "long"
        await client.close()
