"""S3 sandboxes, against a real S3 endpoint (moto in server mode): the mappings API,
receiving into a bucket (multipart edge cases, triggers, errors, the endpoint going away,
a receiver crash, a cancel), and sending from one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.dataplane.s3sink import (
    MAX_PARTS,
    PART_BYTES,
    UPLOADS_AT_ONCE,
    part_bytes_for,
)
from jetstream_server.errors import CommandFailed
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, ServerProcess, make_home, make_settings, write_users
from tests.s3_endpoint import Endpoint, Relay, start_moto
from tests.test_triggers import install, wait_calls
from tests.transfer_helpers import send, wait_transfer

pytestmark = pytest.mark.timeout(120)
MTIME = 1_600_000_000


@pytest.fixture(scope="module")
def moto() -> Iterator[Endpoint]:
    endpoint = start_moto()
    yield endpoint
    endpoint.stop()


_buckets = iter(range(1, 10_000))


@pytest.fixture
def bucket(moto: Endpoint) -> str:
    name = f"jetstream-test-{os.getpid()}-{next(_buckets)}"
    moto.client().create_bucket(Bucket=name)
    return name


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))


def objects(moto: Endpoint, bucket: str) -> dict[str, bytes]:
    s3 = moto.client()
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed}


def uploads_left(moto: Endpoint, bucket: str) -> list[str]:
    found = moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [u["Key"] for u in found]


async def raised_client(port: int) -> AsyncClient:
    client = await AsyncClient.connect("127.0.0.1", port)
    await client.auth("root", PASSWORDS["root"])
    await client.call("superuser")
    return client


class Pair:
    """A sending server (alice) and a receiving one whose user bob is mapped to a bucket."""

    def __init__(self, client: AsyncClient, b_admin: AsyncClient, destination_id: str,
                 source: Path, triggers: Path, b: Server) -> None:
        self.client, self.b_admin = client, b_admin
        self.b_address, self.b_recv_port = ("127.0.0.1", b.api_port), b.recv_port
        self.destination_id, self.source, self.triggers = destination_id, source, triggers

    async def copy(self, mappings: dict[str, str], **params: Any) -> dict[str, Any]:
        transfer = await send(self.client, self.destination_id, mappings, **params)
        return await wait_transfer(self.client, transfer["transferId"])


@pytest.fixture
async def pair(tmp_path: Path, moto: Endpoint, bucket: str) -> AsyncIterator[Pair]:
    triggers = tmp_path / "triggers"
    install(triggers, "recv.transferComplete")
    install(triggers, "recv.transferComplete.json")
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"), trigger_dir=triggers)) as b:
        b_admin = await raised_client(b.api_port)
        await b_admin.call("setSandboxMappings", mappings=[
            moto.mapping(bucket, path="incoming/%u")])
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        yield Pair(client, b_admin, destination["destinationId"],
                   tmp_path / "a" / "sandbox", triggers, b)
        await client.close()
        await b_admin.close()


# -- mappings -----------------------------------------------------------------------------

def test_part_size_grows_only_past_ten_thousand_parts() -> None:
    assert part_bytes_for(0) == part_bytes_for(MAX_PARTS * PART_BYTES) == PART_BYTES
    big = part_bytes_for(MAX_PARTS * PART_BYTES + 1)
    assert big > PART_BYTES and big % (1024 * 1024) == 0
    assert -(-(MAX_PARTS * PART_BYTES + 1) // big) <= MAX_PARTS


async def test_mappings_are_set_shown_without_secrets_kept_and_checked(
        tmp_path: Path, moto: Endpoint, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    home = make_home(tmp_path / "b")
    triggers = tmp_path / "triggers"
    install(triggers, "on.setSandboxMappings")
    local = tmp_path / "elsewhere"
    local.mkdir()
    given = [moto.mapping(bucket, user="bob", path="media/%u", sessionToken="tok-secret",
                          region="eu-west-1", verifySsl=False),
             {"user": "", "type": "local", "path": str(local)}]
    async with Server(make_settings(home, trigger_dir=triggers, trigger_on_api=True)) as b:
        admin = await raised_client(b.api_port)
        shown = await admin.call("setSandboxMappings", mappings=given)
        (fired,) = await wait_calls(triggers, "on.setSandboxMappings")
        assert "tok-secret" not in json.dumps(fired) and moto.secret not in json.dumps(fired)
        assert json.loads(fired["args"][3]) == shown  # the result, as getSandboxMappings
        assert shown == await admin.call("getSandboxMappings")
        assert shown[0] == {"user": "bob", "type": "S3", "bucket": bucket,
                            "path": "media/%u", "accessKeyId": moto.key_id,
                            "endpointOverride": moto.url, "region": "eu-west-1",
                            "verifySsl": False}
        assert shown[1] == {"user": "", "type": "local", "path": str(local)}
        info = await admin.call("getServerInfo")
        assert info["sandboxTypes"] == ["local", "S3"]
        assert info["sandboxMappings"] == {"local": 1, "S3": 1}
        anonymous = await AsyncClient.connect("127.0.0.1", b.api_port)
        assert "sandboxMappings" not in await anonymous.call("getServerInfo")
        await anonymous.close()
        for bad, message in [
            ([{"user": "x", "type": "FTP"}], "\"type\" must be \"local\" or \"S3\""),
            ([{"user": "x", "type": "S3", "bucket": "No_Such"}], "\"bucket\" must be"),
            ([{"user": "x", "type": "local", "path": "relative"}], "absolute folder"),
            ([{"user": "x", "type": "local", "path": "/a", "bucket": "b"}],
             "unknown field(s) bucket"),
            ([{"user": "x", "type": "S3", "bucket": "abc", "accessKeyId": "k"}],
             "together"),
            ([{"user": "x", "type": "local", "path": "/a"}] * 2, "mapped twice"),
            ([{"user": "x", "type": "S3", "bucket": "abc", "path": "a/../b"}], "'..'"),
            ([{"user": "x", "type": "S3", "bucket": "abc",
               "endpointOverride": "http://a host/x"}], "\"endpointOverride\" must be"),
        ]:
            with pytest.raises(CommandFailed) as refused:
                await admin.call("setSandboxMappings", mappings=bad)
            assert refused.value.code == "invalid_parameter"
            assert message in refused.value.message, refused.value.message
        user = await AsyncClient.connect("127.0.0.1", b.api_port)
        await user.auth("bob", PASSWORDS["bob"])
        with pytest.raises(CommandFailed) as denied:
            await user.call("getSandboxMappings")
        assert denied.value.code == "permission_denied"
        await user.close()
        await admin.close()
    # kept across a restart, secrets sealed in the state database
    database = (home / "state" / "state.sqlite3").read_bytes()
    assert moto.secret.encode() not in database and b"tok-secret" not in database
    async with Server(make_settings(home)) as b:
        admin = await raised_client(b.api_port)
        assert await admin.call("getSandboxMappings") == shown
        await admin.close()
    assert caplog.records
    for record in caplog.records:
        assert moto.secret not in record.getMessage()
        assert "tok-secret" not in record.getMessage()


# -- receiving into S3 ----------------------------------------------------------------------

async def test_files_are_stored_as_objects_verified_with_triggers_naming_them(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    files = {"empty.bin": b"", "small.txt": b"hello S3",
             "one part.bin": data_of(PART_BYTES, 1),
             "part and a byte.bin": data_of(PART_BYTES + 1, 2),
             "sous-dossier/été ☀.bin": data_of(PART_BYTES * 3 + PART_BYTES // 2, 3)}
    for name, data in files.items():
        write(pair.source / "src" / name, data)
    done = await pair.copy({"/src": "/in"})
    assert done["status"] == "complete", done["errorMessage"]
    stored = objects(moto, bucket)
    assert stored == {f"incoming/bob/in/{name}": data for name, data in files.items()}
    assert uploads_left(moto, bucket) == []
    head = moto.client().head_object(Bucket=bucket, Key="incoming/bob/in/small.txt")
    assert head["Metadata"]["mtime-us"] == str(MTIME * 1_000_000)
    assert head["ContentType"] == "text/plain"
    (plain,) = await wait_calls(pair.triggers, "recv.transferComplete")
    (meta,) = await wait_calls(pair.triggers, "recv.transferComplete.json")
    lines = sorted(plain["stdin"].splitlines())
    expected = sorted(f"/in/{name.replace(' ', '%20')} s3://{bucket}/incoming/bob/in/{name}"
                      for name in files)
    assert lines == expected
    assert sorted(json.loads(meta["stdin"])["outputFiles"]) == sorted(
        f"s3://{bucket}/incoming/bob/in/{name}" for name in files)
    received = await pair.b_admin.call("recv.getTransfers")
    assert received[0]["status"] == "complete"
    assert moto.secret not in json.dumps(received)


async def test_overwrite_rules_look_at_the_objects_there(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    write(pair.source / "src" / "a.txt", b"new a")
    moto.client().put_object(Bucket=bucket, Key="incoming/bob/in/a.txt", Body=b"old a")
    done = await pair.copy({"/src": "/in"}, overwrite="never")
    assert done["status"] == "complete" and done["filesSkipped"] == 1
    assert objects(moto, bucket)["incoming/bob/in/a.txt"] == b"old a"
    done = await pair.copy({"/src": "/in"}, overwrite="ifDifferent")
    assert done["status"] == "complete" and done["filesSkipped"] == 0
    assert objects(moto, bucket)["incoming/bob/in/a.txt"] == b"new a"
    for rule in ("ifDifferent", "ifChecksumDiffers"):  # now the same: kept
        done = await pair.copy({"/src": "/in"}, overwrite=rule)
        assert (done["status"], done["filesSkipped"]) == ("complete", 1), rule


async def test_a_missing_bucket_and_wrong_credentials_fail_with_clear_errors(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    write(pair.source / "src" / "a.txt", b"a")
    await pair.b_admin.call("setSandboxMappings", mappings=[
        moto.mapping("no-such-bucket-here")])
    done = await pair.copy({"/src": "/in"})
    assert done["status"] == "error"
    assert f"S3 bucket 'no-such-bucket-here' at {moto.url} does not exist" in \
        done["errorMessage"]
    await pair.b_admin.call("setSandboxMappings", mappings=[
        {**moto.mapping(bucket), "secretAccessKey": "wrong-secret"}])
    done = await pair.copy({"/src": "/in"})
    assert done["status"] == "error"
    assert f"S3 bucket {bucket!r} at {moto.url} refused the credentials" in \
        done["errorMessage"]
    assert "wrong-secret" not in done["errorMessage"]
    assert objects(moto, bucket) == {}


async def test_the_endpoint_going_away_pauses_the_transfer_which_then_resumes(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    relay = Relay(int(moto.url.rsplit(":", 1)[1]))
    await pair.b_admin.call("setSandboxMappings", mappings=[
        moto.mapping(bucket, url=relay.url)])
    files = {f"f{i}.bin": data_of(PART_BYTES * 2 + 100 * i, 10 + i) for i in range(3)}
    for name, data in files.items():
        write(pair.source / "src" / name, data)
    transfer = await send(pair.client, pair.destination_id, {"/src": "/in"},
                          sendRateMax=40_000)
    deadline = time.monotonic() + 60
    while relay.requests["UploadPart"] < 1:  # the first part is on its way
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    relay.cut()
    await asyncio.sleep(3)  # (the receiver's S3 client gives up after its retries)
    seen = await pair.client.call("getTransfer", transferId=transfer["transferId"])
    assert seen["status"] not in ("complete", "error"), seen
    relay.restore()
    done = await wait_transfer(pair.client, transfer["transferId"])
    assert done["status"] == "complete", done["errorMessage"]
    assert objects(moto, bucket) == {f"in/{n}": d for n, d in files.items()}
    assert uploads_left(moto, bucket) == []
    # the parts stored before the cut were not uploaded again (3 files of 3 parts; a
    # part on its way when the endpoint went is), and the file under way was not sent
    # again: the next session went on with what the first had (spool, hash, parts)
    assert relay.requests["UploadPart"] <= 9 + UPLOADS_AT_ONCE, relay.requests
    total = sum(len(d) for d in files.values())
    assert done["bytesSent"] < total * 1.15, (done["bytesSent"], total)
    relay.cut()


async def test_a_cancelled_transfer_leaves_no_multipart_upload_behind(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    write(pair.source / "src" / "big.bin", data_of(PART_BYTES * 4, 7))
    transfer = await send(pair.client, pair.destination_id, {"/src": "/in"},
                          sendRateMax=40_000)
    deadline = time.monotonic() + 60
    while not uploads_left(moto, bucket):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await pair.client.call("cancelTransfer", transferId=transfer["transferId"])
    deadline = time.monotonic() + 30
    while uploads_left(moto, bucket):
        assert time.monotonic() < deadline, "the multipart upload was left behind"
        await asyncio.sleep(0.1)
    assert objects(moto, bucket) == {}


def send_big(a: ServerProcess, b: ServerProcess, data: bytes, rate_kbps: int) -> str:
    """As alice on ``a``: send big.bin (``data``) to bob on ``b`` at ``rate_kbps``; the
    transfer's id."""
    write(a.log_path.parent / "sandbox" / "big.bin", data)
    destination = a.call("createDestination", f"--destinationAddress=127.0.0.1:"
                         f"{b.recv_port}", "--destinationUser=bob",
                         "--destinationPassword=" + PASSWORDS["bob"])
    manifest = a.call("createManifest", "--fileMappings=" + json.dumps(
        {"/big.bin": "/big.bin"}))
    time.sleep(1)
    transfer = a.call("createTransfer", "--destinationId=" + destination["destinationId"],
                      "--manifestId=" + manifest["manifestId"], f"--sendRateMax={rate_kbps}")
    return str(transfer["transferId"])


