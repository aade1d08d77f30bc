"""The objects users create (destinations, manifests, transfers) and their API structures.

Field names in :meth:`to_api` follow JetStream's structures. Stored credentials are kept
here for the data plane but never appear in any structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidParameter
from ..protocol.metadata import MAX_USER_DATA_BYTES, OVERWRITE_RULES
from .lifecycle import ConnectionState, ManifestStatus, TransferStatus

__all__ = ["DEFAULT_PRIORITY", "OVERWRITE_RULES", "Destination", "FileMapping", "Manifest",
           "Owned", "Transfer", "check_user_data"]

DEFAULT_PRIORITY = 100


def check_user_data(value: dict[str, Any]) -> dict[str, Any]:
    """``value``, if it may be an object's ``userData`` (64 KiB serialised at most)."""
    if len(orjson.dumps(value)) > MAX_USER_DATA_BYTES:
        raise InvalidParameter(f"userData is larger than {MAX_USER_DATA_BYTES} bytes.")
    return value


@dataclass
class Owned:
    """What every user-created object has: an id, an owner and free-form user data."""

    id: str
    owner: str
    create_time_us: int
    user_data: dict[str, Any]
    #: the token that made it, and the token login (ownerToken, ownerTokenSession)
    owner_token: str | None = field(default=None, kw_only=True)
    owner_token_session: str | None = field(default=None, kw_only=True)

    def ownership_api(self) -> dict[str, Any]:
        """The owner fields every structure has."""
        return {"owner": self.owner, "ownerToken": self.owner_token,
                "ownerTokenSession": self.owner_token_session}


@dataclass
class Destination(Owned):
    """A server to send to, with the credentials for it and the state of its connection."""
    address: str  # as given: host or host:port
    host: str
    ip: str
    port: int
    send_rate_max_kbps: int
    data_transport: str
    #: how its transfers share the path (fair, low, high, fixed): protocol/rate.py
    rate_policy: str = "fair"
    remote_user: str | None = None
    remote_password: str | None = field(default=None, repr=False)
    #: a token of the receiving server (its string: a secret, stored sealed)
    remote_token: str | None = field(default=None, repr=False)
    last_error: str | None = None
    last_error_message: str | None = None
    last_recv_time_us: int | None = None
    last_send_time_us: int | None = None
    #: the receiving server's public key (text): given to createDestination, or pinned
    #: at the first contact; a server with another key is refused
    public_key: str | None = None
    #: why the stored password could not be read back at start (the secret key changed);
    #: its transfers fail with this message. Not stored.
    credentials_error: str | None = field(default=None, repr=False)
    #: the state of its data connection (moved by the data plane; not stored)
    connection: ConnectionState = ConnectionState.DISCONNECTED

    def same_parameters(self, wanted: Destination) -> bool:
        """True when ``wanted`` asks for this destination (idempotent create): the same
        parameters, and its key if it names one (this one's may have been pinned)."""
        return (self.owner, self.owner_token, self.host, self.port, self.send_rate_max_kbps,
                self.data_transport, self.rate_policy, self.remote_user,
                self.remote_password, self.remote_token) == (
            wanted.owner, wanted.owner_token, wanted.host, wanted.port,
            wanted.send_rate_max_kbps, wanted.data_transport, wanted.rate_policy,
            wanted.remote_user, wanted.remote_password, wanted.remote_token) and \
            wanted.public_key in (None, self.public_key)

    def to_api(self, queued: int, encrypts: bool = True) -> dict[str, Any]:
        """The Destination structure (no stored secret ever appears); ``encrypts``: this
        server encrypts the data it sends."""
        return {
            "destinationId": self.id,
            "destinationAddress": self.address,
            "destinationIP": self.ip,
            "destinationPort": self.port,
            "destinationUser": self.remote_user,
            # (the token's id: its secret part is never shown)
            "destinationToken": None if self.remote_token is None else
            self.remote_token.split(".")[1],
            "hasCredentials": self.remote_password is not None or self.remote_token is not None,
            "sendRateMax": self.send_rate_max_kbps,
            "ratePolicy": self.rate_policy,
            "dataTransport": self.data_transport,
            "connectionId": None,
            "encryptionEnabled": encrypts,
            "encryptedConnectionState": self.connection,
            "destinationPublicKey": self.public_key,
            "lastDestinationServerId": None,
            "lastError": self.last_error,
            "lastErrorMessage": self.last_error_message,
            "lastRecvTime": self.last_recv_time_us,
            "lastSendTime": self.last_send_time_us,
            "numTransfersQueued": queued,
            "creationTime": self.create_time_us,
            **self.ownership_api(),
            "userData": self.user_data,
        }


