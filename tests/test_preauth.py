"""Nothing costs the receiver more than a small fixed amount before a sender has logged in,
and bogus sessions never keep a real transfer out."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from jetstream_server.protocol.auth import auth_proof
from jetstream_server.protocol.endpoint import ReceiverEndpoint
from jetstream_server.protocol.receiver import (
    UNAUTHENTICATED_TIMEOUT_S,
    ReceiverCore,
    RecvPhase,
)
from jetstream_server.protocol.wire import (
    HEADER,
    Hello,
    Kind,
    decode_challenge,
    encode,
    encode_hello,
    parse_header,
)
from tests.attacks import rss_bytes
from tests.conftest import PASSWORDS, ServerProcess, make_home
from tests.protocol_link import MemoryAuthorizer

AUTHORIZER = MemoryAuthorizer({"alice": "pw"})
BIG = 256 * 1024 * 1024


def _hello(meta_size: int = BIG, user: str = "alice", block: int = 1400) -> Hello:
    return Hello(secrets.token_bytes(16), block, meta_size, -(-meta_size // block), user)


def test_a_hello_announcing_256_mib_of_metadata_costs_a_few_kilobytes() -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cores = [ReceiverCore(i, _hello(), AUTHORIZER, 0.0, ("10.0.0.1", 5000))
             for i in range(200)]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert all(core.phase is RecvPhase.CHALLENGED for core in cores)
    assert used / len(cores) < 8 * 1024, used / len(cores)


def test_a_session_that_does_not_log_in_is_forgotten_10_s_after_its_hello() -> None:
    core = ReceiverCore(1, _hello(), AUTHORIZER, 0.0, ("10.0.0.1", 5000))
    assert core.get_timer() == UNAUTHENTICATED_TIMEOUT_S
    for t in range(1, 10):  # repeating the HELLO does not make it live longer
        core.receive(Kind.HELLO, memoryview(b""), 60, float(t))
    assert core.get_timer() == UNAUTHENTICATED_TIMEOUT_S
    core.handle_timer(UNAUTHENTICATED_TIMEOUT_S)
    assert core.phase is RecvPhase.CLOSED
    assert not core.events  # nothing to record: it never logged in


def _proof(core: ReceiverCore, password: str, now: float) -> bytes:
    challenges = [d for d in core.datagrams_to_send(now)
                  if parse_header(d)[0] is Kind.CHALLENGE]
    challenge = decode_challenge(memoryview(challenges[0])[HEADER.size:])
    verifier = hashlib.scrypt(password.encode(), salt=challenge.salt, n=1 << challenge.log2_n,
                              r=challenge.r, p=challenge.p, maxmem=2**26, dklen=32)
    return auth_proof(verifier, challenge.nonce, core.session, core.hello.transfer_id)


def test_a_proof_waits_its_turn_in_the_throttle_then_is_checked() -> None:
    authorizer = MemoryAuthorizer({"alice": "pw"})
    authorizer.throttle.end("10.0.0.1", "alice", ok=False, now=0.0)  # a failure just now
    core = ReceiverCore(7, _hello(10_000), authorizer, 0.1, ("10.0.0.1", 5000))
    proof = _proof(core, "pw", 0.1)
    core.receive(Kind.AUTH, memoryview(proof), 41, 0.1)
    assert core.auth_waiting and core.phase is RecvPhase.CHALLENGED
    assert core.get_timer() == pytest.approx(0.25)
    core.handle_timer(0.2)
    assert core.auth_waiting
    core.handle_timer(0.25)
    assert not core.auth_waiting and core.phase is RecvPhase.METADATA
    assert any(parse_header(d)[0] is Kind.ACCEPT for d in core.datagrams_to_send(0.25))


def test_a_wrong_proof_fails_and_counts_against_the_address_and_the_name() -> None:
    authorizer = MemoryAuthorizer({"alice": "pw"})
    core = ReceiverCore(8, _hello(10_000), authorizer, 0.0, ("10.0.0.1", 5000))
    _proof(core, "pw", 0.0)
    core.receive(Kind.AUTH, memoryview(b"x" * 32), 41, 0.0)
    assert core.phase is RecvPhase.FAILED
    assert authorizer.wait_s("bob", "10.0.0.1", 0.0) == 0.25
    assert authorizer.wait_s("alice", "10.0.0.9", 0.0) == 0.25




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
        baseline = rss_bytes(b.proc.pid)
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.attacks", "hello-flood", "--port",
             str(b.recv_port), "--rate", "10000", "--seconds", "12", "--addresses", "32"],
            stdout=subprocess.PIPE)
        time.sleep(2)  # the flood has filled every limit
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
        out, _ = flood.communicate(timeout=30)
        assert flood.returncode == 0
        sent = int(out.split()[0])
        info = b.call("getServerInfo")["receiver"]
        assert isinstance(info, dict)
        assert info["unauthenticatedSessionsEvicted"] > sent // 2  # the limits were hit
        assert peak - baseline < 64 * 2**20, (peak - baseline) / 2**20
        seconds = (int(str(got["endTime"])) - int(str(got["requestTime"]))) / 1e6
        print(f"\nflood: {sent} HELLOs; the transfer took {seconds:.2f} s from createTransfer "
              f"to complete; receiver RSS {baseline / 2**20:.0f} MiB, peak "
              f"{peak / 2**20:.0f} MiB")
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        a.stop()
        b.stop()


def test_the_endpoint_forgets_the_oldest_sessions_not_logged_in_to_make_room() -> None:
    endpoint = ReceiverEndpoint(AUTHORIZER, max_unauthenticated=3,
                                max_unauthenticated_per_address=2)
    hello = _hello(10_000)
    a1, a2, a3 = (("10.0.0.1", port) for port in (1, 2, 3))
    for session, address in ((1, a1), (2, a2)):
        assert endpoint.receive_datagram(encode_hello(session, hello), address, 0.0)
    endpoint.receive_datagram(encode_hello(3, hello), a3, 1.0)  # a third from 10.0.0.1
    assert sorted(endpoint.sessions) == [2, 3]
    assert [type(e).__name__ for e in endpoint.events] == ["Opened", "Opened", "Evicted",
                                                           "Opened"]
    for session, host in ((4, "10.0.0.2"), (5, "10.0.0.3")):  # the limit in all
        endpoint.receive_datagram(encode_hello(session, hello), (host, 1), 2.0)
    assert sorted(endpoint.sessions) == [3, 4, 5]
    assert endpoint.stats()["unauthenticatedSessionsEvicted"] == 2
    # a datagram of a session from another address is not its session's
    assert endpoint.receive_datagram(encode(Kind.PING, 3), ("10.0.0.9", 1), 3.0) is None
    assert endpoint.dropped["wrongSource"] == 1


def test_the_endpoint_tells_an_unknown_session_at_most_ten_times_a_second() -> None:
    endpoint = ReceiverEndpoint(AUTHORIZER)
    for i in range(5):
        endpoint.receive_datagram(encode(Kind.PING, 77), ("10.0.0.1", 1), 0.01 * i)
    replies = endpoint.datagrams_to_send()
    assert len(replies) == 1 and replies[0][1] == ("10.0.0.1", 1)
    assert parse_header(replies[0][0]) == (Kind.ERROR, 77)
    endpoint.receive_datagram(encode(Kind.PING, 77), ("10.0.0.1", 1), 0.2)
    assert len(endpoint.datagrams_to_send()) == 1
    assert endpoint.dropped["unknownSession"] == 6
