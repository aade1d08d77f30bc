"""Overwrite rules and sync: what the receiver does with files that exist (always, never,
ifNewer, ifDifferent, ifChecksumDiffers), what it reports, and what is sent."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, ServerProcess, command, make_home, make_settings
from tests.test_triggers import install, wait_calls
from tests.transfer_helpers import send, wait_transfer

pytestmark = pytest.mark.timeout(120)
OLD, NEW = 1_500_000_000, 1_600_000_000  # modification times, in seconds


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[AsyncClient, str, Path, Path, Path]]:
    """A sending server's client and a destination on a receiving server with triggers;
    the source folder, the receiver's folder, its trigger folder."""
    triggers = tmp_path / "triggers"
    install(triggers, "recv.transferComplete")
    install(triggers, "recv.transferComplete.json")
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"), trigger_dir=triggers)) as b:
        client = await AsyncClient.connect("127.0.0.1", a.api_port)
        await client.auth("alice", PASSWORDS["alice"])
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        source, there = tmp_path / "a" / "sandbox" / "src", tmp_path / "b" / "sandbox" / "in"
        source.mkdir()
        there.mkdir()
        yield client, destination["destinationId"], source, there, triggers
        await client.close()


def write(path: Path, data: bytes, mtime: int) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


async def copy(client: AsyncClient, destination_id: str, overwrite: str
               ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Send src/ to in/ with the rule: the final Transfer, and getTransferFiles by path."""
    transfer = await send(client, destination_id, {"/src": "/in"}, overwrite=overwrite)
    done = await wait_transfer(client, transfer["transferId"])
    assert done["status"] == "complete", done["errorMessage"]
    files = await client.call("getTransferFiles", transferId=transfer["transferId"])
    return done, {f["destPath"]: f for f in files["fileMappings"]}


async def test_never_keeps_existing_files_and_reports_them(
        pair: tuple[AsyncClient, str, Path, Path, Path]) -> None:
    client, destination_id, source, there, triggers = pair
    write(source / "kept.txt", b"new content", NEW)
    write(source / "fresh.txt", b"fresh", NEW)
    write(there / "kept.txt", b"old", OLD)
    done, files = await copy(client, destination_id, "never")
    assert (there / "kept.txt").read_bytes() == b"old"
    assert os.stat(there / "kept.txt").st_mtime == OLD
    assert (there / "fresh.txt").read_bytes() == b"fresh"
    assert (done["overwrite"], done["filesSkipped"], done["filesComplete"]) == ("never", 1, 1)
    assert files["/in/kept.txt"]["status"] == "skipped"
    assert files["/in/fresh.txt"]["status"] == "complete"
    # the trigger lists the files written, and says what was kept and why
    (plain,) = await wait_calls(triggers, "recv.transferComplete")
    (meta,) = await wait_calls(triggers, "recv.transferComplete.json")
    assert plain["stdin"] == f"/in/fresh.txt {there}/fresh.txt\n"
    assert json.loads(meta["stdin"]) == {
        "inputFiles": ["/in/fresh.txt"], "outputFiles": [f"{there}/fresh.txt"],
        "userData": {}, "overwrite": "never", "skippedFiles": ["/in/kept.txt"],
        "skippedOutputFiles": [f"{there}/kept.txt"]}


async def test_if_newer_replaces_only_older_files(
        pair: tuple[AsyncClient, str, Path, Path, Path]) -> None:
    client, destination_id, source, there, _ = pair
    write(source / "older-there.txt", b"sent", NEW)
    write(there / "older-there.txt", b"there", OLD)
    write(source / "newer-there.txt", b"sent", OLD)
    write(there / "newer-there.txt", b"there", NEW)
    done, files = await copy(client, destination_id, "ifNewer")
    assert (there / "older-there.txt").read_bytes() == b"sent"
    assert os.stat(there / "older-there.txt").st_mtime == NEW
    assert (there / "newer-there.txt").read_bytes() == b"there"
    assert done["filesSkipped"] == 1
    assert files["/in/newer-there.txt"]["status"] == "skipped"


async def test_if_different_compares_size_and_modification_time(
        pair: tuple[AsyncClient, str, Path, Path, Path]) -> None:
    client, destination_id, source, there, _ = pair
    for name in ("same", "other-time", "other-size"):
        write(source / name, b"0123456789", NEW)
    write(there / "same", b"abcdefghij", NEW)  # same size and time: taken as the same
    write(there / "other-time", b"0123456789", OLD)
    write(there / "other-size", b"01234", NEW)
    done, files = await copy(client, destination_id, "ifDifferent")
    assert (done["filesComplete"], done["filesSkipped"]) == (2, 1)
    assert (there / "same").read_bytes() == b"abcdefghij"
    assert (there / "other-time").read_bytes() == b"0123456789"
    assert os.stat(there / "other-time").st_mtime == NEW
    assert (there / "other-size").read_bytes() == b"0123456789"
    assert [files[f"/in/{n}"]["status"] for n in ("same", "other-time", "other-size")] == \
        ["skipped", "complete", "complete"]


async def test_if_checksum_differs_sends_about_the_changed_block(
        pair: tuple[AsyncClient, str, Path, Path, Path]) -> None:
    client, destination_id, source, there, triggers = pair
    size = 8_000_000
    data = bytearray(os.urandom(size))
    write(there / "big.bin", bytes(data), OLD)
    data[5_000_000:5_000_100] = os.urandom(100)  # one block changed
    write(source / "big.bin", bytes(data), NEW)
    grown = os.urandom(3_000_000)
    write(there / "grown.bin", grown[:2_000_000], OLD)  # what is there is the start
    write(source / "grown.bin", grown, NEW)
    same = os.urandom(500_000)
    write(there / "same.bin", same, OLD)
    write(source / "same.bin", same, NEW)
    done, files = await copy(client, destination_id, "ifChecksumDiffers")
    assert (there / "big.bin").read_bytes() == bytes(data)
    assert os.stat(there / "big.bin").st_mtime == NEW
    assert (there / "grown.bin").read_bytes() == grown
    assert (there / "same.bin").read_bytes() == same
    assert [files[f"/in/{n}"]["status"] for n in ("big.bin", "grown.bin", "same.bin")] == \
        ["complete", "complete", "skipped"]
    # about one 64 KiB chunk of big.bin, and grown.bin's new million bytes, were sent
    sent = done["blocksSent"] * done["blockSize"]
    assert sent < 1_000_000 + 4 * 65536 + 3 * done["blockSize"], sent
    assert not list(there.glob(".jetstream-*"))  # no temporary file left
    (meta,) = await wait_calls(triggers, "recv.transferComplete.json")
    assert json.loads(meta["stdin"])["skippedFiles"] == ["/in/same.bin"]


async def test_always_is_the_default_and_a_bad_rule_is_refused(
        pair: tuple[AsyncClient, str, Path, Path, Path]) -> None:
    client, destination_id, source, there, triggers = pair
    write(source / "a.txt", b"new", NEW)
    write(there / "a.txt", b"old", OLD)
    transfer = await send(client, destination_id, {"/src": "/in"})
    done = await wait_transfer(client, transfer["transferId"])
    assert (there / "a.txt").read_bytes() == b"new" and done["overwrite"] == "always"
    (meta,) = await wait_calls(triggers, "recv.transferComplete.json")
    assert "overwrite" not in json.loads(meta["stdin"])  # (the documented keys only)
    response = await client.request("createTransfer", {
        "destinationId": destination_id, "manifestId": transfer["manifestId"],
        "overwrite": "sometimes"})
    assert response["code"] == "invalid_parameter"
    assert "overwrite must be one of always, never, ifNewer" in response["message"]


def test_second_copy_of_an_unchanged_folder_sends_no_file_data(
        two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    a, b = two_servers
    folder = tmp_path / "a" / "sandbox" / "thousand"
    folder.mkdir()
    for i in range(1000):
        write(folder / f"file {i:04}.txt", os.urandom(1000 + i), OLD + i)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")},
           "JETSTREAM_API_PASSWORD": PASSWORDS["alice"],
           "JETSTREAM_DESTINATION_PASSWORD": PASSWORDS["bob"]}

    def cp() -> tuple[dict[str, Any], float]:
        began = time.monotonic()
        done = subprocess.run(
            [command("jetstream"), "cp", "--api-control-port", str(a.api_port), "--user",
             "alice", "--json", "--overwrite", "ifDifferent", "/thousand",
             f"bob@127.0.0.1:{b.recv_port}:/in"], capture_output=True, text=True, env=env,
            timeout=90, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        last = json.loads(done.stdout.splitlines()[-1])
        return a.call("send.getTransfer", f"--transferId={last['transferId']}"), \
            time.monotonic() - began

    first, _ = cp()
    assert (first["filesComplete"], first["filesSkipped"]) == (1000, 0)
    second, seconds = cp()
    assert (second["filesComplete"], second["filesSkipped"]) == (0, 1000)
    assert second["bytesComplete"] == second["totalBytes"]
    # only the metadata went (the files' data is 1.5 MB)
    assert second["blocksSent"] * second["blockSize"] < 100_000, second
    print(f"second copy of 1000 unchanged files: {seconds:.2f} s")
    write(folder / "file 0007.txt", b"changed", NEW)
    third, _ = cp()
    assert (third["filesComplete"], third["filesSkipped"]) == (1, 999)
    there = tmp_path / "b" / "sandbox" / "in" / "thousand"
    assert (there / "file 0007.txt").read_bytes() == b"changed"