@dataclass(frozen=True)
class FileMapping:
    """One entry of a manifest: a source path, where it goes, and what it is."""
    src_path: str  # as the user named it (inside the sender's sandbox, if any)
    dest_path: str
    file_size: int
    is_empty_dir: bool
    executable: bool
    modification_time_us: int

    def to_api(self) -> dict[str, Any]:
        """The structure of one entry of getManifestFiles."""
        return {
            "srcPath": self.src_path,
            "destPath": self.dest_path,
            "fileSize": self.file_size,
            "isEmptyDir": self.is_empty_dir,
            "executable": self.executable,
            "modificationTime": self.modification_time_us,
        }


@dataclass
class Manifest(Owned):
    """A list of files to send, built in the background."""
    status: ManifestStatus = ManifestStatus.PENDING
    error_message: str | None = None
    files: list[FileMapping] = field(default_factory=list)
    #: The mappings as requested, (source, destination) pairs.
    requested: list[tuple[str, str]] = field(default_factory=list)
    #: the folder of the owner's sandbox its source paths are under (a token's path)
    root: str = "/"

    @property
    def total_files(self) -> int | None:
        """Files (empty folders not counted), once built."""
        if self.status is not ManifestStatus.COMPLETE:
            return None
        return sum(1 for f in self.files if not f.is_empty_dir)

    @property
    def total_size(self) -> int | None:
        """Bytes of all files, once built."""
        if self.status is not ManifestStatus.COMPLETE:
            return None
        return sum(f.file_size for f in self.files)

    @property
    def sizes(self) -> list[int | None]:
        """Per entry, its size, or None for an empty folder (what a block layout takes)."""
        return [None if f.is_empty_dir else f.file_size for f in self.files]

    def to_api(self) -> dict[str, Any]:
        """The Manifest structure."""
        return {
            "manifestId": self.id,
            "status": self.status.value,
            "processing": self.status is ManifestStatus.PENDING,
            "errorMessage": self.error_message,
            "totalFiles": self.total_files,
            "totalSize": self.total_size,
            "creationTime": self.create_time_us,
            **self.ownership_api(),
            "userData": self.user_data,
        }

    def files_to_api(self) -> dict[str, Any]:
        """The Manifest Files structure."""
        return {"manifestId": self.id, "fileMappings": [f.to_api() for f in self.files]}