def wait_ended(a: ServerProcess, transfer_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        seen: dict[str, Any] = a.call("getTransfer", "--transferId=" + transfer_id)
        if seen["status"] in ("complete", "error"):
            return seen
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_a_receiver_killed_mid_upload_resumes_from_its_completed_parts(
        tmp_path: Path, moto: Endpoint, bucket: str) -> None:
    """Two server processes; the receiving one is killed (SIGKILL) with parts of a file
    uploaded and started again: the transfer completes, and the parts S3 had are not
    uploaded again."""
    relay = Relay(int(moto.url.rsplit(":", 1)[1]))
    make_home(tmp_path / "a")
    make_home(tmp_path / "b")
    a, b = ServerProcess(tmp_path / "a"), ServerProcess(tmp_path / "b", "--superuser", "root")
    try:
        b.call("--superuser", "setSandboxMappings", "--mappings=" + json.dumps(
            [moto.mapping(bucket, url=relay.url)]), user="root")
        parts = 5
        data = data_of(PART_BYTES * parts, 21)
        transfer_id = send_big(a, b, data, 40_000)
        deadline = time.monotonic() + 60
        while relay.requests["UploadPart"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # (the part on its way lands)
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        before = relay.requests["UploadPart"]
        b = ServerProcess(tmp_path / "b", "--superuser", "root", "--recv-port",
                          str(b.recv_port))
        seen = wait_ended(a, transfer_id)
        assert seen["status"] == "complete", seen["errorMessage"]
        assert objects(moto, bucket) == {"big.bin": data}
        assert uploads_left(moto, bucket) == []
        uploaded_again = relay.requests["UploadPart"] - before
        assert before >= 3 and uploaded_again <= parts - 3 + 1, relay.requests
    finally:
        a.stop()
        b.stop()
        relay.cut()


# -- sending from S3 ------------------------------------------------------------------------

async def test_objects_and_prefixes_of_an_s3_sandbox_are_sent_as_files(
        tmp_path: Path, moto: Endpoint, bucket: str) -> None:
    s3 = moto.client()
    sent = {"out/set/one.bin": data_of(PART_BYTES + 5, 31), "out/set/sub/two.txt": b"two",
            "out/set/empty": b"", "out/single.txt": b"single"}
    for key, data in sent.items():  # (with the metadata this server gives what it stores)
        s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"mtime-us": "1000000"})
    s3.put_object(Bucket=bucket, Key="out/set/folder-marker/", Body=b"")
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"))) as b:
        admin = await raised_client(a.api_port)
        await admin.call("setSandboxMappings", mappings=[
            moto.mapping(bucket, user="alice", path="out")])
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        missing = await client.call("createManifest", fileMappings={"/nothing": "/x"})
        failed = await client.wait_for_manifest(missing["manifestId"])
        assert failed["status"] == "error"
        assert f"no object or prefix s3://{bucket}/out/nothing" in failed["errorMessage"]
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        transfer = await send(client, destination["destinationId"],
                              {"/set": "/got", "/single.txt": "/single.txt"})
        done = await wait_transfer(client, transfer["transferId"])
        assert done["status"] == "complete", done["errorMessage"]
        assert done["totalFiles"] == 4
        there = tmp_path / "b" / "sandbox"
        assert (there / "got" / "one.bin").read_bytes() == sent["out/set/one.bin"]
        assert (there / "got" / "sub" / "two.txt").read_bytes() == b"two"
        assert (there / "got" / "empty").read_bytes() == b""
        assert (there / "single.txt").read_bytes() == b"single"
        assert not (there / "got" / "folder-marker").exists()
        await client.close()
        await admin.close()


