"""Server identity: each server's key, the key a sender pins for a destination, the
senders a receiver trusts by key, passwords that never leave as password equivalents, and
encryption that both ends must agree on."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient, Client
from jetstream_server.core.users import parse_hash, read_users_file
from jetstream_server.errors import CommandFailed, ConfigError, UntrustedServer
from jetstream_server.protocol.noise import KeyPair, public_key_text
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, make_home, make_settings
from tests.transfer_helpers import send, wait_transfer

Pair = tuple[Server, Server, AsyncClient, Path, Path]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Servers A and B, a client of A logged in as alice, and both homes."""
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home)) as a, Server(make_settings(b_home)) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        try:
            yield a, b, client, a_home, b_home
        finally:
            await client.close()


@pytest.fixture
async def sender(tmp_path: Path) -> AsyncIterator[tuple[Server, AsyncClient, Path, Path, int]]:
    """Server A with a client logged in as alice, A's home, and a home and a port for a
    receiving server B that the test starts (and starts again) itself."""
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home)) as a:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        try:
            yield a, client, a_home, b_home, _free_port()
        finally:
            await client.close()


async def _transfer(client: AsyncClient, port: int, home: Path, name: str = "f.txt",
                    **destination: Any) -> dict[str, Any]:
    """Send one small file to the data port ``port``; the transfer as it ended."""
    made = await client.call("createDestination", destinationAddress=f"127.0.0.1:{port}",
                             **destination)
    (home / "sandbox" / name).write_text(f"data of {name}")
    transfer = await send(client, made["destinationId"], {f"/{name}": f"/{name}"})
    return await wait_transfer(client, transfer["transferId"], timeout_s=60)


def _key(server: Server) -> str:
    assert server.service is not None
    return public_key_text(server.service.identity.public)


async def test_the_server_key_is_private_reported_and_refused_when_others_can_read_it(
        home: Path) -> None:
    async with Server(make_settings(home)) as server:
        client = await AsyncClient.connect("127.0.0.1", server.api_port)
        info = await client.call("getServerInfo")
        await client.close()
    key_file = home / "state" / "server.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for made in ("api-cert.pem", "api-key.pem"):
        assert stat.S_IMODE((home / "state" / made).stat().st_mode) == 0o600
    assert info["publicKey"] == _key(server) and len(info["publicKey"]) == 44
    assert info["encryptionAvailable"] is True and info["encryptionEnabled"] is True
    assert info["minCipher"] == "aes-256-gcm"
    assert 3640 <= info["certificateValidation"] <= 3650
    der = base64.b64decode("".join(
        (home / "state" / "api-cert.pem").read_text().splitlines()[1:-1]))
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert info["certificateFingerprint"] == f"SHA256:{digest}"
    async with Server(make_settings(home)) as again:  # the same key at every start
        assert _key(again) == info["publicKey"]
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=f"server key {key_file} is readable by others "
                                          r"\(mode 0644\): chmod 600"):
        async with Server(make_settings(home)):
            pass


async def test_a_destination_with_another_key_is_refused_naming_both(pair: Pair) -> None:
    _, b, client, a_home, b_home = pair
    pinned = public_key_text(KeyPair.generate().public)
    done = await _transfer(client, b.recv_port, a_home, destinationUser="bob",
                           destinationPassword=PASSWORDS["bob"], destinationPublicKey=pinned)
    assert done["status"] == "error"
    assert (f"The destination identified itself with public key {_key(b)}, not {pinned}, "
            "the key pinned for it") in done["errorMessage"]
    assert f"--destinationPublicKey={_key(b)}" in done["errorMessage"]
    assert not (b_home / "sandbox" / "f.txt").exists()
    right = await _transfer(client, b.recv_port, a_home, "g.txt", destinationUser="bob",
                            destinationPassword=PASSWORDS["bob"],
                            destinationPublicKey=_key(b))
    assert right["status"] == "complete", right["errorMessage"]
    with pytest.raises(CommandFailed, match="destinationPublicKey 'nope': a public key is 44"):
        await client.call("createDestination", destinationAddress="127.0.0.1:1",
                          destinationPublicKey="nope")


