"""The Noise IK handshake against the published test vectors and an independent
implementation (the ``noiseprotocol`` package), and the channel's sealing: what a
datagram may be turned into on the way, and what becomes of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from jetstream_server.errors import Garbage, Replayed, Truncated, Unauthenticated
from jetstream_server.protocol import channel as channel_module
from jetstream_server.protocol.channel import DATA_OVERHEAD, WINDOW, Channel
from jetstream_server.protocol.endpoint import ReceiverEndpoint
from jetstream_server.protocol.layout import Layout
from jetstream_server.protocol.noise import (
    CIPHERS,
    Handshake,
    KeyPair,
    public_key_bytes,
    public_key_text,
)
from jetstream_server.protocol.sender import SenderCore
from jetstream_server.protocol.wire import (
    DATA_HEADER,
    HEADER,
    HELLO_ENCRYPT,
    HELLO_PASSWORD,
    Hello,
    Kind,
    decode_hello,
    decode_hello_payload,
    encode_hello,
    encode_hello_payload,
    encode_key,
    encode_plain,
    first_byte,
    hello_prologue,
    parse_header,
)

# The Noise_IK_25519_AESGCM_SHA256 vector of the Noise test vectors (the "snow" and
# cacophony sets): fixed keys, prologue "notsecret", payloads "test_msg_0" and
# "test_msg_1", then one transport message each way.
VECTOR = {
    "prologue": "6e6f74736563726574",
    "init_static": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "init_ephemeral": "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
    "resp_static": "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
    "resp_ephemeral": "4142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60",
    "messages": [
        ("746573745f6d73675f30",
         "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd16625419d6fab17530"
         "0a577115c701c41ed681373f0432f81d3bf8676bd05216cd1919e61b75ccef0c0cf0b216fcdf37"
         "1d0859e6d8177aa9777fe9b8435bb6f8202c3acd9051a9aee0a63e76f6"),
        ("746573745f6d73675f31",
         "64b101b1d0be5a8704bd078f9895001fc03e8e9f9522f188dd128d9846d4846658a7bb8caac509"
         "7833909e90778571d34ce0e5b6ea4c3a76f102"),
        ("79656c6c6f777375626d6172696e65",
         "80a75e75c8e8d2e9c2a6c7bc6e550c4997d6d2b45429a530821c4aa5d36f27"),
        ("7375626d6172696e6579656c6c6f77",
         "b8475410da62a98493d33a1e669f8f56dd8f61d449b53bd375299c3435424a"),
    ],
}


def _key(name: str) -> KeyPair:
    return KeyPair.from_private_bytes(bytes.fromhex(str(VECTOR[name])))


def test_the_handshake_gives_the_published_vector_byte_for_byte() -> None:
    aes = CIPHERS["aes-256-gcm"]
    prologue = bytes.fromhex(str(VECTOR["prologue"]))
    responder_static = _key("resp_static")
    initiator = Handshake(aes, _key("init_static"), prologue,
                          remote_static=responder_static.public,
                          ephemeral=_key("init_ephemeral"))
    responder = Handshake(aes, responder_static, prologue, ephemeral=_key("resp_ephemeral"))
    (p0, c0), (p1, c1), (p2, c2), (p3, c3) = [
        (bytes.fromhex(p), bytes.fromhex(c)) for p, c in VECTOR["messages"]]
    assert initiator.write_message_1(p0) == c0
    assert responder.read_message_1(c0) == p0
    assert responder.remote_static == _key("init_static").public
    assert responder.write_message_2(p1) == c1
    assert initiator.read_message_2(c1) == p1
    to_responder, to_initiator = initiator.split()
    assert responder.split() == (to_responder, to_initiator)
    assert aes.aead(to_responder).encrypt(aes.nonce(0), p2, b"") == c2
    assert aes.aead(to_initiator).encrypt(aes.nonce(0), p3, b"") == c3


def _theirs(cipher: str, initiator: bool, static: KeyPair, remote: bytes | None,
            prologue: bytes) -> NoiseConnection:
    name = {"aes-256-gcm": "AESGCM", "chacha20-poly1305": "ChaChaPoly"}[cipher]
    connection = NoiseConnection.from_name(f"Noise_IK_25519_{name}_SHA256".encode())
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static.private.private_bytes_raw())
    if remote is not None:
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    connection.set_prologue(prologue)
    connection.set_as_initiator() if initiator else connection.set_as_responder()
    connection.start_handshake()
    return connection


@pytest.mark.parametrize("cipher", list(CIPHERS))
def test_either_side_talks_with_an_independent_implementation(cipher: str) -> None:
    suite = CIPHERS[cipher]
    ours, theirs_key = KeyPair.generate(), KeyPair.generate()
    prologue = os.urandom(20)
    # ours initiates, theirs responds
    initiator = Handshake(suite, ours, prologue, remote_static=theirs_key.public)
    responder = _theirs(cipher, False, theirs_key, None, prologue)
    assert responder.read_message(initiator.write_message_1(b"hello")) == b"hello"
    assert initiator.read_message_2(responder.write_message(b"reply")) == b"reply"
    to_them, to_us = initiator.split()
    assert responder.decrypt(suite.aead(to_them).encrypt(suite.nonce(0), b"x", b"")) == b"x"
    assert suite.aead(to_us).decrypt(suite.nonce(0), responder.encrypt(b"y"), b"") == b"y"
    # theirs initiates, ours responds
    them = _theirs(cipher, True, theirs_key, ours.public, prologue)
    responder_ours = Handshake(suite, ours, prologue)
    assert responder_ours.read_message_1(them.write_message(b"hi")) == b"hi"
    assert responder_ours.remote_static == theirs_key.public
    assert them.read_message(responder_ours.write_message_2(b"ok")) == b"ok"
    to_us, to_them = responder_ours.split()
    assert them.decrypt(suite.aead(to_them).encrypt(suite.nonce(0), b"z", b"")) == b"z"
    # and Noise's REKEY gives the same next key on both sides
    them.noise_protocol.cipher_state_encrypt.rekey()
    rekeyed = suite.rekey(to_us)
    assert suite.aead(rekeyed).decrypt(suite.nonce(0), them.encrypt(b"after"), b"") == \
        b"after"


def test_a_responder_with_another_key_or_a_damaged_message_cannot_open_message_1() -> None:
    aes = CIPHERS["aes-256-gcm"]
    real, impostor, sender = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    message = Handshake(aes, sender, b"p", remote_static=real.public).write_message_1(b"m")
    with pytest.raises(Garbage):
        Handshake(aes, impostor, b"p").read_message_1(message)
    with pytest.raises(Garbage):  # another prologue (a session id changed on the way)
        Handshake(aes, real, b"q").read_message_1(message)
    for position in (0, 40, len(message) - 1):
        damaged = bytearray(message)
        damaged[position] ^= 0x20
        with pytest.raises(Garbage):
            Handshake(aes, real, b"p").read_message_1(bytes(damaged))
    assert Handshake(aes, real, b"p").read_message_1(message) == b"m"
    with pytest.raises(Garbage):  # a low-order point gives no shared secret
        Handshake(aes, real, b"p").read_message_1(bytes(32) + message[32:])


def test_public_keys_as_text() -> None:
    key = KeyPair.generate().public
    text = public_key_text(key)
    assert len(text) == 44 and public_key_bytes(text) == key
    for bad in ("", "abc", text[:-2], text + "AA", "!" * 44):
        with pytest.raises(ValueError):
            public_key_bytes(bad)


def _pair(cipher: str = "aes-256-gcm", encrypt: bool = True) -> tuple[Channel, Channel]:
    a, b = os.urandom(32), os.urandom(32)
    return (Channel(CIPHERS[cipher], 7, a, b, encrypt),
            Channel(CIPHERS[cipher], 7, b, a, encrypt))


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=2000), cut=st.integers(0, 3000),
       flip=st.integers(0, 8 * 3000), cipher=st.sampled_from(list(CIPHERS)))
def test_a_truncated_or_changed_datagram_is_dropped_and_nothing_else_changes(
        payload: bytes, cut: int, flip: int, cipher: str) -> None:
    sender, receiver = _pair(cipher)
    datagram = sender.seal_data(123456789, 42, payload)
    changed = bytearray(datagram[:cut])
    if changed and flip < len(changed) * 8:
        changed[flip // 8] ^= 1 << flip % 8
    if bytes(changed) != bytes(datagram):
        with pytest.raises(Garbage) as raised:
            kind, _ = parse_header(changed)
            receiver.open(kind, changed)
        assert isinstance(raised.value, Truncated | Unauthenticated) or \
            str(raised.value) in ("bad version", "unknown type") or \
            str(raised.value).endswith("is not sealed")  # (a type changed in the header)
        assert receiver.highest == -1  # the window did not move
    head, body = receiver.open(Kind.DATA, datagram)  # the real one still opens
    assert body == payload
    assert DATA_HEADER.unpack(head) == (123456789 >> 32, 123456789 & 0xFFFFFFFF, 42)


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(list(range(64))), repeats=st.lists(st.integers(0, 63),
                                                                   max_size=20))
def test_reordered_datagrams_open_once_each_and_replays_are_dropped(
        order: list[int], repeats: list[int]) -> None:
    sender, receiver = _pair()
    sealed = [sender.seal(Kind.ACK, i.to_bytes(2, "big")) for i in range(64)]
    opened = []
    for i in order + repeats:
        try:
            opened.append(int.from_bytes(receiver.open(Kind.ACK, sealed[i])[1], "big"))
        except Replayed:
            continue
    assert sorted(opened) == list(range(64))


def test_the_window_and_the_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "EPOCH_BITS", 5)  # a new key every 32 packets
    sender, receiver = _pair()
    sealed = [sender.seal(Kind.PING) for _ in range(100)]
    for number in (0, 1, 33, 40, 31, 70):  # a late packet of the epoch before still opens
        receiver.open(Kind.PING, sealed[number])
    with pytest.raises(Replayed):
        receiver.open(Kind.PING, sealed[2])  # two epochs back: its key is gone
    with pytest.raises(Unauthenticated):  # a number two epochs ahead: no key yet
        receiver.open(Kind.PING, sealed[99][:5] + (200).to_bytes(6, "big") + sealed[99][11:])
    # each epoch has its own key: a packet sealed with the next one does not open with
    # the one before (its header says epoch 1, its tag was made with epoch 2's key)
    forged = bytearray(sealed[70])
    forged[5:11] = (41).to_bytes(6, "big")
    with pytest.raises(Unauthenticated):
        receiver.open(Kind.PING, bytes(forged))


def test_a_packet_older_than_the_window_is_dropped() -> None:
    sender, receiver = _pair()
    sealed = [sender.seal(Kind.PING) for _ in range(WINDOW + 10)]
    receiver.open(Kind.PING, sealed[-1])
    receiver.open(Kind.PING, sealed[10])  # (just within the window)
    with pytest.raises(Replayed):
        receiver.open(Kind.PING, sealed[9])


def test_plain_data_only_where_both_ends_said_so() -> None:
    sender, receiver = _pair(encrypt=False)
    datagram = sender.seal_data(5, 1, b"file bytes")
    assert b"file bytes" in datagram and len(datagram) == 18 + 10
    assert receiver.open(Kind.PLAIN_DATA, datagram)[1] == b"file bytes"
    encrypting = _pair()[1]
    with pytest.raises(Unauthenticated):
        encrypting.open(Kind.PLAIN_DATA, datagram)
    sealed = _pair()[0].seal_data(5, 1, b"file bytes")
    assert b"file bytes" not in sealed and len(sealed) == DATA_OVERHEAD + 10


def _session_messages() -> tuple[list[bytes], list[bytes]]:
    """Real messages of one session, each way: (to the receiver, to the sender)."""
    from tests.protocol_link import RECEIVER_KEY, make_hello

    endpoint = ReceiverEndpoint(RECEIVER_KEY)
    hello, handshake = make_hello(5)
    core = endpoint.receive_datagram(hello, ("10.0.0.1", 1), 0.0)
    assert core is not None
    [reply] = core.datagrams_to_send(0.0)
    handshake.read_message_2(reply[HEADER.size:])
    send_key, receive_key = handshake.split()
    sender = Channel(CIPHERS["aes-256-gcm"], 5, send_key, receive_key)
    to_receiver = [hello, sender.seal(Kind.AUTH, b"pw"), sender.seal_data(0, 1, b"m" * 300),
                   sender.seal(Kind.PING), encode_plain(Kind.KEY_REQUEST, 5, bytes(40))]
    core.login_decided("alice")
    to_sender = [reply, *core.datagrams_to_send(0.1), encode_key(5, RECEIVER_KEY.public, 1),
                 encode_plain(Kind.COOKIE, 5, bytes(16)), encode_plain(Kind.UNKNOWN, 5)]
    return to_receiver, to_sender


TO_RECEIVER, TO_SENDER = _session_messages()


@settings(max_examples=300, deadline=None)
@given(picks=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4000),
                                st.integers(0, 40_000), st.booleans()), max_size=12))
def test_changed_truncated_and_reordered_messages_never_raise_out_of_the_cores(
        picks: list[tuple[int, int, int, bool]]) -> None:
    """Whatever an attacker makes of a session's messages, each core drops what it
    cannot use and goes on: no exception leaves it."""
    from tests.protocol_link import RECEIVER_KEY, SENDER_KEY, MemorySource

    endpoint = ReceiverEndpoint(RECEIVER_KEY)
    layout = Layout(512, 100, [10])
    sender = SenderCore(5, Hello(bytes(16), 512, 100, 1, "alice"), b"m" * 100, layout,
                        MemorySource([b"x" * 10]), 0.0, static=SENDER_KEY,
                        remote_key=RECEIVER_KEY.public, cipher=CIPHERS["aes-256-gcm"],
                        password="pw")
    for now, (index, cut, flip, to_receiver) in enumerate(picks):
        message = bytearray((TO_RECEIVER if to_receiver else TO_SENDER)[index][:cut])
        if message and flip < len(message) * 8:
            message[flip // 8] ^= 1 << flip % 8
        if to_receiver:
            endpoint.receive_datagram(bytes(message), ("10.0.0.1", 1), float(now))
            endpoint.datagrams_to_send()
        else:
            sender.receive_datagram(bytes(message), float(now))
            sender.handle_timer(float(now))
            sender.datagrams_to_send(float(now))


def test_the_test_vectors_of_the_protocol_page_are_what_the_code_gives() -> None:
    page = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = page.split("## Test vectors", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^- (.+): `([0-9a-f]+)`$", section, re.MULTILINE))
    aes = CIPHERS["aes-256-gcm"]

    def key(byte: int) -> KeyPair:
        return KeyPair.from_private_bytes(bytes([byte]) * 32)

    sender_static, sender_ephemeral, receiver_static, receiver_ephemeral = (
        key(1), key(2), key(3), key(4))
    session = 0x01020304
    hello = Hello(bytes(range(16)), 1436, 100, 1, "bob", HELLO_PASSWORD | HELLO_ENCRYPT)
    initiator = Handshake(aes, sender_static, hello_prologue(session, aes.code),
                          remote_static=receiver_static.public, ephemeral=sender_ephemeral)
    hello_datagram = encode_hello(session, aes.code, bytes(16), initiator.write_message_1(
        encode_hello_payload(hello)))
    responder = Handshake(aes, receiver_static, hello_prologue(session, aes.code),
                          ephemeral=receiver_ephemeral)
    assert decode_hello_payload(responder.read_message_1(
        decode_hello(hello_datagram)[2])) == hello
    reply = HEADER.pack(first_byte(Kind.REPLY), session) + responder.write_message_2(
        bytes([HELLO_ENCRYPT]))
    initiator.read_message_2(reply[HEADER.size:])
    to_receiver, to_sender = initiator.split()
    channel = Channel(aes, session, to_receiver, to_sender)
    computed = {
        "initiator (sender) static private key": sender_static.private.private_bytes_raw(),
        "initiator static public key": sender_static.public,
        "initiator ephemeral private key": sender_ephemeral.private.private_bytes_raw(),
        "responder (receiver) static private key":
            receiver_static.private.private_bytes_raw(),
        "responder static public key": receiver_static.public,
        "responder ephemeral private key": receiver_ephemeral.private.private_bytes_raw(),
        "prologue": hello_prologue(session, aes.code),
        "HELLO payload": encode_hello_payload(hello),
        "HELLO datagram": hello_datagram,
        "REPLY datagram": reply,
        "sender-to-receiver key": to_receiver,
        "receiver-to-sender key": to_sender,
        "AUTH 'bob-pw', packet 0": channel.seal(Kind.AUTH, b"bob-pw"),
        "DATA block 1, send time 0x11223344, 'hello, world', packet 1":
            bytes(channel.seal_data(1, 0x11223344, b"hello, world")),
    }
    assert documented == {name: value.hex() for name, value in computed.items()}


def test_a_damaged_reply_does_not_spoil_the_good_one_after_it() -> None:
    aes = CIPHERS["aes-256-gcm"]
    receiver, sender = KeyPair.generate(), KeyPair.generate()
    initiator = Handshake(aes, sender, b"p", remote_static=receiver.public)
    responder = Handshake(aes, receiver, b"p")
    responder.read_message_1(initiator.write_message_1(b""))
    reply = responder.write_message_2(b"ok")
    for position in (0, 40):
        damaged = bytearray(reply)
        damaged[position] ^= 1
        with pytest.raises(Garbage):
            initiator.read_message_2(bytes(damaged))
    assert initiator.read_message_2(reply) == b"ok"
    assert initiator.split() == responder.split()