async def test_the_source_endpoint_going_away_pauses_the_transfer_which_then_resumes(
        tmp_path: Path, moto: Endpoint, bucket: str) -> None:
    relay = Relay(int(moto.url.rsplit(":", 1)[1]))
    data = data_of(24 << 20, 41)
    moto.client().put_object(Bucket=bucket, Key="big.bin", Body=data)
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"))) as b:
        admin = await raised_client(a.api_port)
        await admin.call("setSandboxMappings", mappings=[
            moto.mapping(bucket, user="alice", url=relay.url)])
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        transfer = await send(client, destination["destinationId"], {"/big.bin": "/big.bin"},
                              sendRateMax=40_000)
        deadline = time.monotonic() + 60
        while (await client.call("getTransfer", transferId=transfer["transferId"]))[
                "bytesComplete"] < 4 << 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        relay.cut()
        await asyncio.sleep(3)
        seen = await client.call("getTransfer", transferId=transfer["transferId"])
        assert seen["status"] not in ("complete", "error"), seen
        relay.restore()
        done = await wait_transfer(client, transfer["transferId"])
        assert done["status"] == "complete", done["errorMessage"]
        assert (tmp_path / "b" / "sandbox" / "big.bin").read_bytes() == data
        await client.close()
        await admin.close()
    relay.cut()


