"""An attacker on the path between two servers (``tests/relay.py``, a process of its own
that relays UDP and TCP between two real server processes): what it sees, and what it can
and cannot do to a transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from jetstream_server.core.users import parse_hash, read_users_file
from jetstream_server.errors import Garbage
from jetstream_server.protocol.channel import Channel
from jetstream_server.protocol.noise import CIPHERS, Handshake, KeyPair
from jetstream_server.protocol.wire import (
    HEADER,
    Kind,
    decode_hello,
    decode_hello_payload,
    hello_prologue,
    parse_header,
)
from tests.conftest import PASSWORDS, ServerProcess, make_home
from tests.relay import read_recording

FILE_NAME = "quarterly-results-7f3a.bin"


class Relay:
    """``python -m tests.relay`` between a sender and the data port ``target``."""

    def __init__(self, target: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.relay", "--target", str(target), *args],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    """start(name, *args) -> a server process in tmp_path/name; all stopped after."""
    started: list[ServerProcess] = []

    def start(name: str, *args: str) -> ServerProcess:
        home = tmp_path / name
        if not home.exists():
            make_home(home)
        server = ServerProcess(home, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _send(a: ServerProcess, port: int, data: bytes, home: Path, *, transport: str = "udp",
          rate: int = 0) -> dict[str, Any]:
    """Send ``data`` as FILE_NAME from A to the data port ``port`` (bob's account)."""
    (home / "sandbox" / FILE_NAME).write_bytes(data)
    destination = a.call("createDestination", f"--destinationAddress=127.0.0.1:{port}",
                         "--destinationUser=bob", f"--destinationPassword={PASSWORDS['bob']}",
                         f"--dataTransport={transport}")
    manifest = a.call("createManifest", f"--fileMappings=/{FILE_NAME}:/{FILE_NAME}")
    for _ in range(100):
        if a.call("getManifest", f"--manifestId={manifest['manifestId']}")["status"] != \
                "pending":
            break
        time.sleep(0.05)
    transfer = a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                      f"--manifestId={manifest['manifestId']}", f"--sendRateMax={rate}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        got: dict[str, Any] = a.call("getTransfer", f"--transferId={transfer['transferId']}")
        if got["status"] in ("complete", "error", "cancelled"):
            return got
        time.sleep(0.1)
    raise AssertionError(f"the transfer did not end: {got}")


def _windows(data: bytes) -> set[bytes]:
    """The file's 16-byte windows at offsets that are multiples of 16: any 32-byte window
    of the file holds one of them whole."""
    return {data[i:i + 16] for i in range(0, len(data) - 15, 16)}


def _leaks(recording: bytes, windows: set[bytes]) -> int:
    """Places in ``recording`` where a window of the file appears."""
    return sum(recording[i:i + 16] in windows for i in range(len(recording) - 15))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_recording_relay_sees_no_file_data_no_name_and_no_password(
        servers: Any, tmp_path: Path, transport: str) -> None:
    a, b = servers("a"), servers("b")
    data = os.urandom(1_000_000)
    relay = Relay(b.recv_port, "--record", str(tmp_path / "wire"))
    try:
        done = _send(a, relay.port, data, tmp_path / "a", transport=transport)
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    assert (tmp_path / "b" / "sandbox" / FILE_NAME).read_bytes() == data
    recording = b"".join(chunk for _, chunk in read_recording(tmp_path / "wire"))
    assert len(recording) > len(data)  # (everything went through the relay)
    leaks = _leaks(recording, _windows(data))
    print(f"\n{transport}: {len(recording)} bytes recorded, {leaks} windows of the file")
    assert leaks == 0
    for secret in (FILE_NAME, PASSWORDS["bob"]):
        assert secret.encode() not in recording


@pytest.mark.timeout(180)
def test_without_encryption_the_same_relay_sees_the_file(servers: Any,
                                                         tmp_path: Path) -> None:
    """The check above can fail: with both servers at --no-data-encryption the file's
    bytes cross as they are (its name and the password stay sealed)."""
    a, b = servers("a", "--no-data-encryption"), servers("b", "--no-data-encryption")
    data = os.urandom(200_000)
    relay = Relay(b.recv_port, "--record", str(tmp_path / "wire"))
    try:
        done = _send(a, relay.port, data, tmp_path / "a")
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    recording = b"".join(chunk for _, chunk in read_recording(tmp_path / "wire"))
    assert _leaks(recording, _windows(data)) >= len(data) // 16
    for secret in (FILE_NAME, PASSWORDS["bob"]):
        assert secret.encode() not in recording


@pytest.mark.timeout(180)
def test_a_captured_handshake_gives_no_password_even_with_the_receivers_key(
        servers: Any, tmp_path: Path) -> None:
    """Before, one captured CHALLENGE and AUTH gave the password in 0.22 s of dictionary
    guessing (scrypt of each guess under the CHALLENGE's salt, HMAC, compare). Now the
    password travels only inside the sealed session, whose keys come from both servers'
    ephemeral keys: with the receiver's long-term private key (stolen afterwards) the
    HELLO opens, and holds no secret; the AUTH does not open."""
    a, b = servers("a"), servers("b")
    relay = Relay(b.recv_port, "--record", str(tmp_path / "wire"))
    try:
        done = _send(a, relay.port, b"small", tmp_path / "a")
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    recording = read_recording(tmp_path / "wire")
    wire = b"".join(chunk for _, chunk in recording)
    stored = parse_hash(read_users_file(tmp_path / "b" / "users")["bob"])
    assert stored is not None
    for secret in (PASSWORDS["bob"].encode(), stored.digest, stored.salt):
        assert secret not in wire  # no password, and nothing to guess it against
    kinds = {parse_header(chunk)[0] for _, chunk in recording}
    assert Kind.AUTH in kinds
    stolen = serialization.load_pem_private_key(
        (tmp_path / "b" / "state" / "server.key").read_bytes(), password=None)
    receiver = KeyPair(stolen)  # type: ignore[arg-type]
    [hello] = {chunk for direction, chunk in recording
               if direction == 0 and parse_header(chunk)[0] is Kind.HELLO}
    _, session = parse_header(hello)
    cipher_code, _, message = decode_hello(hello)
    cipher = CIPHERS["aes-256-gcm"]
    handshake = Handshake(cipher, receiver, hello_prologue(session, cipher_code))
    payload = decode_hello_payload(handshake.read_message_1(message))
    assert payload.user == "bob" and PASSWORDS["bob"].encode() not in message
    # what the stolen key gives (es, ss) is not what seals the session (ee, se)
    [auth] = [chunk for direction, chunk in recording
              if direction == 0 and parse_header(chunk) == (Kind.AUTH, session)][:1]
    for send_key in handshake.split():
        with pytest.raises(Garbage):
            Channel(cipher, session, bytes(32), send_key).open(Kind.AUTH, auth)
    assert len(auth) > HEADER.size


@pytest.mark.timeout(180)
def test_bits_flipped_datagrams_replayed_and_forged_are_dropped_and_counted(
        servers: Any, tmp_path: Path) -> None:
    a, b = servers("a"), servers("b")
    data = os.urandom(4_000_000)  # 63 blocks of 63 KiB, an ACK each at this rate
    relay = Relay(b.recv_port, "--flip", "0.1", "--replay", "0.1", "--inject", "0.1",
                  "--seed", "7")
    try:
        done = _send(a, relay.port, data, tmp_path / "a", rate=16000)
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    assert (tmp_path / "b" / "sandbox" / FILE_NAME).read_bytes() == data
    dropped = b.call("getServerInfo")["receiver"]["datagramsDropped"]
    assert dropped.get("failedAuthentication", 0) > 0, dropped
    assert dropped.get("replayed", 0) > 0, dropped
    assert done["datagramsDropped"].get("failedAuthentication", 0) > 0, done
    assert done["datagramsDropped"].get("replayed", 0) > 0, done
    print(f"\nreceiver dropped {dropped}; sender dropped {done['datagramsDropped']}; "
          f"{done['blocksRetransmitted']} blocks resent of {done['totalBlocks']}")


@pytest.mark.timeout(180)
def test_rewritten_file_data_and_a_forged_final_acknowledgement_change_nothing(
        servers: Any, tmp_path: Path) -> None:
    """Before, a relay that rewrote file data and recomputed every checksum had both
    servers report complete with different bytes, and a forged ACK_COMPLETE made the
    sender report complete at once. Now both fail their tags: the rewritten blocks are
    sent again, the forged acknowledgement is dropped, and the transfer completes only
    when every file is in place, identical."""
    a, b = servers("a"), servers("b")
    data = os.urandom(2_000_000)
    relay = Relay(b.recv_port, "--rewrite", "0.2", "--forge-complete", "1", "--seed", "3")
    try:
        done = _send(a, relay.port, data, tmp_path / "a", rate=8000)  # 8 Mbit/s: 2 s
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    assert done["blocksAcked"] == done["totalBlocks"]
    assert done["blocksRetransmitted"] > 0  # (the rewritten blocks, sent again)
    assert (tmp_path / "b" / "sandbox" / FILE_NAME).read_bytes() == data
    assert done["datagramsDropped"]["failedAuthentication"] > 10, done
    received = b.call("recv.getTransfers", user="bob")
    assert [r["status"] for r in received] == ["complete"]
    print(f"\nsender dropped {done['datagramsDropped']}; {done['blocksRetransmitted']} "
          f"blocks resent of {done['totalBlocks']}")


@pytest.mark.timeout(180)
def test_a_tcp_stream_changed_on_the_way_is_closed_and_the_transfer_resumes(
        servers: Any, tmp_path: Path) -> None:
    a, b = servers("a"), servers("b")
    data = os.urandom(4_000_000)
    relay = Relay(b.recv_port, "--flip", "0.3", "--max-flips", "2", "--seed", "5")
    try:
        done = _send(a, relay.port, data, tmp_path / "a", transport="tcp", rate=16000)
    finally:
        relay.stop()
    assert done["status"] == "complete", done["errorMessage"]
    assert (tmp_path / "b" / "sandbox" / FILE_NAME).read_bytes() == data
    log = (tmp_path / "a" / "server.log").read_text() + \
        (tmp_path / "b" / "server.log").read_text()
    # one side or the other caught it, and said so ("a frame did not open", "carried a
    # message that does not open")
    assert "not open" in log


@pytest.mark.timeout(180)
def test_a_receiver_impersonated_by_another_server_is_refused(servers: Any,
                                                              tmp_path: Path) -> None:
    """The relay first leads to B (whose key the sender pins), then to C, a real server
    with its own key, on the same address."""
    a, b, c = servers("a"), servers("b"), servers("c")
    relay = Relay(b.recv_port, "--then", str(c.recv_port))
    try:
        first = _send(a, relay.port, b"to b", tmp_path / "a")
        assert first["status"] == "complete", first["errorMessage"]
        relay.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        second = _send(a, relay.port, b"to c?", tmp_path / "a")
    finally:
        relay.stop()
    keys = {name: json.loads(server.api("getServerInfo").stdout)["publicKey"]
            for name, server in (("b", b), ("c", c))}
    assert second["status"] == "error"
    assert f"public key {keys['c']}, not {keys['b']}, the key pinned" in \
        second["errorMessage"]
    assert not (tmp_path / "c" / "sandbox" / FILE_NAME).exists()