@dataclass
class Transfer(Owned):
    """A manifest queued for a destination, with its progress."""
    destination_id: str
    manifest_id: str
    destination_path: str | None
    priority: int
    send_rate_max_kbps: int | None  # None: the destination's
    checkpoint_frequency_s: int | None
    data_transport: str
    total_bytes: int
    total_files: int
    #: The data protocol's block: payload bytes per datagram (UDP) or frame (TCP).
    block_size: int
    #: Blocks of the whole transfer (metadata, file data, one digest block per file).
    total_blocks: int
    #: userData as given to createTransfer (what recv.transferComplete.json reports).
    initial_user_data: dict[str, Any] = field(default_factory=dict)
    #: None: the destination's (fair, low, high, fixed)
    rate_policy: str | None = None
    #: the limit in force while it sends (kbit/s; 0: none): the lowest of its
    #: sendRateMax, its share of this server's outgoing limit and what the receiver allows
    rate_limit_kbps: int = 0
    status: TransferStatus = TransferStatus.PENDING
    error_message: str | None = None
    #: the stable code of the error, when the receiver gave one (token_expired, ...)
    error_code: str | None = None
    queue_seq: int = 0
    queue_time_us: int | None = None
    start_time_us: int | None = None
    end_time_us: int | None = None
    bytes_sent: int = 0
    bytes_recv: int = 0
    blocks_sent: int = 0
    blocks_acked: int = 0
    blocks_retransmitted: int = 0
    packets_sent: int = 0
    packets_recv: int = 0
    #: datagrams from the receiver dropped, by reason (failedAuthentication, replayed,
    #: truncated, garbage): what an attacker on the path tried
    datagrams_dropped: dict[str, int] = field(default_factory=dict)
    #: what the receiver does with a file that exists (see OVERWRITE_RULES)
    overwrite: str = "always"
    #: file bytes the receiver has, and files verified and in place there (skipped not
    #: counted)
    bytes_complete: int = 0
    files_complete: int = 0
    #: manifest entries the receiver kept as they were (the overwrite rule), as [start,
    #: end) ranges of indexes; None until a session has reached the data phase
    skipped: list[list[int]] | None = None
    #: blocks acknowledged when its last session ended, [start, end) ranges
    acked_ranges: list[list[int]] = field(default_factory=list)
    #: file bytes a second over the last seconds and on average this session (kbit/s),
    #: and the seconds left at the current rate (while it sends)
    current_rate_kbps: int = 0
    average_rate_kbps: int = 0
    eta_s: float | None = None

    @property
    def files_skipped(self) -> int:
        """Files the receiver kept as they were."""
        return sum(end - start for start, end in self.skipped or ())

    def to_api(self, effective_rate_kbps: int, policy: str = "fair") -> dict[str, Any]:
        """The Transfer structure (``effective_rate_kbps``, ``policy``: its own limit
        and rate policy, or its destination's)."""
        return {
            "transferId": self.id,
            "destinationId": self.destination_id,
            "manifestId": self.manifest_id,
            "destinationPath": self.destination_path,
            "priority": self.priority,
            "sendRateMax": effective_rate_kbps,
            "ratePolicy": policy,
            "rateLimit": self.rate_limit_kbps,
            "checkpointFrequencySeconds": self.checkpoint_frequency_s,
            "dataTransport": self.data_transport,
            "status": self.status.value,
            "processing": not self.status.ended,
            "errorMessage": self.error_message,
            "errorCode": self.error_code,
            "requestTime": self.create_time_us,
            "queueTime": self.queue_time_us,
            "startTime": self.start_time_us,
            "endTime": self.end_time_us,
            "totalBytes": self.total_bytes,
            "totalFiles": self.total_files,
            "totalBlocks": self.total_blocks,
            "blockSize": self.block_size,
            "bytesSent": self.bytes_sent,
            "bytesRecv": self.bytes_recv,
            "blocksSent": self.blocks_sent,
            "blocksAcked": self.blocks_acked,
            "blocksRetransmitted": self.blocks_retransmitted,
            "packetsSent": self.packets_sent,
            "packetsRecv": self.packets_recv,
            "datagramsDropped": self.datagrams_dropped,
            "overwrite": self.overwrite,
            "bytesComplete": self.bytes_complete,
            "bytesToSend": max(self.total_bytes - self.bytes_complete, 0),
            "filesComplete": self.files_complete,
            "filesSkipped": self.files_skipped,
            "currentRate": self.current_rate_kbps,
            "averageRate": self.average_rate_kbps,
            "estimatedTimeRemaining": self.eta_s,
            **self.ownership_api(),
            "userData": self.user_data,
        }