async def test_garbage_collection_aborts_the_uploads_of_an_abandoned_transfer(
        tmp_path: Path, moto: Endpoint, bucket: str) -> None:
    write(tmp_path / "a" / "sandbox" / "big.bin", data_of(PART_BYTES * 4, 51))
    make_home(tmp_path / "b")
    (tmp_path / "a" / "users").parent.mkdir(exist_ok=True)
    write_users(tmp_path / "a" / "users")
    async with Server(make_settings(tmp_path / "a")) as a, \
            Server(make_settings(tmp_path / "b")) as b:
        b_admin = await raised_client(b.api_port)
        await b_admin.call("setSandboxMappings", mappings=[moto.mapping(bucket)])
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        await send(client, destination["destinationId"], {"/big.bin": "/big.bin"},
                   sendRateMax=40_000)
        deadline = time.monotonic() + 60
        while not uploads_left(moto, bucket):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await client.close()
        a.close()  # the sender goes away for good; the receiver keeps the upload
        await a.wait_closed()
        await asyncio.sleep(0.5)
        assert uploads_left(moto, bucket) == ["big.bin"]
        await b_admin.call("updateGarbageCollectSettings", timeLimitSeconds=0)
        await b_admin.call("garbageCollect")
        (record,) = await b_admin.call("recv.getTransfers")
        assert (record["status"], record["errorMessage"]) == (
            "error", "Abandoned: the sender did not come back.")
        deadline = time.monotonic() + 30
        while uploads_left(moto, bucket):
            assert time.monotonic() < deadline, "the abandoned upload was not aborted"
            await asyncio.sleep(0.1)
        assert list((tmp_path / "b" / "state" / "s3-spool").iterdir()) == []
        await b_admin.close()


