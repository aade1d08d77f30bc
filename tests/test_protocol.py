"""The data protocol's cores, driven through an in-memory lossy link (no sockets)."""

from __future__ import annotations

import hashlib
import zlib

import orjson
import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream_server.errors import Garbage
from jetstream_server.protocol.channel import DATA_OVERHEAD, Channel
from jetstream_server.protocol.layout import DIGEST, Layout, Slot
from jetstream_server.protocol.metadata import FileEntry, Metadata, decode_metadata, encode_metadata
from jetstream_server.protocol.noise import CIPHERS
from jetstream_server.protocol.ranges import RangeSet
from jetstream_server.protocol.receiver import Checkpoint, ReceiverCore
from jetstream_server.protocol.wire import (
    PLAIN_DATA_OVERHEAD,
    Ack,
    Hello,
    Kind,
    decode_ack,
    encode_ack,
    encode_plain,
    parse_header,
)
from tests.protocol_link import SENDER_KEY, LinkConfig, run

files_strategy = st.lists(
    st.one_of(st.none(), st.binary(max_size=20_000)), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=files_strategy, loss=st.floats(0, 0.2), duplicate=st.floats(0, 0.1),
       reorder=st.floats(0, 0.2), corrupt=st.floats(0, 0.05), seed=st.integers(0, 2**32))
def test_files_arrive_identical_through_a_hostile_link(
        files: list[bytes | None], loss: float, duplicate: float, reorder: float,
        corrupt: float, seed: int) -> None:
    outcome = run(files, LinkConfig(loss=loss, duplicate=duplicate, reorder=reorder,
                                    corrupt=corrupt, seed=seed), block_size=512)
    assert outcome.complete, (outcome.sender_error, outcome.receiver_error)
    assert outcome.files == files


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.2])
def test_retransmission_stays_bounded(loss: float) -> None:
    data = bytes(range(256)) * 4000  # ~1 MB
    outcome = run([data], LinkConfig(loss=loss, seed=7), block_size=1024)
    assert outcome.complete and outcome.files == [data]
    # every datagram carries 36 bytes of header and tag per 1024 payload bytes (3.5 %),
    # plus the handshake and metadata: the small constant overhead
    overhead = 0.05
    assert outcome.wire_bytes_sender <= (1 + 2 * loss + overhead) * len(data) + 20_000


def test_corrupted_datagrams_are_never_written() -> None:
    data = hashlib.sha256(b"x").digest() * 20_000
    outcome = run([data], LinkConfig(corrupt=0.2, seed=11), block_size=1024)
    assert outcome.corrupted_dropped > 50
    assert outcome.complete and outcome.files == [data]


def test_wrong_password_and_anonymous_are_refused_unless_allowed() -> None:
    wrong = run([b"data"], LinkConfig(), password="nope")
    assert not wrong.complete
    assert wrong.sender_error is not None and "wrong password" in wrong.sender_error
    assert wrong.files == [bytes(4)]  # nothing was accepted
    anonymous = run([b"data"], LinkConfig(), password=None)
    assert not anonymous.complete and "only from its users" in (anonymous.sender_error or "")
    allowed = run([b"data"], LinkConfig(), password=None, allow_anonymous=True)
    assert allowed.complete and allowed.files == [b"data"]
    trusted = run([b"data"], LinkConfig(), password=None, trusted=(SENDER_KEY.public,))
    assert trusted.complete and trusted.files == [b"data"]


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_either_cipher_and_no_encryption_deliver_the_same(cipher: str) -> None:
    data = bytes(range(256)) * 300
    for encrypt in (True, False):
        outcome = run([data, b"", None], LinkConfig(loss=0.02, corrupt=0.02, seed=3),
                      cipher=cipher, encrypt=encrypt)
        assert outcome.complete and outcome.files == [data, b"", None], (cipher, encrypt)


def test_a_rate_limited_sender_stays_under_its_limit() -> None:
    data = b"z" * 2_000_000
    outcome = run([data], LinkConfig(delay_s=0.005), block_size=1024,
                  rate_limit_bps=8e6)
    assert outcome.complete
    # 2 MB at 8 Mbit/s takes at least 2 s; the simulated clock is checked in
    # test_pacer_never_exceeds_its_rate below; here the bytes on the wire add up
    assert outcome.wire_bytes_sender < len(data) * 1.05


