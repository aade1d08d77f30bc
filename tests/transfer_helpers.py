"""Helpers for transfer tests: source trees, waiting for a transfer, comparing trees."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

from jetstream_server.client import AsyncClient

TERMINAL = ("complete", "error", "cancelled")


def make_tree(root: Path, small_files: int = 50, big_bytes: int = 0, seed: int = 1) -> None:
    """Files with spaces and non-ASCII names, empty files and folders, executables."""
    rng = random.Random(seed)
    (root / "sub dir" / "ünïcode").mkdir(parents=True)
    (root / "empty folder").mkdir()
    (root / "zero.bin").write_bytes(b"")
    run = root / "run me.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    os.chmod(run, 0o755)
    for i in range(small_files):
        folder = root / "sub dir" / f"d{i % 20}"
        folder.mkdir(exist_ok=True)
        (folder / f"file {i} é.txt").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    if big_bytes:
        with open(root / "big.bin", "wb") as stream:
            remaining = big_bytes
            while remaining:
                chunk = min(remaining, 8 * 1024 * 1024)
                stream.write(rng.randbytes(chunk))
                remaining -= chunk
    os.utime(root / "zero.bin", ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))


def tree_listing(root: Path) -> dict[str, tuple[str, bytes | None, bool, int]]:
    """relative path -> (kind, content, executable, mtime in µs), for comparing trees."""
    out: dict[str, tuple[str, bytes | None, bool, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        relative = str(path.relative_to(root))
        if path.is_dir():
            if not any(path.iterdir()):
                out[relative] = ("empty dir", None, False, 0)
        else:
            out[relative] = ("file", path.read_bytes(), bool(st.st_mode & 0o111),
                             st.st_mtime_ns // 1000)
    return out


async def wait_transfer(client: AsyncClient, transfer_id: str, timeout_s: float = 120,
                        until: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            transfer: dict[str, Any] = await client.call("getTransfer", transferId=transfer_id)
            if transfer["status"] in until:
                return transfer
            await asyncio.sleep(0.05)


async def send(client: AsyncClient, destination_id: str, mappings: dict[str, str],
               **params: Any) -> dict[str, Any]:
    """createManifest, wait for it, createTransfer; return the transfer."""
    manifest = await client.call("createManifest", fileMappings=mappings)
    done = await client.wait_for_manifest(manifest["manifestId"])
    assert done["status"] == "complete", done
    transfer: dict[str, Any] = await client.call(
        "createTransfer", destinationId=destination_id, manifestId=manifest["manifestId"],
        **params)
    return transfer


def leftovers(root: Path) -> list[Path]:
    """Temporary files a transfer may have left behind."""
    return sorted(p for p in root.rglob(".jetstream-*") if p.is_file())
