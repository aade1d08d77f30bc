"""The transfer metadata the sender sends first: JSON, zlib-compressed, in the metadata
blocks (a file list compresses well, and the metadata goes before the rate has grown)."""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["DEFAULT_CHECKPOINT_S", "MAX_FILES", "MAX_USER_DATA_BYTES", "OVERWRITE_RULES",
           "SUM_BYTES", "FileEntry", "Metadata", "decode_metadata", "encode_metadata"]

#: How often, by default, the receiver makes what it received durable (``checkpointSeconds``).
DEFAULT_CHECKPOINT_S = 30
#: Most bytes of metadata JSON a receiver decompresses.
MAX_METADATA_JSON = 256 * 1024 * 1024
#: Most files (and empty folders) one transfer carries: a manifest's limit.
MAX_FILES = 1_000_000
#: Largest ``userData`` object, serialised, in bytes (an API limit too).
MAX_USER_DATA_BYTES = 64 * 1024
#: What the receiver does with a file that exists where one arrives: replace it (always);
#: keep it (never); replace it if the one sent is newer (ifNewer); if size or modification
#: time differ (ifDifferent, rsync's quick check); or receive only the chunks whose
#: checksums differ (ifChecksumDiffers)
OVERWRITE_RULES = ("always", "never", "ifNewer", "ifDifferent", "ifChecksumDiffers")
#: Bytes of one chunk's checksum (BLAKE3, truncated: a chunk that matches by chance is
#: still caught by the whole file's 256-bit digest)
SUM_BYTES = 16
#: Modification times are microseconds that fit, as nanoseconds, in 64 bits.
_MAX_TIME_US = (2**63 - 1) // 1000


@dataclass(frozen=True)
class FileEntry:
    """One entry of a transfer: a file (its size) or an empty folder (size None)."""
    path: str  # the manifest's destination path (the target path)
    src: str  # the manifest's source path, as the sender's user named it
    size: int | None  # None: an empty directory
    mtime_us: int
    executable: bool


@dataclass(frozen=True)
class Metadata:
    """What the sender says of a transfer before its data: the files and their place."""
    transfer_id: str
    destination_path: str | None
    files: list[FileEntry]
    user_data: dict[str, Any] = field(default_factory=dict)
    sender: dict[str, Any] = field(default_factory=dict)
    #: how often the receiver makes received data durable, in seconds
    checkpoint_s: int | None = None
    #: what the receiver does with a file that exists (OVERWRITE_RULES)
    overwrite: str = "always"
    #: for ifChecksumDiffers: the bytes each checksum covers (whole blocks), and per
    #: entry the checksums of its chunks (SUM_BYTES each, the first bytes of BLAKE3)
    chunk_bytes: int = 0
    sums: list[bytes | None] | None = None

    @property
    def sizes(self) -> list[int | None]:
        """Per entry, its size or None (what a Layout takes)."""
        return [f.size for f in self.files]

    @property
    def total_size(self) -> int:
        """The bytes of all files."""
        return sum(f.size or 0 for f in self.files)


def encode_metadata(meta: Metadata) -> bytes:
    """The metadata as sent: JSON, zlib-compressed (the overwrite rule only when it is not
    ``always``)."""
    obj: dict[str, Any] = {
        "v": 1,
        "transferId": meta.transfer_id,
        "destinationPath": meta.destination_path,
        "userData": meta.user_data,
        "sender": meta.sender,
        "files": [[f.path, f.src, f.size, f.mtime_us, f.executable] for f in meta.files],
        "checkpointSeconds": meta.checkpoint_s,
    }
    if meta.overwrite != "always":
        obj["overwrite"] = meta.overwrite
    if meta.sums is not None:
        obj["chunkBytes"] = meta.chunk_bytes
        obj["sums"] = [None if s is None else base64.b64encode(s).decode()
                       for s in meta.sums]
    return zlib.compress(orjson.dumps(obj), 1)


