"""An attacker on the path between two servers, as a process of its own: a UDP and TCP
relay that records every byte, and may flip bits, replay old datagrams, inject forged
ones, rewrite file data, and forge the receiver's final acknowledgement.

    python -m tests.relay --target PORT [--then PORT] [--record FILE] [--flip 0.02]
        [--replay 0.02] [--inject 0.02] [--rewrite 0.02] [--forge-complete 0.2]
        [--max-flips N] [--seed N]

It prints the port it listens on (UDP and TCP, the same number) and relays what arrives
to 127.0.0.1:TARGET, and the answers back (UDP to THEN after a SIGUSR1: another server
taking the target's place). The recording is a sequence of ``direction
(u8: 0 to the target, 1 back), length (u32), bytes``. Only loopback is used.
"""

from __future__ import annotations

import argparse
import random
import selectors
import signal
import socket
import struct
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["read_recording"]

_RECORD = struct.Struct("!BI")
#: Where an ACK's flags byte lies in a sealed ACK (header 5, packet number 6, then the
#: body: cum, packets, bytes, recv ts, echo ts (8 each), echo delay (4), committed (8)).
_ACK_FLAGS_AT = 5 + 6 + 8 * 5 + 4 + 8
_ACK_COMPLETE = 2
_DATA, _ACK = 6, 7
_CLEAR_DATA = 5 + 6 + 9  # a sealed DATA's header, packet number and clear fields


def read_recording(path: Path) -> list[tuple[int, bytes]]:
    """The (direction, bytes) a relay recorded."""
    data = path.read_bytes()
    out, offset = [], 0
    while offset < len(data):
        direction, size = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        out.append((direction, data[offset:offset + size]))
        offset += size
    return out


class Attacker:
    """What the relay does to each message (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.random = random.Random(args.seed)
        self.history: tuple[list[bytes], list[bytes]] = ([], [])
        self.lock = threading.Lock()
        self.record: BinaryIO | None = open(args.record, "ab") if args.record else None
        self.flips = 0  # (on TCP, each costs the session: at most --max-flips)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.random.random() < rate

    def datagram(self, data: bytes, direction: int) -> list[bytes]:
        """What to send on instead of ``data`` (a datagram going ``direction``)."""
        with self.lock:
            if self.record is not None:
                self.record.write(_RECORD.pack(direction, len(data)) + data)
                self.record.flush()
            args, out = self.args, [data]
            kind = data[0] & 0x0F if data else 0
            if self._chance(args.flip):
                flipped = bytearray(data)
                bit = self.random.randrange(len(flipped) * 8)
                flipped[bit // 8] ^= 1 << bit % 8
                out = [bytes(flipped)]
            if kind == _DATA and len(data) > _CLEAR_DATA + 16 and self._chance(args.rewrite):
                # change the file's bytes (a stream cipher's ciphertext XORed: what was a
                # CRC-protected plaintext datagram's attack before encryption)
                rewritten = bytearray(data)
                for i in range(_CLEAR_DATA, len(rewritten) - 16, 7):
                    rewritten[i] ^= 0x5A
                out = [bytes(rewritten)]
            if direction == 1 and kind == _ACK and len(data) > _ACK_FLAGS_AT and \
                    self._chance(args.forge_complete):
                forged = bytearray(data)
                forged[_ACK_FLAGS_AT] ^= _ACK_COMPLETE  # "every file is in place"
                out.insert(0, bytes(forged))
            history = self.history[direction]
            if history and self._chance(args.replay):
                out.append(history[self.random.randrange(len(history))])
            if len(data) >= 5 and self._chance(args.inject):
                out.append(bytes([0x60 | _DATA]) + data[1:5] + self.random.randbytes(
                    self.random.randrange(6, 1500)))
            if len(history) < 5000:
                history.append(data)
            return out

    def chunk(self, data: bytes, direction: int) -> bytes:
        """What to send on instead of a TCP chunk (bits flipped past the 4-byte preface)."""
        with self.lock:
            if self.record is not None:
                self.record.write(_RECORD.pack(direction, len(data)) + data)
                self.record.flush()
            if len(data) > 64 and self.flips < self.args.max_flips and \
                    self._chance(self.args.flip):
                self.flips += 1
                flipped = bytearray(data)
                bit = self.random.randrange(32 * 8, len(flipped) * 8)
                flipped[bit // 8] ^= 1 << bit % 8
                return bytes(flipped)
            return data


def _udp(attacker: Attacker, listen: socket.socket, targets: list[int]) -> None:
    """Relay datagrams to ``targets[0]`` (SIGUSR1 moves on to the next one)."""
    selector = selectors.DefaultSelector()
    selector.register(listen, selectors.EVENT_READ, None)
    upstream: dict[tuple[str, int], socket.socket] = {}
    switched = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: switched.set())
    while True:
        if switched.is_set():  # from now on, to the next target
            switched.clear()
            targets.pop(0)
            for out in upstream.values():
                selector.unregister(out)
                out.close()
            upstream.clear()
        for key, _ in selector.select(0.1):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data, source = sock.recvfrom(70000)
            except OSError:
                continue
            if key.data is None:  # from a sender: on to the target
                out = upstream.get(source)
                if out is None:
                    out = upstream[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    out.connect(("127.0.0.1", targets[0]))
                    selector.register(out, selectors.EVENT_READ, source)
                for datagram in attacker.datagram(data, 0):
                    try:
                        out.send(datagram)
                    except OSError:
                        pass
            else:  # from the target: back to its sender
                for datagram in attacker.datagram(data, 1):
                    listen.sendto(datagram, key.data)


def _pipe(attacker: Attacker, source: socket.socket, sink: socket.socket,
          direction: int) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(attacker.chunk(data, direction))
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _tcp(attacker: Attacker, listen: socket.socket, target: int) -> None:
    while True:
        client, _ = listen.accept()
        try:
            server = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            continue
        for source, sink, direction in ((client, server, 0), (server, client, 1)):
            threading.Thread(target=_pipe, args=(attacker, source, sink, direction),
                             daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--then", type=int, help="where UDP goes after a SIGUSR1")
    parser.add_argument("--record")
    for rate in ("flip", "replay", "inject", "rewrite", "forge-complete"):
        parser.add_argument(f"--{rate}", type=float, default=0.0)
    parser.add_argument("--max-flips", type=int, default=10**9,
                        help="bits flipped in TCP streams at most")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    attacker = Attacker(args)
    while True:  # a port number free for both UDP and TCP
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
            break
        except OSError:
            udp.close()
            tcp.close()
    tcp.listen(64)
    threading.Thread(target=_tcp, args=(attacker, tcp, args.target), daemon=True).start()
    print(port, flush=True)
    _udp(attacker, udp, [args.target] + ([args.then] if args.then else []))


if __name__ == "__main__":
    main()