def test_pacer_never_exceeds_its_rate() -> None:
    from jetstream_server.protocol.rate import Pacer

    pacer = Pacer(8e6, now=0.0)  # 1 MB/s
    now, sent = 0.0, []
    while now < 3.0:
        if pacer.allows(1400, now):
            pacer.consume(1400)
            sent.append(now)
        else:
            now = pacer.next_time(1400, now)
    for start in [i / 10 for i in range(20)]:
        window = [t for t in sent if start <= t < start + 1.0]
        assert len(window) * 1400 <= 1_000_000 * 1.0 + 1500 * 2


def test_layout_maps_blocks_with_64_bit_offsets() -> None:
    five_gib = 5 * 1024**3
    layout = Layout(1400, 3000, [five_gib, None, 0, 10])
    assert layout.meta_blocks == 3
    blocks_big = -(-five_gib // 1400)
    first, end = layout.file_range(0)
    assert (first, end) == (3, 3 + blocks_big + 1)
    last_data = layout.locate(end - 2)
    assert last_data.offset == (blocks_big - 1) * 1400 and last_data.offset > 2**32
    assert last_data.length == five_gib - last_data.offset
    assert layout.locate(end - 1).digest
    assert layout.file_range(2) == (end, end + 1)  # a zero-byte file: its digest block
    assert layout.file_range(3) == (end + 1, end + 2)  # 10 bytes: with its digest
    assert layout.locate(end + 1) == Slot(3, 0, 10 + DIGEST.size, digest=True)
    assert layout.total_blocks == end + 1 + 1
    assert Layout(1400, 10, [1360, 1361]).data_blocks == {0: 0, 1: 1}  # 1360 + 40 fits


def test_range_set_tracks_new_subranges() -> None:
    ranges = RangeSet()
    assert ranges.add_range(10, 20) == [(10, 20)]
    assert ranges.add_range(15, 30) == [(20, 30)]
    assert ranges.add_range(0, 5) == [(0, 5)]
    assert ranges.add(5) and not ranges.add(5)
    assert ranges.ranges() == [(0, 6), (10, 30)]
    assert ranges.add_range(0, 40) == [(6, 10), (30, 40)]
    assert ranges.ranges() == [(0, 40)] and ranges.count == 40
    assert ranges.first_missing(0) == 40 and 39 in ranges and 40 not in ranges


@given(st.lists(st.integers(0, 300), max_size=300))
def test_range_set_agrees_with_a_plain_set(values: list[int]) -> None:
    ranges, plain = RangeSet(), set()
    for value in values:
        assert ranges.add(value) == (value not in plain)
        plain.add(value)
    assert ranges.count == len(plain)
    assert all((v in ranges) == (v in plain) for v in range(302))
    assert ranges.missing(0, 302) == RangeSet_missing(plain, 302)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 20)), max_size=100))
def test_range_set_adds_ranges_as_a_plain_set_would(added: list[tuple[int, int]]) -> None:
    ranges, plain = RangeSet(), set()
    for start, length in added:
        new = ranges.add_range(start, start + length)
        assert [v for s, e in new for v in range(s, e)] == sorted(
            set(range(start, start + length)) - plain)
        plain.update(range(start, start + length))
    assert ranges.count == len(plain)
    assert ranges.missing(0, 322) == RangeSet_missing(plain, 322)
    assert ranges.end == max(plain, default=-1) + 1