async def test_a_key_pinned_on_first_contact_that_changes_fails_until_made_again(
        sender: tuple[Server, AsyncClient, Path, Path, int]) -> None:
    _, client, a_home, b_home, port = sender
    credentials = {"destinationUser": "bob", "destinationPassword": PASSWORDS["bob"]}
    async with Server(make_settings(b_home, recv_port=port, api_port=port)) as b:
        first = await _transfer(client, port, a_home, **credentials)
        assert first["status"] == "complete", first["errorMessage"]
        old = _key(b)
    [destination] = await client.call("getDestinations")
    assert destination["destinationPublicKey"] == old
    (b_home / "state" / "server.key").unlink()  # B comes back with a new key
    async with Server(make_settings(b_home, recv_port=port, api_port=port)) as b:
        new = _key(b)
        changed = await _transfer(client, port, a_home, "g.txt", **credentials)
        assert changed["status"] == "error"
        assert f"public key {new}, not {old}" in changed["errorMessage"]
        assert f"delete destination {destination['destinationId']} and create it " \
               f"again with --destinationPublicKey={new}" in changed["errorMessage"]
        await client.call("deleteDestination", destinationId=destination["destinationId"])
        again = await _transfer(client, port, a_home, "h.txt", **credentials)
        assert again["status"] == "complete", again["errorMessage"]
        assert (b_home / "sandbox" / "h.txt").read_text() == "data of h.txt"


async def _root(server: Server) -> AsyncClient:
    root = await AsyncClient.connect("127.0.0.1", server.api_port)
    await root.auth("root", PASSWORDS["root"])
    await root.call("superuser")
    return root


async def test_an_authorized_server_sends_without_credentials_as_its_users_name(
        sender: tuple[Server, AsyncClient, Path, Path, int]) -> None:
    a, client, a_home, b_home, port = sender
    async with Server(make_settings(b_home, recv_port=port, api_port=port)) as b:
        unknown = await _transfer(client, port, a_home, "refused.txt")
        assert unknown["status"] == "error"
        assert (f"or have its operator authorize this server's key {_key(a)} "
                "(recv.addAuthorizedClientAsync") in unknown["errorMessage"]
        bob = await AsyncClient.connect("127.0.0.1", b.api_port)
        await bob.auth("bob", PASSWORDS["bob"])
        with pytest.raises(CommandFailed, match="raised superuser"):
            await bob.call("recv.addAuthorizedClient", clientPublicKey=_key(a))
        await bob.close()
        root = await _root(b)
        queued = await root.call("recv.addAuthorizedClientAsync", clientPublicKey=_key(a))
        entry = await root.call("getRequestResult", requestId=queued["requestId"])
        assert entry["clientPublicKey"] == _key(a) and entry["owner"] == "root"
        trusted = await _transfer(client, port, a_home, "trusted.txt")
        assert trusted["status"] == "complete", trusted["errorMessage"]
        [record] = [r for r in await root.call("recv.getTransfers")
                    if r["transferId"] == trusted["transferId"]]
        assert record["username"] == "alice"  # the sending user's name
        assert record["sourcePublicKey"] == _key(a) and record["encryptionEnabled"]
        [source] = await root.call("recv.getSources")
        assert source["destinationPublicKey"] == _key(a)
        assert source["encryptionEnabled"] is True
        # only authorized servers: credentials no longer suffice without the key
        await root.call("recv.allowOnlyAuthorizedClients", enable=True)
        await root.call("recv.removeAuthorizedClient", clientPublicKey=_key(a))
        with_password = await _transfer(client, port, a_home, "pw.txt",
                                        destinationUser="bob",
                                        destinationPassword=PASSWORDS["bob"])
        assert with_password["status"] == "error"
        assert (f"accepts transfers only from servers it has authorized, and this "
                f"server's key {_key(a)} is not one of them") in \
            with_password["errorMessage"]
        await root.call("recv.addAuthorizedClient", clientPublicKey=_key(a))
        await root.close()
    async with Server(make_settings(b_home, recv_port=port, api_port=port)) as b:
        root = await _root(b)
        kept = await root.call("recv.getAuthorizedClients")
        assert kept["allowOnlyAuthorizedClients"] is True
        assert [c["clientPublicKey"] for c in kept["authorizedClients"]] == [_key(a)]
        await root.close()
        after = await _transfer(client, port, a_home, "after.txt")
        assert after["status"] == "complete", after["errorMessage"]
        assert (b_home / "sandbox" / "after.txt").read_text() == "data of after.txt"


async def test_the_users_file_hash_itself_logs_nobody_in(pair: Pair) -> None:
    """A copy of the users file is no password: neither its hash string nor the derived
    key in it logs in to the API or authorizes a transfer."""
    _, b, client, a_home, b_home = pair
    stored = read_users_file(b_home / "users")["bob"]
    parts = parse_hash(stored)
    assert parts is not None
    for stolen in (stored, base64.b64encode(parts.digest).decode(), parts.digest.hex()):
        viewer = await AsyncClient.connect("127.0.0.1", b.api_port)
        with pytest.raises(CommandFailed, match="wrong user name or password"):
            await viewer.auth("bob", stolen)
        await viewer.close()
    done = await _transfer(client, b.recv_port, a_home, destinationUser="bob",
                           destinationPassword=stored)
    assert done["status"] == "error"
    assert "refused user 'bob': wrong user name or password" in done["errorMessage"]