async def test_a_destination_token_writes_under_its_folder_of_the_s3_sandbox(
        pair: Pair, moto: Endpoint, bucket: str) -> None:
    """A token's folder in an S3 sandbox is a key prefix (nothing to create first)."""
    write(pair.source / "src" / "t.txt", b"by token")
    bob = await AsyncClient.connect(*pair.b_address)
    await bob.auth("bob", PASSWORDS["bob"])
    token = await bob.call("createAPIToken", path="/partner", permissions=["receive"])
    await bob.close()
    destination = await pair.client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{pair.b_recv_port}",
        destinationToken=token["tokenString"])
    transfer = await send(pair.client, destination["destinationId"], {"/src": "/in"})
    done = await wait_transfer(pair.client, transfer["transferId"])
    assert done["status"] == "complete", done["errorMessage"]
    assert objects(moto, bucket) == {"incoming/bob/partner/in/t.txt": b"by token"}


@pytest.mark.timeout(180)
def test_a_sender_killed_mid_transfer_resumes_it_and_the_upload_from_its_parts(
        tmp_path: Path, moto: Endpoint, bucket: str) -> None:
    """Two server processes; the sending one is killed (SIGKILL) with parts of a file
    uploaded, and started again: its transfer resumes and completes, the parts S3 has
    are not uploaded again. The receiver's mapping gives no keys: they come from its
    environment (boto3's credential chain)."""
    relay = Relay(int(moto.url.rsplit(":", 1)[1]))
    make_home(tmp_path / "a")
    make_home(tmp_path / "b")
    chain = {"AWS_ACCESS_KEY_ID": moto.key_id, "AWS_SECRET_ACCESS_KEY": moto.secret}
    a = ServerProcess(tmp_path / "a")
    b = ServerProcess(tmp_path / "b", "--superuser", "root", env=chain)
    try:
        mapping = {k: v for k, v in moto.mapping(bucket, url=relay.url).items()
                   if k not in ("accessKeyId", "secretAccessKey")}
        b.call("--superuser", "setSandboxMappings", "--mappings=" + json.dumps([mapping]),
               user="root")
        parts = 5
        data = data_of(PART_BYTES * parts, 61)
        transfer_id = send_big(a, b, data, 30_000)
        deadline = time.monotonic() + 60
        while relay.requests["UploadPart"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        time.sleep(0.5)  # (the part on its way lands)
        before = relay.requests["UploadPart"]
        a = ServerProcess(tmp_path / "a")
        seen = wait_ended(a, transfer_id)
        assert seen["status"] == "complete", seen["errorMessage"]
        assert objects(moto, bucket) == {"big.bin": data}
        assert uploads_left(moto, bucket) == []
        assert relay.requests["UploadPart"] - before <= parts - before + 1, relay.requests
    finally:
        a.stop()
        b.stop()
        relay.cut()
