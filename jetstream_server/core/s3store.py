"""The S3 operations of an S3 sandbox, through boto3 (blocking: called from worker threads).

One boto3 client per sandbox configuration is shared by every thread (boto3's clients are
thread-safe; its sessions are not, so each client gets a session of its own). Requests
carry ``Content-MD5`` and ask for no other checksum (``when_required``): every
S3-compatible store checks an MD5, not all of them the newer CRC headers. A failure
becomes a :class:`~jetstream_server.errors.DiskError` naming the bucket and what went
wrong; one the operator cannot be blamed for (the endpoint unreachable, a 5xx answer) a
:class:`~jetstream_server.errors.StorageUnavailable`. No message carries a credential.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import orjson

from ..errors import DiskError, StorageUnavailable
from .sandboxes import S3Sandbox

__all__ = ["MTIME_KEY", "Bucket", "ObjectInfo", "PartInfo", "UploadLedger", "abandon",
           "content_md5"]

#: The user metadata key under which an object keeps its file's modification time (µs).
MTIME_KEY = "mtime-us"
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()
_UNAVAILABLE = (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ProxyConnectionError,
                botocore.exceptions.ResponseStreamingError,
                botocore.exceptions.IncompleteReadError)
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                "InvalidToken", "ExpiredToken", "InvalidSecurity", "403"}


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a listing or a HEAD tells it."""

    key: str
    size: int
    mtime_us: int  # the file's, if the object keeps it, else when it was stored
    stored_us: int  # when it was stored (LastModified): what a listing tells


@dataclass(frozen=True)
class PartInfo:
    """A part S3 has of a multipart upload (its ETag is the part's MD5, quoted)."""

    etag: str
    size: int


