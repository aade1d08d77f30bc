"""Loopback transfers into an S3 sandbox, beside the same transfer into a local folder.

    .venv/bin/python bench/s3.py [SIZE_MIB] [--files N]

Starts an S3 endpoint (moto in server mode, as the tests do) and two jetstream-server
processes; sends N files of SIZE_MIB/N MiB (default one of 512 MiB) to the receiver's
local sandbox and then to its user's S3 sandbox, and prints the goodput of each and the
receiving process's CPU seconds per GiB. As baselines measured in the same run: the
endpoint's own ceiling (boto3 storing the same files from threads, the receiver's way: 8
PUTs at once for files up to 8 MiB, else 4 parts of 8 MiB) and, when aiobotocore is
installed, the same through aiobotocore (as many requests at once on one event loop),
the client the project did not choose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import PASSWORDS, ServerProcess, write_users
from tests.s3_endpoint import Endpoint, start_moto

PART = 8 << 20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pieces(data: bytes, files: int) -> list[tuple[str, int, bytes]]:
    """What the receiver sends S3 for ``files`` copies of ``data``: (key, part number or 0
    for a PUT, body)."""
    if len(data) <= PART:
        return [(f"c{i}", 0, data) for i in range(files)]
    return [(f"c{i}", n + 1, data[n * PART:(n + 1) * PART])
            for i in range(files) for n in range(-(-len(data) // PART))]


def boto3_ceiling(moto: Endpoint, bucket: str, data: bytes, files: int) -> float:
    """The same bytes straight to the endpoint, the receiver's way: boto3 from threads,
    8 PUTs or 4 parts at a time."""
    s3 = moto.client()
    pieces = _pieces(data, files)
    started = time.monotonic()
    uploads = {key: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
               for key, n, _ in pieces if n == 1}

    def put(piece: tuple[str, int, bytes]) -> tuple[str, dict[str, Any]]:
        key, n, body = piece
        if n == 0:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            return key, {}
        done = s3.upload_part(Bucket=bucket, Key=key, UploadId=uploads[key], PartNumber=n,
                              Body=body)
        return key, {"PartNumber": n, "ETag": done["ETag"]}

    with ThreadPoolExecutor(8 if len(data) <= PART else 4) as pool:
        done = list(pool.map(put, pieces))
    for key, upload in uploads.items():
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": [p for k, p in done
                                                                if k == key]})
    seconds = time.monotonic() - started
    return len(data) * files * 8 / seconds / 1e6


def aiobotocore_ceiling(moto: Endpoint, bucket: str, data: bytes, files: int
                        ) -> float | None:
    """The same through aiobotocore: one event loop, as many requests at once."""
    try:
        from aiobotocore.session import get_session
    except ImportError:
        return None
    pieces = _pieces(data, files)

    async def run() -> float:
        async with get_session().create_client(
                "s3", endpoint_url=moto.url, region_name="us-east-1",
                aws_access_key_id=moto.key_id, aws_secret_access_key=moto.secret) as s3:
            started = time.monotonic()
            uploads = {key: (await s3.create_multipart_upload(Bucket=bucket, Key="a" + key)
                             )["UploadId"] for key, n, _ in pieces if n == 1}
            limit = asyncio.Semaphore(8 if len(data) <= PART else 4)

            async def put(key: str, n: int, body: bytes) -> tuple[str, dict[str, Any]]:
                async with limit:
                    if n == 0:
                        await s3.put_object(Bucket=bucket, Key="a" + key, Body=body)
                        return key, {}
                    done = await s3.upload_part(Bucket=bucket, Key="a" + key,
                                                UploadId=uploads[key], PartNumber=n,
                                                Body=body)
                return key, {"PartNumber": n, "ETag": done["ETag"]}

            done = await asyncio.gather(*(put(*piece) for piece in pieces))
            for key, upload in uploads.items():
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key="a" + key, UploadId=upload,
                    MultipartUpload={"Parts": [p for k, p in done if k == key]})
            seconds = time.monotonic() - started
            return len(data) * files * 8 / seconds / 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("size_mib", type=int, nargs="?", default=512)
    parser.add_argument("--files", type=int, default=1)
    args = parser.parse_args()
    size = args.size_mib << 20
    base = Path(tempfile.mkdtemp(prefix="jetstream-bench-s3-"))
    moto = start_moto()
    a = b = None
    try:
        bucket = "jetstream-bench"
        moto.client().create_bucket(Bucket=bucket)
        for name in "ab":
            (base / name / "sandbox").mkdir(parents=True)
            write_users(base / name / "users")
        (base / "a" / "sandbox" / "set").mkdir()
        each = size // args.files
        data = os.urandom(each)
        for i in range(args.files):
            (base / "a" / "sandbox" / "set" / f"f{i}.bin").write_bytes(data)
        a = ServerProcess(base / "a")
        b = ServerProcess(base / "b", "--superuser", "root")
        b.call("--superuser", "setSandboxMappings", "--mappings=" + json.dumps(
            [moto.mapping(bucket)]), user="root")

        def api(*argv: str) -> Any:
            return a.call(*argv, user="alice")

        results = []
        for label, user in (("local folder", "alice"), ("S3 (moto)", "bob")):
            destination = api("createDestination", f"--destinationAddress=127.0.0.1:"
                              f"{b.recv_port}", f"--destinationUser={user}",
                              f"--destinationPassword={PASSWORDS[user]}")
            manifest = api("createManifest", "--fileMappings=/set:/set")
            while api("getManifest", f"--manifestId={manifest['manifestId']}")[
                    "status"] == "pending":
                time.sleep(0.05)
            cpu = cpu_seconds(b.proc.pid)
            started = time.monotonic()
            transfer = api("createTransfer",
                           f"--destinationId={destination['destinationId']}",
                           f"--manifestId={manifest['manifestId']}")
            while (got := api("getTransfer", f"--transferId={transfer['transferId']}"))[
                    "status"] not in ("complete", "error"):
                time.sleep(0.05)
            seconds = time.monotonic() - started
            cpu = cpu_seconds(b.proc.pid) - cpu
            assert got["status"] == "complete", got["errorMessage"]
            results.append((label, seconds, cpu))
        ceiling = boto3_ceiling(moto, bucket, data, args.files)
        other = aiobotocore_ceiling(moto, bucket, data, args.files)
    finally:
        for server in (a, b):
            if server is not None:
                server.stop()
        moto.stop()
        shutil.rmtree(base, ignore_errors=True)
    gib = size / (1 << 30)
    print(f"{args.files} file(s), {args.size_mib} MiB, loopback, UDP, encrypted")
    for label, seconds, cpu in results:
        print(f"  into {label:14s} {size * 8 / seconds / 1e6:7.0f} Mbit/s   receiver "
              f"{cpu / gib:5.1f} CPU s/GiB")
    how = "8 PUTs" if each <= PART else "4 parts of 8 MiB"
    print(f"  baseline: boto3 straight to the endpoint, {how} at once from threads: "
          f"{ceiling:.0f} Mbit/s")
    if other is not None:
        print(f"  baseline: aiobotocore, the same at once on one event loop: "
              f"{other:.0f} Mbit/s")
    else:
        print("  (aiobotocore not installed: pip install aiobotocore to compare it)")


if __name__ == "__main__":
    main()