@pytest.mark.parametrize(("a_plain", "b_plain", "message"), [
    (True, True, None),
    (False, True, "The destination does not encrypt transfers (it runs with "
                  "--no-data-encryption), and this server sends only encrypted ones."),
    (True, False, "This server encrypts every transfer, and the sending server has data "
                  "encryption turned off (--no-data-encryption)"),
])
async def test_encryption_can_be_turned_off_only_at_both_ends(
        tmp_path: Path, a_plain: bool, b_plain: bool, message: str | None) -> None:
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home, no_data_encryption=a_plain)) as a, \
            Server(make_settings(b_home, no_data_encryption=b_plain)) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        info = await client.call("getServerInfo")
        assert info["encryptionEnabled"] is not a_plain
        assert info["minCipher"] == ("none" if a_plain else "aes-256-gcm")
        done = await _transfer(client, b.recv_port, a_home, destinationUser="bob",
                               destinationPassword=PASSWORDS["bob"])
        [destination] = await client.call("getDestinations")
        assert destination["encryptionEnabled"] is not a_plain
        await client.close()
    if message is None:
        assert done["status"] == "complete", done["errorMessage"]
        assert (b_home / "sandbox" / "f.txt").read_text() == "data of f.txt"
    else:
        assert done["status"] == "error" and message in done["errorMessage"]
        assert not (b_home / "sandbox" / "f.txt").exists()


async def test_chacha20_poly1305_is_selectable(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    async with Server(make_settings(a_home, data_cipher="chacha20-poly1305")) as a, \
            Server(make_settings(b_home)) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        assert (await client.call("getServerInfo"))["dataCipher"] == "chacha20-poly1305"
        (a_home / "sandbox" / "big.bin").write_bytes(os.urandom(3_000_000))
        made = await client.call("createDestination", destinationAddress=f"127.0.0.1:"
                                 f"{b.recv_port}", destinationUser="bob",
                                 destinationPassword=PASSWORDS["bob"], dataTransport="tcp")
        transfer = await send(client, made["destinationId"], {"/big.bin": "/big.bin"})
        done = await wait_transfer(client, transfer["transferId"])
        assert done["status"] == "complete", done["errorMessage"]
        assert (b_home / "sandbox" / "big.bin").read_bytes() == \
            (a_home / "sandbox" / "big.bin").read_bytes()
        await client.close()
    with pytest.raises(ConfigError, match="--data-cipher must be one of aes-256-gcm, "
                                          "chacha20-poly1305"):
        make_settings(a_home, data_cipher="rot13")


async def test_the_python_client_speaks_tls_and_checks_the_fingerprint(
        home: Path, tmp_path: Path) -> None:
    async with Server(make_settings(home)) as server:
        assert server.service is not None
        fingerprint = server.service.api_certificate.fingerprint
        client = await AsyncClient.connect("127.0.0.1", server.api_port, tls=True,
                                           fingerprint=fingerprint)
        await client.auth("alice", PASSWORDS["alice"])
        assert (await client.call("getServerInfo"))["certificateFingerprint"] == fingerprint
        await client.close()
        known = tmp_path / "known"
        first = await AsyncClient.connect("127.0.0.1", server.api_port, tls=True,
                                          known_servers=known)
        assert first.trust_note is not None and fingerprint in known.read_text()
        await first.close()
        again = await AsyncClient.connect("127.0.0.1", server.api_port, tls=True,
                                          known_servers=known)
        assert again.trust_note is None
        await again.close()
        other = "SHA256:" + base64.b64encode(bytes(32)).decode().rstrip("=")
        with pytest.raises(UntrustedServer) as refused:
            await AsyncClient.connect("127.0.0.1", server.api_port, tls=True,
                                      fingerprint=other)
        assert f"has fingerprint {fingerprint}, not {other} as given" in refused.value.message
        hex_form = ":".join(f"{b:02X}" for b in base64.b64decode(fingerprint[7:] + "="))
        sync = await asyncio.to_thread(Client.connect, "127.0.0.1", server.api_port,
                                       tls=True, fingerprint=hex_form)
        assert (await asyncio.to_thread(sync.call, "getServerInfo"))["publicKey"] == \
            _key(server)
        await asyncio.to_thread(sync.close)