def _client(sandbox: S3Sandbox) -> Any:
    config_key = (sandbox.access_key_id, sandbox.secret_access_key, sandbox.session_token,
                  sandbox.region, sandbox.scheme, sandbox.endpoint_url, sandbox.verify_ssl)
    with _clients_lock:
        client = _clients.get(config_key)
        if client is None:
            session = boto3.session.Session(
                aws_access_key_id=sandbox.access_key_id,
                aws_secret_access_key=sandbox.secret_access_key,
                aws_session_token=sandbox.session_token, region_name=sandbox.region)
            client = session.client(
                "s3", endpoint_url=sandbox.endpoint_url, use_ssl=sandbox.scheme == "https",
                verify=sandbox.verify_ssl, config=botocore.config.Config(
                    connect_timeout=5, read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=32,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required"))
            _clients[config_key] = client
        return client


def content_md5(data: bytes | memoryview) -> tuple[str, str]:
    """(the Content-MD5 header, the ETag S3 gives a part or single-request object)."""
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode(), f'"{digest.hex()}"'


def _stored_us(head: dict[str, Any]) -> int:
    stored: datetime = head["LastModified"]
    return int(stored.timestamp() * 1_000_000)


def _mtime_us(head: dict[str, Any]) -> int:
    kept = head.get("Metadata", {}).get(MTIME_KEY)
    return int(kept) if kept is not None and kept.isdigit() else _stored_us(head)


class Bucket:
    """The bucket of one S3 sandbox, and what the server does with it."""

    def __init__(self, sandbox: S3Sandbox) -> None:
        self.sandbox = sandbox
        self.name = sandbox.bucket
        try:
            self.client = _client(sandbox)
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            raise DiskError(f"S3 bucket {self.name!r} cannot be used: {exc}.") from None

    def error(self, exc: Exception, doing: str) -> DiskError:
        """What ``exc`` (raised ``doing`` something) means, for the transfer's message."""
        where = f"S3 bucket {self.name!r}"
        if self.sandbox.endpoint_url:
            where += f" at {self.sandbox.endpoint_url}"
        if isinstance(exc, _UNAVAILABLE):
            return StorageUnavailable(f"Cannot reach {where} {doing}: the endpoint does "
                                      "not answer; the transfer waits and tries again.")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return DiskError(f"No credentials for {where}: the sandbox mapping gives "
                             "none and the AWS credential chain has none.", True)
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket" or (code == "404" and doing == "checking the bucket"):
                return DiskError(f"{where} does not exist: create it, or correct the "
                                 "sandbox mapping.", True)
            if code in _CREDENTIALS:
                return DiskError(f"{where} refused the credentials {doing} ({code}): "
                                 "correct the sandbox mapping's keys or their rights.", True)
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return StorageUnavailable(f"{where} answered {code or status} {doing}; the "
                                          "transfer waits and tries again.")
            return DiskError(f"{where} refused {doing}: {code or status}.")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StorageUnavailable(f"{where} failed {doing}: {exc}.")
        raise exc

    def call(self, doing: str, method: str, **kwargs: Any) -> Any:
        """``client.method(Bucket=..., **kwargs)``, its failure a DiskError."""
        try:
            return getattr(self.client, method)(Bucket=self.name, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self.error(exc, doing) from None

    def check(self) -> None:
        """That the bucket is there and the credentials open it."""
        self.call("checking the bucket", "head_bucket")

    def head(self, key: str) -> ObjectInfo | None:
        """The object ``key``, if there is one."""
        try:
            head = self.client.head_object(Bucket=self.name, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self.error(exc, f"looking at {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error(exc, f"looking at {key}") from None
        return ObjectInfo(key, int(head["ContentLength"]), _mtime_us(head), _stored_us(head))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The objects whose keys start with ``prefix``, in key order."""
        token: dict[str, str] = {}
        while True:
            page = self.call(f"listing {prefix or '/'}", "list_objects_v2", Prefix=prefix,
                             **token)
            for item in page.get("Contents", []):
                stored = _stored_us(item)
                yield ObjectInfo(item["Key"], int(item["Size"]), stored, stored)
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def read(self, key: str, offset: int, length: int) -> tuple[bytes, int, int]:
        """``length`` bytes at ``offset`` (a ranged GET): (data, object size, when it was
        stored, in µs)."""
        if length == 0:
            info = self.head(key)
            if info is None:
                raise DiskError(f"s3://{self.name}/{key} no longer exists.")
            return b"", info.size, info.stored_us
        doing = f"reading {key}"
        try:
            got = self.client.get_object(Bucket=self.name, Key=key,
                                         Range=f"bytes={offset}-{offset + length - 1}")
            data = got["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self.error(exc, doing) from None
        total = int(str(got.get("ContentRange", "")).rpartition("/")[2] or -1)
        return data, total, _stored_us(got)

    def put(self, key: str, data: bytes, mtime_us: int, content_type: str) -> None:
        """Store ``data`` as the object ``key`` in one request."""
        md5, _ = content_md5(data)
        self.call(f"storing {key}", "put_object", Key=key, Body=data, ContentMD5=md5,
                  ContentType=content_type, Metadata={MTIME_KEY: str(mtime_us)})

    def start_upload(self, key: str, mtime_us: int, content_type: str) -> str:
        """A new multipart upload of ``key``: its id."""
        made = self.call(f"starting the upload of {key}", "create_multipart_upload",
                         Key=key, ContentType=content_type,
                         Metadata={MTIME_KEY: str(mtime_us)})
        return str(made["UploadId"])

    def parts(self, key: str, upload_id: str) -> dict[int, PartInfo] | None:
        """The parts an upload has (None: there is no such upload any more)."""
        out: dict[int, PartInfo] = {}
        marker: dict[str, int] = {}
        while True:
            try:
                page = self.client.list_parts(Bucket=self.name, Key=key, UploadId=upload_id,
                                              **marker)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                    return None
                raise self.error(exc, f"resuming the upload of {key}") from None
            except botocore.exceptions.BotoCoreError as exc:
                raise self.error(exc, f"resuming the upload of {key}") from None
            for part in page.get("Parts", []):
                out[int(part["PartNumber"])] = PartInfo(str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return out
            marker = {"PartNumberMarker": int(page["NextPartNumberMarker"])}

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (from 1); its ETag."""
        md5, etag = content_md5(data)
        done = self.call(f"uploading part {number} of {key}", "upload_part", Key=key,
                         UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5)
        return str(done.get("ETag", etag))

    def complete(self, key: str, upload_id: str, etags: dict[int, str]) -> None:
        """Complete an upload from its parts' ETags: the object appears under ``key``."""
        self.call(f"completing the upload of {key}", "complete_multipart_upload", Key=key,
                  UploadId=upload_id, MultipartUpload={"Parts": [
                      {"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]})

    def abort(self, key: str, upload_id: str) -> None:
        """Abort an upload (S3 drops its parts); one already gone is no error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise self.error(exc, f"aborting the upload of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self.error(exc, f"aborting the upload of {key}") from None

    def url(self, key: str) -> str:
        """``s3://bucket/key``."""
        return self.sandbox.url(key)


class UploadLedger:
    """The multipart uploads an incoming transfer has started and not yet completed or
    aborted, by manifest entry: ``<spool>/<transfer>.uploads.json``, rewritten (atomically,
    durably) whenever one starts or ends, so none is forgotten by a crash."""

    def __init__(self, spool_dir: Path, transfer_id: str) -> None:
        self.path = spool_dir / f"{transfer_id}.uploads.json"

    def load(self) -> dict[int, tuple[str, str]]:
        """file index -> (key, upload id); empty if there is no ledger."""
        try:
            raw = orjson.loads(self.path.read_bytes())
            return {int(i): (str(k), str(u)) for i, (k, u) in raw.items()}
        except (OSError, ValueError, TypeError):
            return {}

    def save(self, uploads: dict[int, tuple[str, str]]) -> None:
        """Record ``uploads`` (removing the ledger when there is none)."""
        if not uploads:
            self.remove()
            return
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, orjson.dumps({str(i): list(v) for i, v in uploads.items()}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)

    def remove(self) -> None:
        """Forget the ledger."""
        try:
            os.unlink(self.path)
        except OSError:
            pass


def abandon(sandbox: S3Sandbox, spool_dir: Path, transfer_id: str) -> int:
    """Abort the uploads an abandoned incoming transfer left (garbage collection), remove
    its spool files; how many uploads were aborted. One that cannot be aborted now stays
    in the ledger for the next collection."""
    for spool in spool_dir.glob(f"{transfer_id}-*.spool"):
        spool.unlink(missing_ok=True)
    ledger = UploadLedger(spool_dir, transfer_id)
    uploads = ledger.load()
    if not uploads:
        return 0
    bucket, left, aborted = Bucket(sandbox), {}, 0
    for index, (key, upload_id) in uploads.items():
        try:
            bucket.abort(key, upload_id)
            aborted += 1
        except DiskError:
            left[index] = (key, upload_id)
    ledger.save(left)
    return aborted
