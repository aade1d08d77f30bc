"""Two protocol cores joined by an in-memory link with seeded loss, duplication,
reordering and corruption, on a simulated clock. No sockets, no disk."""

from __future__ import annotations

import heapq
import random
import secrets
from dataclasses import dataclass, field

from blake3 import blake3

from jetstream_server.protocol.endpoint import ReceiverEndpoint
from jetstream_server.protocol.layout import DIGEST, Layout, Slot
from jetstream_server.protocol.metadata import FileEntry, Metadata, encode_metadata
from jetstream_server.protocol.noise import CIPHERS, Handshake, KeyPair
from jetstream_server.protocol.rate import RatePolicy
from jetstream_server.protocol.receiver import (
    Checkpoint,
    Closed,
    FileReady,
    Login,
    MetadataReady,
    ReceiverCore,
)
from jetstream_server.protocol.sender import SenderCore
from jetstream_server.protocol.wire import (
    HELLO_ENCRYPT,
    HELLO_PASSWORD,
    Hello,
    Kind,
    encode_hello,
    encode_hello_payload,
    hello_prologue,
    parse_header,
)

#: Where the simulated sender's datagrams come from.
SENDER_ADDRESS = ("192.0.2.1", 40000)
#: The two servers' keys (made once: a key pair costs nothing to use, but tests make many).
RECEIVER_KEY = KeyPair.generate()
SENDER_KEY = KeyPair.generate()


class MemorySource:
    def __init__(self, files: list[bytes | None]) -> None:
        self.files = files

    def block(self, slot: Slot) -> bytes | None:
        data = self.files[slot.file]
        assert data is not None
        if slot.digest:  # (after the whole file when it is small)
            return data[:slot.length - DIGEST.size] + DIGEST.pack(blake3(data).digest(),
                                                                  len(data))
        return data[slot.offset:slot.offset + slot.length]


class MemoryLogins:
    """Decides logins as the server does, from a dict of passwords (no slow hash)."""

    def __init__(self, users: dict[str, str], allow_anonymous: bool = False,
                 trusted: tuple[bytes, ...] = ()) -> None:
        self.users = users
        self.allow_anonymous = allow_anonymous
        self.trusted = trusted

    def decide(self, login: Login) -> tuple[str | None, str]:
        if login.password is not None:
            if self.users.get(login.user) == login.password:
                return login.user, ""
            return None, f"The receiving server refused user {login.user!r}: wrong password."
        if login.client_key in self.trusted:
            return login.user, ""
        if self.allow_anonymous:
            return "anonymous", ""
        return None, "The receiving server accepts transfers only from its users."


@dataclass
class LinkConfig:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_s: float = 0.01
    rate_bps: float = 200e6  # the link's own speed
    seed: int = 0
    #: a tail-drop bottleneck queue of this many bytes (None: unbounded)
    queue_bytes: int | None = None


@dataclass
class Outcome:
    files: list[bytes | None]
    complete: bool
    sender_error: str | None
    receiver_error: str | None
    payload_bytes: int
    wire_bytes_sender: int
    blocks_sent: int
    blocks_retransmitted: int
    corrupted_dropped: int = 0
    #: datagrams each end dropped (failed authentication, replays, garbage)
    dropped_by_sender: int = 0
    dropped_by_receiver: int = 0
    datagrams_to_sender: int = 0
    events: list[object] = field(default_factory=list)
    seconds: float = 0.0  # simulated time until the sender finished
    queue_drops: int = 0  # datagrams to the receiver dropped at a full bottleneck queue
    srtt_s: float | None = None  # the sender's smoothed round trip at the end
    #: batches of the sender with DATA datagrams of more than one size, and those of them
    #: where a smaller one came before a larger one (equal sizes go together: GSO)
    mixed_batches: int = 0
    unsorted_batches: int = 0


