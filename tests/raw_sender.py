"""A sender built from the protocol core alone, for sending what a real server never
would (hostile paths, forged metadata) at a real receiving server over real UDP."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable

from jetstream_server.protocol.layout import Layout
from jetstream_server.protocol.metadata import FileEntry, Metadata, encode_metadata
from jetstream_server.protocol.noise import CIPHERS, KeyPair
from jetstream_server.protocol.sender import SenderCore
from jetstream_server.protocol.wire import Hello, new_session_id
from tests.protocol_link import MemorySource


async def raw_send(port: int, files: list[tuple[str, bytes | None]], *,
                   destination_path: str | None = None, user: str = "bob",
                   password: str | None = "bob-pw", rate_bps: float | None = None,
                   timeout_s: float = 30.0, block_size: int = 1400,
                   forge: Callable[[str], bytes] | None = None,
                   static: KeyPair | None = None, remote_key: bytes | None = None,
                   encrypt: bool = True) -> SenderCore:
    """``forge``: makes the metadata sent instead of the files' (a forged sender's), given
    the transfer id. ``static``: the sender's key (a new one by default); ``remote_key``:
    the receiver's (None: learned as a first contact does)."""
    transfer_id = secrets.token_bytes(16)
    entries = [FileEntry(path, path, None if data is None else len(data), 1_000_000, False)
               for path, data in files]
    meta = forge(transfer_id.hex()) if forge is not None else encode_metadata(
        Metadata(transfer_id.hex(), destination_path, entries))
    layout = Layout(block_size, len(meta), [e.size for e in entries])
    core = SenderCore(new_session_id(), Hello(transfer_id, block_size, len(meta),
                                              layout.meta_blocks, user),
                      meta, layout, MemorySource([d for _, d in files]), time.monotonic(),
                      static=static or KeyPair.generate(), remote_key=remote_key,
                      cipher=CIPHERS["aes-256-gcm"], password=password,
                      encrypt_data=encrypt, rate_limit_bps=rate_bps)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    try:
        async with asyncio.timeout(timeout_s):
            while not core.finished:
                now = time.monotonic()
                while True:
                    try:
                        core.receive_datagram(sock.recv(70000), now)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                timer = core.get_timer()
                if timer is not None and now >= timer:
                    core.handle_timer(now)
                for datagram in core.datagrams_to_send(now):
                    sock.send(datagram)
                await asyncio.sleep(0.001)
    finally:
        for datagram in core.close_datagrams("done"):
            sock.send(datagram)
        sock.close()
    return core
