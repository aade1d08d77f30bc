"""Nothing costs the receiver more than a small fixed amount before a sender has logged in,
and bogus sessions never keep a real transfer out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from jetstream_server.protocol.endpoint import HandshakeGate, ReceiverEndpoint
from jetstream_server.protocol.receiver import (
    UNAUTHENTICATED_TIMEOUT_S,
    Login,
    ReceiverCore,
    RecvPhase,
)
from jetstream_server.protocol.wire import Kind, encode_plain, open_plain, parse_header
from tests.attacks import cpu_seconds, rss_bytes
from tests.conftest import PASSWORDS, ServerProcess, make_home
from tests.protocol_link import RECEIVER_KEY, make_hello

BIG = 256 * 1024 * 1024
ADDRESS = ("10.0.0.1", 5000)


def _endpoint(**limits: int) -> ReceiverEndpoint:
    """An endpoint that opens every handshake (no cookies), with ``limits``."""
    return ReceiverEndpoint(RECEIVER_KEY, gate=HandshakeGate(load_per_s=10**9), **limits)


def _open(endpoint: ReceiverEndpoint, session: int, now: float = 0.0,
          address: tuple[str, int] = ADDRESS, **hello: object) -> ReceiverCore:
    core = endpoint.receive_datagram(make_hello(session, **hello)[0],  # type: ignore[arg-type]
                                     address, now)
    assert core is not None
    return core


def test_a_hello_announcing_256_mib_of_metadata_costs_a_few_kilobytes() -> None:
    endpoint = _endpoint()
    hellos = [make_hello(i, meta_size=BIG)[0] for i in range(200)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, hello in enumerate(hellos):
        endpoint.receive_datagram(hello, (f"10.0.{i // 50}.1", 5000 + i), 0.0)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(endpoint.sessions) == 200
    assert all(core.phase is RecvPhase.LOGIN for core in endpoint.sessions.values())
    assert used / len(hellos) < 8 * 1024, used / len(hellos)


def test_a_session_that_does_not_log_in_is_forgotten_10_s_after_its_hello() -> None:
    endpoint = _endpoint()
    hello, _ = make_hello(1)
    core = endpoint.receive_datagram(hello, ADDRESS, 0.0)
    assert core is not None and core.get_timer() == UNAUTHENTICATED_TIMEOUT_S
    for t in range(1, 10):  # repeating the HELLO does not make it live longer
        assert endpoint.receive_datagram(hello, ADDRESS, float(t)) is core
    assert core.get_timer() == UNAUTHENTICATED_TIMEOUT_S
    core.handle_timer(UNAUTHENTICATED_TIMEOUT_S)
    assert core.phase is RecvPhase.CLOSED
    assert [type(e) for e in core.events] == []  # nothing to record: it never logged in


def test_a_password_is_asked_of_the_server_once_and_only_inside_the_session() -> None:
    endpoint = _endpoint()
    hello, handshake = make_hello(7)
    core = endpoint.receive_datagram(hello, ADDRESS, 0.0)
    assert core is not None and not core.events  # it waits for the password
    [reply] = core.datagrams_to_send(0.0)
    assert parse_header(reply) == (Kind.REPLY, 7)
    handshake.read_message_2(reply[5:])  # (the sender's side, to seal its AUTH)
    from jetstream_server.protocol.channel import Channel
    from jetstream_server.protocol.noise import CIPHERS

    send_key, receive_key = handshake.split()
    sender = Channel(CIPHERS["aes-256-gcm"], 7, send_key, receive_key)
    auth = sender.seal(Kind.AUTH, b"pw")
    for _ in range(3):  # an AUTH repeated while the first is checked is not asked again
        endpoint.receive_datagram(auth, ADDRESS, 0.1)
        auth = sender.seal(Kind.AUTH, b"pw")
    assert list(core.events) == [Login("alice", "pw", handshake.static.public)]
    assert core.login_pending
    core.login_decided("alice")
    answers = [parse_header(d)[0] for d in core.datagrams_to_send(0.2)]
    assert answers == [Kind.ACCEPT] and core.user == "alice"
    assert b"pw" not in auth  # (sealed)


def test_the_endpoint_forgets_the_oldest_sessions_not_logged_in_to_make_room() -> None:
    endpoint = _endpoint(max_unauthenticated=3, max_unauthenticated_per_address=2)
    a1, a2, a3 = (("10.0.0.1", port) for port in (1, 2, 3))
    for session, address in ((1, a1), (2, a2)):
        _open(endpoint, session, 0.0, address)
    _open(endpoint, 3, 1.0, a3)  # a third from 10.0.0.1
    assert sorted(endpoint.sessions) == [2, 3]
    assert [type(e).__name__ for e in endpoint.events] == ["Opened", "Opened", "Evicted",
                                                           "Opened"]
    for session, host in ((4, "10.0.0.2"), (5, "10.0.0.3")):  # the limit in all
        _open(endpoint, session, 2.0, (host, 1))
    assert sorted(endpoint.sessions) == [3, 4, 5]
    assert endpoint.stats()["unauthenticatedSessionsEvicted"] == 2
    # a datagram of a session from another address is not its session's
    assert endpoint.receive_datagram(make_hello(3)[0], ("10.0.0.9", 1), 3.0) is None
    assert endpoint.dropped["wrongSource"] == 1


def test_the_endpoint_tells_an_unknown_session_at_most_ten_times_a_second() -> None:
    endpoint = _endpoint()
    ping = b"\x69\x00\x00\x00\x4d" + os.urandom(40)  # a sealed PING of session 77
    for i in range(5):
        endpoint.receive_datagram(ping, ("10.0.0.1", 1), 0.01 * i)
    replies = endpoint.datagrams_to_send()
    assert len(replies) == 1 and replies[0][1] == ("10.0.0.1", 1)
    assert parse_header(replies[0][0]) == (Kind.UNKNOWN, 77)
    open_plain(replies[0][0])  # (its CRC is right)
    assert len(replies[0][0]) <= len(ping)  # never more than what asked for it
    endpoint.receive_datagram(ping, ("10.0.0.1", 1), 0.2)
    assert len(endpoint.datagrams_to_send()) == 1
    assert endpoint.dropped["unknownSession"] == 6


def test_under_load_a_hello_costs_a_cookie_until_its_sender_proves_its_address() -> None:
    endpoint = ReceiverEndpoint(RECEIVER_KEY, gate=HandshakeGate(load_per_s=5,
                                                                 per_address_per_s=2))
    for session in range(5):  # five handshakes in a second: the endpoint is under load
        _open(endpoint, session, 0.1, ("10.0.0.1", 1000 + session))
    hello, _ = make_hello(100)
    assert endpoint.receive_datagram(hello, ("10.0.0.2", 9), 0.2) is None
    [(answer, to)] = endpoint.datagrams_to_send()
    assert parse_header(answer) == (Kind.COOKIE, 100) and to == ("10.0.0.2", 9)
    assert len(answer) < len(hello)  # (no amplification)
    cookie = bytes(open_plain(answer))
    # the cookie is good for that address only, and opens the handshake
    stolen, _ = make_hello(101, cookie=cookie)
    assert endpoint.receive_datagram(stolen, ("10.0.0.3", 9), 0.3) is None
    assert endpoint.receive_datagram(make_hello(100, cookie=cookie)[0], ("10.0.0.2", 9),
                                     0.3) is not None
    assert endpoint.receive_datagram(make_hello(102, cookie=cookie)[0], ("10.0.0.2", 9),
                                     0.3) is not None
    # at most per_address_per_s handshakes a second from one address, even with cookies
    assert endpoint.receive_datagram(make_hello(103, cookie=cookie)[0], ("10.0.0.2", 9),
                                     0.4) is None
    assert endpoint.dropped["cookieRequired"] == 3
    # two seconds later the load is gone: no cookie needed
    assert endpoint.receive_datagram(make_hello(104)[0], ("10.0.0.4", 9), 2.5) is not None


def test_a_hello_sealed_to_another_key_is_answered_with_this_servers_key() -> None:
    endpoint = _endpoint()
    other = make_hello(9, receiver=os.urandom(32))[0]
    assert endpoint.receive_datagram(other, ADDRESS, 0.0) is None
    [(answer, _)] = endpoint.datagrams_to_send()
    assert parse_header(answer) == (Kind.KEY, 9)
    assert bytes(open_plain(answer))[1:] == RECEIVER_KEY.public
    assert endpoint.dropped["failedAuthentication"] == 1 and not endpoint.sessions
    endpoint.receive_datagram(encode_plain(Kind.KEY_REQUEST, 10, bytes(40)), ("10.0.0.7", 1),
                              0.0)
    [(answer, _)] = endpoint.datagrams_to_send()
    assert parse_header(answer) == (Kind.KEY, 10)


@pytest.mark.timeout(180)
def test_a_hello_flood_keeps_no_transfer_out_and_costs_no_memory(tmp_path: Path) -> None:
    a = ServerProcess(make_home(tmp_path / "a"))
    b = ServerProcess(make_home(tmp_path / "b"))
    flood: subprocess.Popen[bytes] | None = None
    try:
        data = os.urandom(20 * 2**20)
        (tmp_path / "a" / "sandbox" / "big.bin").write_bytes(data)
        destination = a.call("createDestination", f"--destinationAddress=127.0.0.1:"
                           f"{b.recv_port}", "--destinationUser=bob",
                           f"--destinationPassword={PASSWORDS['bob']}")
        manifest = a.call("createManifest", "--fileMappings=/big.bin:/big.bin")
        time.sleep(0.5)
        baseline, cpu_before = rss_bytes(b.proc.pid), cpu_seconds(b.proc.pid)
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.attacks", "hello-flood", "--port",
             str(b.recv_port), "--rate", "10000", "--seconds", "12", "--addresses", "32"],
            stdout=subprocess.PIPE)
        time.sleep(3)  # the flood has made its HELLOs and is sending them
        started = time.monotonic()
        transfer = a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                        f"--manifestId={manifest['manifestId']}")
        peak, first_ack = baseline, None
        while True:
            got = a.call("getTransfer", f"--transferId={transfer['transferId']}")
            peak = max(peak, rss_bytes(b.proc.pid))
            if first_ack is None and int(str(got["blocksAcked"])) > 0:
                first_ack = time.monotonic() - started
            if got["status"] != "sending" and got["status"] != "pending":
                break
            assert time.monotonic() - started < 120
            time.sleep(0.05)
        assert got["status"] == "complete", got["errorMessage"]
        assert (tmp_path / "b" / "sandbox" / "big.bin").read_bytes() == data
        assert first_ack is not None and first_ack < 10, first_ack  # (seconds, not 120)
        out, _ = flood.communicate(timeout=60)
        assert flood.returncode == 0
        sent = int(out.split()[0])
        cpu = cpu_seconds(b.proc.pid) - cpu_before
        info = b.call("getServerInfo")["receiver"]
        assert isinstance(info, dict)
        # a handshake is ~0.2 ms of CPU (120,000 of them would be 24 s): under load a
        # HELLO costs a cookie, or nothing when its session is open already
        assert info["datagramsDropped"]["cookieRequired"] > 0, info
        assert info["handshakesOpened"] < sent // 20, info
        assert peak - baseline < 64 * 2**20, (peak - baseline) / 2**20
        seconds = (int(str(got["endTime"])) - int(str(got["requestTime"]))) / 1e6
        print(f"\nflood: {sent} HELLOs, {info['handshakesOpened']} handshakes opened; the "
              f"transfer took {seconds:.2f} s from createTransfer "
              f"to complete; receiver RSS {baseline / 2**20:.0f} MiB, peak "
              f"{peak / 2**20:.0f} MiB, {cpu:.1f} s of CPU")
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        a.stop()
        b.stop()