def run(files: list[bytes | None], link: LinkConfig, *, block_size: int = 1024,
        user: str = "alice", password: str | None = "pw", users: dict[str, str] | None = None,
        allow_anonymous: bool = False, trusted: tuple[bytes, ...] = (),
        rate_limit_bps: float | None = None, max_time_s: float = 600.0,
        resume: Checkpoint | None = None, start_s: float = 0.0,
        cipher: str = "aes-256-gcm", encrypt: bool = True,
        policy: RatePolicy = RatePolicy.FAIR) -> Outcome:
    """``resume``: what the receiver kept from an earlier session (its files already
    hold the data of those blocks). ``start_s``: both clocks' reading at the start.
    ``password`` None: the sender has no credentials (``trusted`` keys, or anonymous)."""
    rng = random.Random(link.seed)
    entries = [FileEntry(f"/f{i}", f"/src{i}", None if d is None else len(d), 0, False)
               for i, d in enumerate(files)]
    meta = encode_metadata(Metadata("ab" * 16, None, entries))
    layout = Layout(block_size, len(meta), [e.size for e in entries])
    session = rng.getrandbits(32)
    hello = Hello(bytes.fromhex("ab" * 16), block_size, len(meta), layout.meta_blocks, user)
    now = start_s
    sender = SenderCore(session, hello, meta, layout, MemorySource(files), now,
                        static=SENDER_KEY, remote_key=RECEIVER_KEY.public,
                        cipher=CIPHERS[cipher], password=password, encrypt_data=encrypt,
                        rate_limit_bps=rate_limit_bps, policy=policy)
    logins = MemoryLogins(users if users is not None else {"alice": "pw"}, allow_anonymous,
                          trusted)
    endpoint = ReceiverEndpoint(RECEIVER_KEY, encrypt)  # the very routing the server runs
    receiver: ReceiverCore | None = None
    logged_in = False
    received: list[bytearray | None] = [
        None if d is None else bytearray(d) if resume is not None else bytearray(len(d))
        for d in files]
    queue: list[tuple[float, int, str, bytes]] = []
    seq = 0
    link_free = {"s": start_s, "r": start_s}
    queue_drops = {"s": 0, "r": 0}
    corrupted = 0
    events: list[object] = []

    def transmit(datagrams: list[bytes] | list[bytes | bytearray], to: str) -> None:
        nonlocal seq, corrupted
        direction = "s" if to == "r" else "r"
        for datagram in datagrams:
            data = bytes(datagram)
            start = max(now, link_free[direction])
            if link.queue_bytes is not None and \
                    (start - now) * link.rate_bps / 8 + len(data) > link.queue_bytes:
                queue_drops[direction] += 1
                continue  # the bottleneck queue is full
            link_free[direction] = start + len(data) * 8 / link.rate_bps
            if rng.random() < link.loss:
                continue
            copies = 2 if rng.random() < link.duplicate else 1
            for _ in range(copies):
                arrive = link_free[direction] + link.delay_s
                if rng.random() < link.reorder:
                    arrive += rng.uniform(0, link.delay_s)
                payload = data
                if rng.random() < link.corrupt:
                    flipped = bytearray(payload)
                    bit = rng.randrange(len(flipped) * 8)
                    flipped[bit // 8] ^= 1 << (bit % 8)
                    payload = bytes(flipped)
                    corrupted += 1
                seq += 1
                heapq.heappush(queue, (arrive, seq, to, payload))

    def receiver_step() -> None:
        assert receiver is not None
        for file, offset, data in receiver.writes:
            target = received[file]
            assert target is not None
            target[offset:offset + len(data)] = data
        receiver.writes.clear()
        while receiver.events:
            event = receiver.events.popleft()
            events.append(event)
            if isinstance(event, Login):
                receiver.login_decided(*logins.decide(event))
            elif isinstance(event, MetadataReady):
                receiver.metadata_accepted(event.layout, resume)
            elif isinstance(event, FileReady):
                data = bytes(received[event.file] or b"")
                if blake3(data).digest() == event.digest:
                    receiver.file_committed(event.file)
                else:
                    receiver.fail(f"checksum mismatch in file {event.file}")
            elif isinstance(event, Closed):
                pass
        transmit(receiver.datagrams_to_send(now), "s")

    mixed = unsorted = 0

    def send_batch() -> None:
        nonlocal mixed, unsorted
        batch = sender.datagrams_to_send(now)
        sizes = [len(d) for d in batch if parse_header(d)[0] is Kind.DATA]
        if len(set(sizes)) > 1:
            mixed += 1
            unsorted += sizes != sorted(sizes, reverse=True)
        transmit(batch, "r")

    send_batch()
    while now < start_s + max_time_s and not sender.finished:
        candidates = [t for t in (sender.get_timer(), sender.next_send_time(now),
                                  receiver.get_timer() if receiver else None) if t is not None]
        if queue:
            candidates.append(queue[0][0])
        if not candidates:
            break
        now = max(now, min(candidates))
        while queue and queue[0][0] <= now:
            _, _, to, data = heapq.heappop(queue)
            if to == "s":
                sender.receive_datagram(data, now)
                continue
            core = endpoint.receive_datagram(data, SENDER_ADDRESS, now)
            transmit([reply for reply, _ in endpoint.datagrams_to_send()], "s")
            if core is None:
                continue
            receiver = core
            if not logged_in and core.user is not None:
                logged_in = endpoint.logged_in(core)
            receiver_step()
        timer = sender.get_timer()
        if timer is not None and now >= timer:
            sender.handle_timer(now)
        if receiver is not None:
            rtimer = receiver.get_timer()
            if rtimer is not None and now >= rtimer:
                receiver.handle_timer(now)
            receiver_step()
        send_batch()
    return Outcome(
        files=[None if r is None else bytes(r) for r in received],
        complete=sender.phase.value == "done",
        sender_error=sender.error,
        receiver_error=receiver.error if receiver else None,
        payload_bytes=sum(len(d) for d in files if d is not None),
        wire_bytes_sender=sender.bytes_sent,
        blocks_sent=sender.blocks_sent,
        blocks_retransmitted=sender.blocks_retransmitted,
        corrupted_dropped=corrupted,
        dropped_by_sender=sum(sender.dropped.values()),
        dropped_by_receiver=sum(endpoint.dropped.values()),
        datagrams_to_sender=sender.packets_recv,
        events=events,
        seconds=now - start_s,
        queue_drops=queue_drops["s"],
        srtt_s=sender.srtt_s,
        mixed_batches=mixed,
        unsorted_batches=unsorted,
    )


def make_hello(session: int, receiver: bytes = RECEIVER_KEY.public, *,
               sender: KeyPair = SENDER_KEY, user: str = "alice", password: bool = True,
               meta_size: int = 10_000, block_size: int = 1400, cookie: bytes = bytes(16),
               cipher: str = "aes-256-gcm") -> tuple[bytes, Handshake]:
    """A HELLO as a sending server makes it, sealed to ``receiver``'s key; and the
    handshake, to read the REPLY with."""
    suite = CIPHERS[cipher]
    handshake = Handshake(suite, sender, hello_prologue(session, suite.code),
                          remote_static=receiver)
    hello = Hello(secrets.token_bytes(16), block_size, meta_size,
                  -(-meta_size // block_size), user,
                  (HELLO_PASSWORD if password else 0) | HELLO_ENCRYPT)
    message = handshake.write_message_1(encode_hello_payload(hello))
    return encode_hello(session, suite.code, cookie, message), handshake
