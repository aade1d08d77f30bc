"""What a receiving server remembers of an incoming transfer, and how it is stored."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..protocol.receiver import Checkpoint
from .ids import now_us
from .lifecycle import ReceiveStatus

__all__ = ["Grant", "ReceiveRecord", "remove_partial_files"]


@dataclass(frozen=True)
class Grant:
    """Who an incoming transfer is received as: the ``user`` (its sandbox, the trigger's
    ``username``), the folder of that sandbox it is written under (a destination token's
    ``path``), and the destination token it came with, if one."""

    user: str
    path: str = "/"
    token: str | None = None


@dataclass
class ReceiveRecord:
    """A transfer as the receiving server sees it (``recv.getTransfersAsync``)."""

    transfer_id: str
    user: str
    source_ip: str
    source_port: int
    transport: str
    start_time_us: int = field(default_factory=now_us)
    status: ReceiveStatus = ReceiveStatus.RECEIVING
    error_message: str | None = None
    destination_path: str | None = None
    total_size: int | None = None
    total_files: int | None = None
    files_complete: int = 0
    bytes_recv: int = 0
    packets_recv: int = 0
    duplicate_blocks: int = 0
    last_recv_time_us: int | None = None
    last_send_time_us: int | None = None
    last_error_time_us: int | None = None
    end_time_us: int | None = None
    input_files: list[str] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)
    user_data: dict[str, Any] = field(default_factory=dict)
    #: recv.transferStarted has fired (once per transfer, not again when it resumes)
    announced: bool = False
    #: SHA-256 (hex) of the metadata, to resume only the very same transfer
    meta_digest: str = ""
    #: blocks durable on disk, digests and files in place, for a later session
    checkpoint: Checkpoint | None = None
    #: the sending server's public key (as text), proven in the session's handshake
    client_key: str | None = None
    #: the session's data was encrypted (else both servers run --no-data-encryption)
    encrypted: bool = True
    #: the destination token the sender came with (its id), and the folder it confines to
    token: str | None = None
    path: str = "/"
    #: the sender's overwrite rule, and the files it kept as they were (their positions
    #: in input_files)
    overwrite: str = "always"
    skipped: list[int] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        """The Receive Transfer structure."""
        return {
            "transferId": self.transfer_id,
            "status": self.status,
            "errorMessage": self.error_message,
            "username": self.user,
            "sourceIP": self.source_ip,
            "sourcePort": self.source_port,
            "dataTransport": self.transport,
            "sourcePublicKey": self.client_key,
            "encryptionEnabled": self.encrypted,
            "token": self.token,
            "destinationPath": self.destination_path,
            "totalSize": self.total_size,
            "totalFiles": self.total_files,
            "filesComplete": self.files_complete,
            "filesSkipped": len(self.skipped),
            "overwrite": self.overwrite,
            "bytesRecv": self.bytes_recv,
            "packetsRecv": self.packets_recv,
            "duplicateBlocks": self.duplicate_blocks,
            "startTime": self.start_time_us,
            "endTime": self.end_time_us,
            "lastRecvTime": self.last_recv_time_us,
            "lastSendTime": self.last_send_time_us,
            "lastErrorTime": self.last_error_time_us,
        }

    def to_state(self) -> dict[str, Any]:
        # not asdict(), which copies every path of the file lists one by one
        """The record as stored."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        cp = self.checkpoint
        state["checkpoint"] = None if cp is None else {
            "ranges": cp.ranges,
            "digests": {str(k): [d.hex(), size] for k, (d, size) in cp.digests.items()},
            "committed": sorted(cp.committed),
        }
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReceiveRecord:
        """The record stored by :meth:`to_state`."""
        cp = state.pop("checkpoint")
        record = cls(**{**state, "status": ReceiveStatus(state["status"])})
        if cp is not None:
            record.checkpoint = Checkpoint(
                [(s, e) for s, e in cp["ranges"]],
                {int(k): (bytes.fromhex(d), size) for k, (d, size) in cp["digests"].items()},
                set(cp["committed"]))
        return record


def remove_partial_files(record: ReceiveRecord) -> int:
    """Remove the temporary files an abandoned incoming transfer left; how many.

    Only regular files named ``.jetstream-<transferId>-<n>.part`` in the folders of the
    transfer's files are removed; symlinks are never followed."""
    prefix = f".jetstream-{record.transfer_id}-"
    removed = 0
    for folder in sorted({os.path.dirname(path) for path in record.output_files}):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".part") and \
                    entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
    return removed