def RangeSet_missing(plain: set[int], end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in range(end):
        if v not in plain:
            if out and out[-1][1] == v:
                out[-1] = (out[-1][0], v + 1)
            else:
                out.append((v, v + 1))
    return out


def test_send_times_wrapping_at_32_bits_change_nothing() -> None:
    # DATA carries the low 32 bits of the sender's clock in us (wrapping every 71.6 min):
    # a transfer running across the wrap resends no more, takes no longer, and measures
    # the same round trip as one that does not
    data = bytes(range(256)) * 8000  # 2 MB, about 0.9 s on this link
    link = LinkConfig(loss=0.01, delay_s=0.01, rate_bps=20e6, seed=5, queue_bytes=50_000)
    plain = run([data], link, block_size=1024)
    wrapped = run([data], link, block_size=1024, start_s=2**32 / 1e6 - 0.3)
    assert plain.complete and plain.files == [data]
    assert wrapped.complete and wrapped.files == [data]
    assert plain.srtt_s is not None and wrapped.srtt_s is not None
    assert abs(wrapped.srtt_s - plain.srtt_s) < 0.02 * plain.srtt_s  # 36 ms if mistaken
    assert wrapped.blocks_retransmitted <= plain.blocks_retransmitted + 2
    assert wrapped.seconds <= plain.seconds * 1.001


def test_ack_round_trip_and_garbage_detection() -> None:
    base = 2**40  # block numbers are 64-bit
    ack = Ack(base, 5, 6000, 123, 456, 7, 2, 3, [(base + 5, base + 10), (base + 99, base + 2**31)],
              rate_kbps=250_000)
    key = bytes(32)
    sending = Channel(CIPHERS["aes-256-gcm"], 99, key, key)
    receiving = Channel(CIPHERS["aes-256-gcm"], 99, key, key)
    datagram = sending.seal(Kind.ACK, encode_ack(ack))
    assert parse_header(datagram) == (Kind.ACK, 99)
    broken = bytearray(datagram)
    broken[20] ^= 1
    with pytest.raises(Garbage):
        receiving.open(Kind.ACK, bytes(broken))
    assert decode_ack(receiving.open(Kind.ACK, datagram)[1]) == ack
    for junk in (b"", b"JS", b"\x00" * 64, datagram[:4]):
        with pytest.raises(Garbage):
            parse_header(junk)


def test_version_and_type_share_the_first_byte_and_other_versions_are_garbage() -> None:
    """Version 6: the first byte is the version (high 4 bits) and the type (low 4), then
    a 32-bit session id; a sealed message adds a 48-bit packet number and a 16-byte tag,
    a DATA 9 clear bytes more. A message of version 5 (0x5_), 4 (first byte 0x4_), 3
    (0x03) or 1-2 (magic 0x4A53) is refused whatever follows."""
    datagram = encode_plain(Kind.UNKNOWN, 0xDEADBEEF)
    assert datagram[:5] == bytes.fromhex("6ddeadbeef")
    assert DATA_OVERHEAD == 36  # 1436 bytes of file in a 1500-byte packet
    assert PLAIN_DATA_OVERHEAD == 18  # without encryption, as version 4
    assert parse_header(datagram) == (Kind.UNKNOWN, 0xDEADBEEF)
    for first, error in ((0x03, "bad version"), (0x47, "bad version"),
                         (0x4A, "bad version"), (0x5D, "bad version"),
                         (0x60, "unknown type"), (0x6F, "unknown type")):
        forged = bytearray(datagram)
        forged[0] = first
        with pytest.raises(Garbage, match=error):
            parse_header(bytes(forged))


def test_metadata_round_trip_and_refusal() -> None:
    meta = Metadata("ab", "/in", [FileEntry("/a b.txt", "/src/a b.txt", 5, 1, True),
                                  FileEntry("/empty", "/src/empty", None, 2, False)],
                    {"job": 1}, {"server": "x"})
    assert decode_metadata(encode_metadata(meta)) == meta
    json = zlib.decompress(encode_metadata(meta))
    assert decode_metadata(json) == meta  # as senders sent it before it was compressed
    assert decode_metadata(encode_metadata(meta), max_json=len(json)) == meta
    with pytest.raises(ValueError, match=f"over {len(json) - 1} bytes uncompressed"):
        decode_metadata(encode_metadata(meta), max_json=len(json) - 1)  # a zip bomb
    for junk in (b"[]", b"{", b'{"v": 1, "files": [[1, 2, 3, 4, 5]]}', b"x\x9c\x00",
                 zlib.compress(b"[1]")):
        with pytest.raises(ValueError):
            decode_metadata(junk)


def test_the_overwrite_rule_and_chunk_checksums_in_the_metadata() -> None:
    files = [FileEntry("/a", "/src/a", 5000, 1, False), FileEntry("/e", "/src/e", None, 2, False)]
    meta = Metadata("ab", None, files, overwrite="ifChecksumDiffers", chunk_bytes=2048,
                    sums=[bytes(range(48)), None])  # 5000 bytes: 3 chunks of 16 bytes' sum
    assert decode_metadata(encode_metadata(meta)) == meta
    plain = Metadata("ab", None, files)
    assert b"overwrite" not in zlib.decompress(encode_metadata(plain))  # (as before rules)
    body = orjson.loads(zlib.decompress(encode_metadata(meta)))
    for change, error in (({"overwrite": "sometimes"}, "unknown overwrite rule"),
                          ({"sums": ["AAAA", None]}, "do not fit their file"),
                          ({"sums": ["not base64!", None]}, "malformed chunk checksums"),
                          ({"chunkBytes": 0}, "malformed chunk checksums"),
                          ({"sums": [None]}, "malformed chunk checksums"),
                          ({"sums": None}, "without chunk checksums")):
        with pytest.raises(ValueError, match=error):
            decode_metadata(orjson.dumps({**body, **change}))


def test_a_new_session_sends_only_what_the_receiver_does_not_have() -> None:
    data = bytes(range(256)) * 4000  # 1,024,000 bytes: 1000 blocks of 1024, then a digest
    meta_blocks = 1
    kept = (meta_blocks, meta_blocks + 600)  # the first 600 data blocks are on disk
    outcome = run([data], LinkConfig(loss=0.02, seed=5), block_size=1024,
                  resume=Checkpoint([kept], {}, set()))
    assert outcome.complete and outcome.files == [data]
    assert 400 <= outcome.blocks_sent - outcome.blocks_retransmitted <= 405


def test_a_file_complete_before_the_interruption_is_not_sent_again() -> None:
    first, second = b"a" * 5000, b"b" * 5000
    digest = (blake3(first).digest(), len(first))
    # file 0: blocks 1..5 and its digest block 6, all kept and already in place
    outcome = run([first, second], LinkConfig(seed=1), block_size=1024,
                  resume=Checkpoint([(1, 7)], {0: digest}, {0}))
    assert outcome.complete and outcome.files == [first, second]
    assert outcome.blocks_sent <= 1 + 6  # metadata and the second file only


def test_acknowledgements_stay_sparse_under_loss() -> None:
    """An ACK every 16 datagrams or 5 ms, and at once only when a new gap opens: not
    one per datagram while an old gap waits for its retransmission."""
    data = bytes(range(256)) * 12_000  # ~3 MB, ~2200 blocks
    outcome = run([data], LinkConfig(loss=0.02, delay_s=0.02, seed=3), block_size=1400)
    assert outcome.complete and outcome.files == [data]
    assert outcome.datagrams_to_sender <= outcome.blocks_sent / 4


def test_random_loss_is_not_taken_for_congestion() -> None:
    """At 5% random loss behind a one-BDP tail-drop queue, the sender keeps the link
    full: file data arrives at 97% or more of what the link can carry once 5% is lost,
    and few datagrams are dropped at the queue. (Simulated time: deterministic.)"""
    data = bytes(range(256)) * 160_000  # 40 MB: the start-up is a small part of it
    rate, delay, loss, block = 20e6, 0.025, 0.05, 1024
    outcome = run([data], LinkConfig(loss=loss, delay_s=delay, rate_bps=rate, seed=3,
                                     queue_bytes=int(rate / 8 * 2 * delay)),
                  block_size=block)
    assert outcome.complete and outcome.files == [data]
    carried = rate * (1 - loss) * block / (block + DATA_OVERHEAD)  # file bits/s at best
    assert len(data) * 8 / outcome.seconds >= 0.97 * carried
    assert outcome.queue_drops <= 0.02 * outcome.blocks_sent


def test_many_small_files_keep_the_path_full() -> None:
    """A small file makes small datagrams: the window counts bytes in flight, not blocks
    (counted as full blocks, 3000 files of 100 bytes took 6.5 s here, 65 round trips)."""
    files = [bytes([i % 256]) * 100 for i in range(3000)]
    outcome = run(files, LinkConfig(delay_s=0.05, rate_bps=200e6, seed=1), block_size=8192)
    assert outcome.complete and outcome.files == files
    assert outcome.seconds < 1.0


def test_a_batch_puts_datagrams_of_one_size_together() -> None:
    """Files of a few blocks alternate full blocks, a short last one and a digest block; a
    batch (sent at one time) groups them by size, so that each size goes to the kernel in
    one call (GSO)."""
    files = [bytes([i % 256]) * 10_000 for i in range(1000)]
    outcome = run(files, LinkConfig(delay_s=0.0005, rate_bps=1e9, seed=1), block_size=8192)
    assert outcome.complete and outcome.files == files
    assert outcome.mixed_batches > 100  # (the case arises)
    assert outcome.unsorted_batches == 0


def test_the_metadata_is_sent_at_a_rising_rate() -> None:
    """The metadata of 10,000 files (11 blocks of 64 KiB) goes out as start-up raises
    the rate, not at the 20 Mbit/s of the first round trip (0.15 s before, 0.075 now)."""
    files = [bytes([i % 256]) * 100 for i in range(10_000)]
    outcome = run(files, LinkConfig(delay_s=0.0005, rate_bps=1e9, seed=1),
                  block_size=64 * 1024)
    assert outcome.complete and outcome.files == files
    assert outcome.seconds < 0.11


def test_start_up_ends_when_a_queue_builds() -> None:
    """On a short path (0.3 ms round trip) with a small bottleneck buffer (64 KiB), the
    start-up ends one round after the estimate stops growing when the round trip shows a
    queue building, and paces at its estimate for the rest of a round that shows one,
    and losses, before: waiting for three such rounds dropped 605 datagrams here, ending
    at the first 274, holding too 95."""
    data = bytes(range(256)) * 40_000  # 10 MB
    rate = 100e6
    outcome = run([data], LinkConfig(delay_s=0.00015, rate_bps=rate, seed=3,
                                     queue_bytes=64 * 1024), block_size=1440)
    assert outcome.complete and outcome.files == [data]
    assert outcome.queue_drops <= 120
    assert len(data) * 8 / outcome.seconds >= 0.9 * rate


def test_start_up_holds_for_a_round_only_when_a_queue_comes_with_losses() -> None:
    """Before the estimate has stopped growing, a round trip showing a queue does not
    hold start-up back by itself (a busy receiver shows one too); with losses in the
    same round it paces at the estimate until the round ends, then doubles again."""
    from jetstream_server.protocol.rate import STARTUP_GAIN, RateController

    controller = RateController()
    controller.on_rtt(0.001, 0.0)
    controller.on_delivery(0.0, 0, 0.0, sent=0, lost=0)  # the first round begins
    for step in range(1, 6):  # a queue builds: the round trip 8 ms above its minimum
        controller.on_rtt(0.009, step * 0.0005)
    controller.on_delivery(0.003, 30_000, 0.003, sent=30, lost=0)
    assert controller.startup and controller.gain == STARTUP_GAIN
    controller.on_delivery(0.004, 40_000, 0.004, sent=40, lost=2)
    assert controller.startup and controller.gain == 1.0
    controller.on_delivery(0.011, 110_000, 0.011, sent=110, lost=2)  # the next round
    assert controller.startup and controller.gain == STARTUP_GAIN


def test_a_checkpoint_without_some_files_and_what_is_durable_after_a_failure() -> None:
    layout = Layout(256, 256, [600, None, 100, 2560])  # meta 0; f0 1-4; f2 5; f3 6-16
    assert [layout.file_range(f) for f in (0, 2, 3)] == [(1, 5), (5, 6), (6, 17)]
    checkpoint = Checkpoint([(0, 8), (10, 12)], {0: (b"d", 600), 2: (b"e", 100)}, {2})
    cut = checkpoint.without(layout, {0, 3})
    assert cut.ranges == [(0, 1), (5, 6)]
    assert cut.digests == {2: (b"e", 100)} and cut.committed == {2}
    key = bytes(32)
    core = ReceiverCore(1, Hello(bytes(16), 256, 256, 1, "", flags=2), bytes(32),
                        Channel(CIPHERS["aes-256-gcm"], 1, key, key), b"reply", 0.0)
    core.layout = layout
    core.file_committed(3)  # in place after the checkpoint was made
    durable = core.durable(Checkpoint([(0, 3)], {0: (b"d", 600)}, set()))
    assert durable.ranges == [(0, 3), (6, 17)]
    assert durable.committed == {3} and durable.digests == {0: (b"d", 600)}


def test_the_key_probe_asks_three_times_and_keeps_the_key_once_answered() -> None:
    from jetstream_server.protocol.sender import KeyProbe
    from jetstream_server.protocol.wire import KEY_ENCRYPTS, encode_key

    silent = KeyProbe(now=0.0, tries=3, wait_s=1.0)
    sent = len(silent.datagrams_to_send(0.0))
    for t in (1.0, 2.0, 3.0):
        assert silent.get_timer() == t
        silent.handle_timer(t)
        sent += len(silent.datagrams_to_send(t))
    assert sent == 3 and silent.finished and silent.key is None
    asked = KeyProbe(now=0.0)
    [request] = asked.datagrams_to_send(0.0)
    assert parse_header(request) == (Kind.KEY_REQUEST, asked.session)
    key = SENDER_KEY.public
    asked.receive_datagram(encode_key(asked.session + 1, key, KEY_ENCRYPTS), 0.1)  # not its
    assert not asked.finished
    damaged = bytearray(encode_key(asked.session, key, KEY_ENCRYPTS))
    damaged[9] ^= 1
    asked.receive_datagram(bytes(damaged), 0.15)  # its CRC catches an accident
    assert not asked.finished
    asked.receive_datagram(encode_key(asked.session, key, KEY_ENCRYPTS), 0.2)
    assert asked.finished and asked.key == key
    assert asked.datagrams_to_send(0.2) == [] and asked.get_timer() is None
