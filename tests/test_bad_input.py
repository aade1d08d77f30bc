"""Input that once crashed a command or hung a session now gets a clear error, and the
server goes on serving."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.errors import CommandFailed
from jetstream_server.protocol.sender import SendPhase
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, make_home, make_settings
from tests.raw_sender import raw_send
from tests.transfer_helpers import send, wait_transfer


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Server, AsyncClient, Path]]:
    """Server B, a client of server A logged in as alice, and A's sandbox."""
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"))) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        try:
            yield b, client, tmp_path / "a" / "sandbox"
        finally:
            await client.close()


@pytest.mark.parametrize(("address", "message"), [
    ("a" * 300, "destinationAddress 'aaaaaaaa"),
    ("x" * 64 + ".example.com", "each dot-separated part of a host name is 1 to 63"),
    ("a..b", "each dot-separated part of a host name is 1 to 63"),
    (".".join(c * 60 for c in "abcde") + ".com",
     "a host name is at most 253 characters"),
    ("bad host:8886", "no spaces or control characters"),
    ("[::1", "an IPv6 address in brackets needs its closing ']'"),
    ("[example.com]:8886", "'example.com' in brackets is not an IPv6 address"),
    ("[::1]x", "Cannot read destinationAddress '[::1]x'"),
])
async def test_addresses_that_are_no_host_are_refused_clearly(
        pair: tuple[Server, AsyncClient, Path], address: str, message: str) -> None:
    _, client, _ = pair
    with pytest.raises(CommandFailed) as refused:
        await client.call("createDestination", destinationAddress=address)
    assert refused.value.code == "invalid_parameter"
    assert message in refused.value.message
    assert len(refused.value.message) < 300  # a 300-character input is cut short
    assert await client.call("getDestinations") == []


async def test_names_too_long_for_a_file_system_are_named_where_they_are(
        pair: tuple[Server, AsyncClient, Path]) -> None:
    b, client, a_box = pair
    (a_box / "f.txt").write_text("x")
    destination = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"])
    manifest = await client.call("createManifest", fileMappings={"/f.txt": "/f.txt"})
    await client.wait_for_manifest(manifest["manifestId"])
    with pytest.raises(CommandFailed) as refused:
        await client.call("createTransfer", destinationId=destination["destinationId"],
                          manifestId=manifest["manifestId"], destinationPath="d" * 5000)
    assert refused.value.code == "invalid_parameter"
    assert refused.value.message.startswith("destinationPath has a name longer than 255 "
                                            "bytes: 'dddd")
    assert "(5000 characters)" in refused.value.message
    long_target = await client.call("createManifest",
                                    fileMappings={"/f.txt": "/in/" + "é" * 200})
    failed = await client.wait_for_manifest(long_target["manifestId"])
    assert failed["status"] == "error"
    assert failed["errorMessage"].startswith("Destination path '/in/ééé")
    assert "has a name longer than 255 bytes" in failed["errorMessage"]
    # a forged sender's destinationPath is named as such by the receiver
    core = await raw_send(b.recv_port, [("f.txt", b"x")], destination_path="/" + "d" * 300)
    assert core.error is not None
    assert "destinationPath has a name longer than 255 bytes" in core.error
    # and the server goes on serving
    transfer = await send(client, destination["destinationId"], {"/f.txt": "/f.txt"})
    assert (await wait_transfer(client, transfer["transferId"]))["status"] == "complete"


def _forged(body: dict[str, object]) -> Callable[[str], bytes]:
    return lambda transfer_id: zlib.compress(orjson.dumps({"transferId": transfer_id,
                                                           **body}))


@pytest.mark.parametrize(("metadata", "message"), [
    ({"v": 1, "files": 7}, "malformed file list in transfer metadata"),
    ({"v": 1, "files": [["/a", "/a", 1, 0, False]], "sender": "me"},
     "malformed userData or sender"),
    ({"v": 1, "files": [["/a", "/a", 1, 2**62, False]]}, "malformed file entry"),
    ({"v": 1, "transferId": 5, "files": []}, "malformed transferId"),
    ({"v": 1, "files": [["/a", "/a", 2**60, 0, False]]}, "blocks or more"),
    ({"v": 1, "files": [], "userData": {"x": "y" * 70_000}}, "userData in transfer metadata"),
])
async def test_metadata_of_the_wrong_shape_is_refused_and_the_session_closed(
        pair: tuple[Server, AsyncClient, Path], metadata: dict[str, object],
        message: str) -> None:
    b, _, _ = pair
    core = await raw_send(b.recv_port, [("/a", b"x")], forge=_forged(metadata),
                          timeout_s=20)
    assert core.phase is SendPhase.FAILED
    assert core.error is not None and message in core.error, core.error
    assert core.error.startswith("The sender's transfer metadata was refused:")
    assert b.endpoint is not None
    for _ in range(100):  # the session is closed, not left hanging
        if not b.endpoint.sessions:
            break
        await asyncio.sleep(0.05)
    assert b.endpoint.sessions == {}