def _sums(obj: dict[str, Any], files: list[FileEntry]) -> tuple[int, list[bytes | None] | None]:
    """The chunk size and checksums, checked against the files' sizes."""
    chunk, items = obj.get("chunkBytes", 0), obj.get("sums")
    if items is None:
        return 0, None
    if not isinstance(chunk, int) or not 0 < chunk <= 2**40 or not isinstance(items, list) \
            or len(items) != len(files):
        raise ValueError("malformed chunk checksums in transfer metadata")
    sums: list[bytes | None] = []
    for item, entry in zip(items, files, strict=True):
        if item is None:
            sums.append(None)
            continue
        try:
            raw = base64.b64decode(item, validate=True)
        except (TypeError, ValueError):
            raise ValueError("malformed chunk checksums in transfer metadata") from None
        if entry.size is None or len(raw) != -(-entry.size // chunk) * SUM_BYTES:
            raise ValueError("chunk checksums that do not fit their file in transfer "
                             "metadata")
        sums.append(raw)
    return chunk, sums


def decode_metadata(data: bytes, max_json: int = MAX_METADATA_JSON) -> Metadata:
    """Parse and check the metadata; ValueError says what is wrong. (Uncompressed JSON is
    taken too: it starts with ``{``.)"""
    if not data.startswith(b"{"):
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(data, max_json)
        except zlib.error:
            raise ValueError("transfer metadata is neither zlib data nor JSON") from None
        if inflate.unconsumed_tail:
            raise ValueError(f"transfer metadata is over {max_json} bytes uncompressed")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("transfer metadata is not valid JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise ValueError("unknown transfer metadata version")
    items = obj.get("files", [])
    if not isinstance(items, list):
        raise ValueError("malformed file list in transfer metadata")
    if len(items) > MAX_FILES:
        raise ValueError(f"transfer metadata lists {len(items)} files; at most {MAX_FILES}")
    files: list[FileEntry] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str)
                and isinstance(item[1], str) and (item[2] is None or (
                    isinstance(item[2], int) and item[2] >= 0))
                and isinstance(item[3], int) and abs(item[3]) <= _MAX_TIME_US
                and isinstance(item[4], bool)):
            raise ValueError("malformed file entry in transfer metadata")
        files.append(FileEntry(item[0], item[1], item[2], item[3], item[4]))
    transfer_id = obj.get("transferId", "")
    destination_path = obj.get("destinationPath")
    user_data = obj.get("userData") or {}
    sender = obj.get("sender") or {}
    if not isinstance(transfer_id, str):
        raise ValueError("malformed transferId in transfer metadata")
    if destination_path is not None and not isinstance(destination_path, str):
        raise ValueError("malformed destinationPath in transfer metadata")
    if not isinstance(user_data, dict) or not isinstance(sender, dict):
        raise ValueError("malformed userData or sender in transfer metadata")
    if len(orjson.dumps(user_data)) > MAX_USER_DATA_BYTES:
        raise ValueError(f"userData in transfer metadata is over {MAX_USER_DATA_BYTES} bytes")
    checkpoint_s = obj.get("checkpointSeconds")
    if checkpoint_s is not None and (not isinstance(checkpoint_s, int) or
                                     not 1 <= checkpoint_s <= 86_400):
        raise ValueError("malformed checkpointSeconds in transfer metadata")
    overwrite = obj.get("overwrite", "always")
    if overwrite not in OVERWRITE_RULES:
        raise ValueError(f"unknown overwrite rule {overwrite!r} in transfer metadata")
    chunk, sums = _sums(obj, files)
    if overwrite == "ifChecksumDiffers" and sums is None:
        raise ValueError("ifChecksumDiffers without chunk checksums in transfer metadata")
    return Metadata(transfer_id, destination_path, files, user_data, sender, checkpoint_s,
                    overwrite, chunk, sums)
