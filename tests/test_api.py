"""The control API against a real server on port 0 in this process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.errors import CommandFailed
from jetstream_server.protocol.lines import MAX_LINE_BYTES
from jetstream_server.server import Server
from tests.conftest import PASSWORDS

Connect = Callable[..., Any]


async def _raw(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.api_port)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    line: bytes) -> dict[str, Any]:
    writer.write(line)
    await writer.drain()
    response: dict[str, Any] = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
    return response


async def test_bad_lines_get_errors_and_the_connection_keeps_serving(server: Server) -> None:
    reader, writer = await _raw(server)
    cases = [
        (b"{oops\n", "malformed_request"),
        (b'{"request": "noSuchCommand", "id": 1}\n', "unknown_command"),
        (b'{"request": "getDestinations", "id": 2}\n', "auth_required"),
        (b'{"request": "getTransfers", "id": 2}\n', "ambiguous_command"),
        (b'{"request": "auth", "parameters": {"user": "alice"}, "id": 3}\n',
         "missing_parameter"),
        (b'{"request": "auth", "parameters": {"user": 5, "password": "x"}, "id": 4}\n',
         "invalid_parameter"),
        (b'{"request": "getServerInfo", "parameters": {"verbose": true}, "id": 5}\n',
         "invalid_parameter"),
    ]
    for line, code in cases:
        response = await _exchange(reader, writer, line)
        assert response["status"] == "error"
        assert response["code"] == code
        assert response["result"] is None and response["message"]
    ok = await _exchange(reader, writer, b'{"request": "getServerInfo", "id": "last"}\n')
    assert ok["status"] == "success" and ok["id"] == "last"
    writer.close()


async def test_an_over_long_line_is_answered_then_the_connection_closes(
        server: Server, connect: Connect) -> None:
    reader, writer = await _raw(server)
    writer.write(b'{"request": "getServerInfo", "parameters": {"x": "' +
                 b"a" * (MAX_LINE_BYTES + 10))
    await writer.drain()
    response = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
    assert response["code"] == "line_too_long"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    other = await connect()  # and the server goes on serving everyone else
    assert (await other.call("getServerInfo"))["apiControlPort"] == server.api_port


async def test_server_info_has_the_jetstream_fields(server: Server, connect: Connect) -> None:
    client = await connect()
    info = await client.call("getServerInfo")
    for key in ("allowRemoteControl", "apiControlPort", "apiVersion", "authRequired",
                "hostName", "serverId", "serverName", "version"):
        assert key in info
    assert info["apiControlPort"] == server.api_port
    assert info["allowRemoteControl"] is False and info["authRequired"] is True
    assert len(info["serverId"]) == 32 and int(info["serverId"], 16) >= 0
    assert "configuration" not in info
    root = await connect("root")
    await root.call("superuser")
    assert (await root.call("getServerInfo"))["configuration"]["api_port"] == 0


async def test_auth_failures_reveal_nothing_and_are_slowed(connect: Connect) -> None:
    client = await connect()
    with pytest.raises(CommandFailed) as unknown:
        await client.auth("nobody", "x")
    with pytest.raises(CommandFailed) as wrong:
        await client.auth("alice", "x")
    assert unknown.value.code == wrong.value.code == "auth_failed"
    assert unknown.value.message == wrong.value.message
    started = time.monotonic()
    with pytest.raises(CommandFailed):
        await client.auth("alice", "still wrong")
    assert time.monotonic() - started >= 0.5  # third failure from this address waits
    with pytest.raises(CommandFailed, match="auth_required"):
        await client.call("send.getDestinations")


async def test_superuser_needs_to_be_listed_and_raised(connect: Connect) -> None:
    alice = await connect("alice")
    with pytest.raises(CommandFailed) as info:
        await alice.call("superuser")
    assert info.value.code == "permission_denied"
    root = await connect("root")
    assert await root.call("superuser") == {"user": "root", "superuser": True}


async def _make_manifest(client: AsyncClient, home: Path, name: str = "f.bin") -> str:
    user_dir = home / "sandbox" / "src"
    user_dir.mkdir(exist_ok=True)
    (user_dir / name).write_bytes(b"x" * 1000)
    manifest = await client.call("send.createManifest",
                                 fileMappings={f"/src/{name}": f"/dst/{name}"})
    assert manifest["status"] == "pending" and manifest["processing"] is True
    done = await client.wait_for_manifest(manifest["manifestId"])
    assert done["status"] == "complete", done
    return str(manifest["manifestId"])


async def test_objects_are_private_to_their_owner_and_a_raised_superuser(
        connect: Connect, home: Path, silent_port: int) -> None:
    alice, bob, root = await connect("alice"), await connect("bob"), await connect("root")
    destination = await alice.call("createDestination",
                                   destinationAddress=f"127.0.0.1:{silent_port}")
    manifest_id = await _make_manifest(alice, home)
    transfer = await alice.call("createTransfer", destinationId=destination["destinationId"],
                                manifestId=manifest_id)
    ids = [("getDestination", "destinationId", destination["destinationId"]),
           ("getManifest", "manifestId", manifest_id),
           ("getManifestFiles", "manifestId", manifest_id),
           ("getTransfer", "transferId", transfer["transferId"])]
    for command, key, value in ids:
        with pytest.raises(CommandFailed) as info:
            await bob.call(command, **{key: value})
        assert info.value.code == "not_found"
    for command, key, value in [("deleteDestination", "destinationId",
                                 destination["destinationId"]),
                                ("deleteManifest", "manifestId", manifest_id),
                                ("cancelTransfer", "transferId", transfer["transferId"]),
                                ("deleteTransfer", "transferId", transfer["transferId"])]:
        with pytest.raises(CommandFailed, match="not_found"):
            await bob.call(command, **{key: value})
    with pytest.raises(CommandFailed, match="not_found"):
        await bob.call("updateObjectUserData", objectId=manifest_id, userData={"x": 1})
    assert await bob.call("getDestinations") == []
    assert await bob.call("getManifests") == []
    assert await bob.call("send.getTransfers") == []
    assert await bob.call("recv.getTransfers") == []
    with pytest.raises(CommandFailed, match="not_found"):  # bob cannot use alice's objects
        await bob.call("createTransfer", destinationId=destination["destinationId"],
                       manifestId=manifest_id)
    # an unraised superuser is an ordinary user; raised, root sees and acts on everything
    assert await root.call("getManifests") == []
    await root.call("superuser")
    assert [m["manifestId"] for m in await root.call("getManifests")] == [manifest_id]
    cancelled = await root.call("cancelTransfer", transferId=transfer["transferId"])
    assert cancelled["status"] == "cancelled"
    # and alice still has her transfer, unchanged by bob
    assert (await alice.call("getTransfer", transferId=transfer["transferId"]))["status"] \
        == "cancelled"


async def test_create_destination_is_idempotent_and_hides_credentials(
        connect: Connect) -> None:
    alice = await connect("alice")
    params = {"destinationAddress": "localhost:9100", "sendRateMax": 100000,
              "destinationUser": "carol", "destinationPassword": "hunter2"}
    first = await alice.call("createDestination", **params)
    again = await alice.call("createDestination", **params)
    other = await alice.call("createDestination", **{**params, "sendRateMax": 5000})
    assert first["destinationId"] == again["destinationId"] != other["destinationId"]
    assert first["destinationIP"] == "127.0.0.1" and first["destinationPort"] == 9100
    assert first["sendRateMax"] == 100000 and first["dataTransport"] == "udp"
    for structure in (first, *(await alice.call("getDestinations"))):
        assert "hunter2" not in orjson.dumps(structure).decode()
    default_port = await alice.call("createDestination", destinationAddress="127.0.0.1")
    assert default_port["destinationPort"] == 8886
    for bad, message in [({"destinationAddress": "h:0"}, "1-65535"),
                         ({"destinationAddress": "h", "sendRateMax": -1}, "kbit/s"),
                         ({"destinationAddress": "h", "dataTransport": "sctp"}, "'udp'"),
                         ({"destinationAddress": "no-such-host.invalid"}, "Cannot resolve"),
                         ({"destinationAddress": "h", "destinationToken": "t"},
                          "must be a token string")]:
        with pytest.raises(CommandFailed, match=message):
            await alice.call("createDestination", **bad)
    deleted = await alice.call("deleteDestination", destinationId=other["destinationId"])
    assert deleted["destinationId"] == other["destinationId"]
    with pytest.raises(CommandFailed, match="not_found"):
        await alice.call("getDestination", destinationId=other["destinationId"])


async def test_manifests_from_python_mappings_and_their_errors(connect: Connect,
                                                               home: Path) -> None:
    alice = await connect("alice")
    (home / "sandbox" / "in").mkdir()
    (home / "sandbox" / "in" / "a.txt").write_bytes(b"hello")
    manifest = await alice.call("createManifest", mappings={"/out/a.txt": "/in/a.txt"},
                                userData={"job": 1})
    done = await alice.wait_for_manifest(manifest["manifestId"])
    assert (done["totalFiles"], done["totalSize"], done["userData"]) == (1, 5, {"job": 1})
    files = await alice.call("getManifestFiles", manifestId=manifest["manifestId"])
    assert files["fileMappings"][0]["srcPath"] == "/in/a.txt"
    assert files["fileMappings"][0]["destPath"] == "/out/a.txt"
    bad = await alice.call("createManifest", fileMappings=["/in/missing.txt:/x"])
    failed = await alice.wait_for_manifest(bad["manifestId"])
    assert failed["status"] == "error" and "/in/missing.txt" in failed["errorMessage"]
    assert failed["totalFiles"] is None
    with pytest.raises(CommandFailed, match="exactly one of"):
        await alice.call("createManifest")
    with pytest.raises(CommandFailed, match="SOURCE:DESTINATION"):
        await alice.call("createManifest", fileMappings=["nocolon"])
    with pytest.raises(CommandFailed, match="invalid_state"):
        await _transfer_with_failed_manifest(alice, bad["manifestId"])
    deleted = await alice.call("deleteManifest", manifestId=bad["manifestId"])
    assert deleted["manifestId"] == bad["manifestId"]


async def test_a_transfer_of_a_manifest_still_being_built_waits_for_it(
        connect: Connect, home: Path, silent_port: int) -> None:
    alice = await connect("alice")
    folder = home / "sandbox" / "many"
    folder.mkdir()
    for n in range(2000):
        (folder / f"{n:05}.txt").write_bytes(b"x")
    destination = await alice.call("createDestination",
                                   destinationAddress=f"127.0.0.1:{silent_port}")
    manifest = await alice.call("createManifest", fileMappings=["/many:/in/many"])
    assert manifest["status"] == "pending"
    transfer = await alice.call("createTransfer", destinationId=destination["destinationId"],
                                manifestId=manifest["manifestId"])  # at once, as users do
    assert (transfer["totalFiles"], transfer["totalBytes"]) == (2000, 2000)
    for name in ("waitForManifest", "send.waitForManifest"):
        waited = await alice.call(name, manifestId=manifest["manifestId"])
        assert (waited["status"], waited["totalFiles"]) == ("complete", 2000)
    with pytest.raises(CommandFailed, match="timeoutSeconds must be between 0 and 3600"):
        await alice.call("waitForManifest", manifestId=manifest["manifestId"],
                         timeoutSeconds=-1)


async def _transfer_with_failed_manifest(client: AsyncClient, manifest_id: str) -> None:
    destination = await client.call("createDestination", destinationAddress="127.0.0.1:9")
    await client.call("createTransfer", destinationId=destination["destinationId"],
                      manifestId=manifest_id)


async def _wait_status(client: AsyncClient, transfer_id: str, status: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            transfer: dict[str, Any] = await client.call("getTransfer", transferId=transfer_id)
            if transfer["status"] == status:
                return transfer
            await asyncio.sleep(0.02)


async def test_transfers_queue_per_destination_and_move_as_the_table_says(
        connect: Connect, home: Path, silent_port: int) -> None:
    alice = await connect("alice")
    destination = await alice.call("createDestination",
                                   destinationAddress=f"127.0.0.1:{silent_port}")
    dest_id = destination["destinationId"]
    manifest_id = await _make_manifest(alice, home)
    with pytest.raises(CommandFailed, match="not_found"):
        await alice.call("createTransfer", destinationId="f" * 32, manifestId=manifest_id)
    first = await alice.call("createTransfer", destinationId=dest_id,
                             manifestId=manifest_id, userData={"k": "v"},
                             destinationPath="/incoming")
    tid = first["transferId"]
    assert first["priority"] == 100 and first["totalBytes"] == 1000
    assert first["totalFiles"] == 1 and first["sendRateMax"] == 0
    assert first["checkpointFrequencySeconds"] == 30 and first["requestTime"] is not None
    assert first["endTime"] is None
    running = await _wait_status(alice, tid, "sending")  # the receiver never answers
    assert running["startTime"] is not None
    second = await alice.call("createTransfer", destinationId=dest_id,
                              manifestId=manifest_id, priority=5)
    assert second["status"] == "pending"  # one transfer per destination at a time
    got = await alice.call("getDestination", destinationId=dest_id)
    assert got["numTransfersQueued"] == 1
    assert (await alice.call("suspendTransfer", transferId=tid))["status"] == "suspended"
    await _wait_status(alice, second["transferId"], "sending")  # the next one runs
    with pytest.raises(CommandFailed, match="Cannot suspend transfer"):
        await alice.call("suspendTransfer", transferId=tid)
    assert (await alice.call("resumeTransfer", transferId=tid))["status"] == "pending"
    changed = await alice.call("setSendRate", transferId=tid, sendRateMax=2000)
    assert changed["sendRateMax"] == 2000
    failed = await alice.call("failTransfer", transferId=tid, errorMessage="operator said so")
    assert failed["status"] == "error" and failed["errorMessage"] == "operator said so"
    assert failed["endTime"] is not None and failed["processing"] is False
    for action in ("cancelTransfer", "suspendTransfer", "failTransfer"):
        with pytest.raises(CommandFailed, match="invalid_state"):
            await alice.call(action, transferId=tid)
    again = await alice.call("resumeTransfer", transferId=tid)  # a failed one is retried
    assert again["status"] == "pending" and again["errorMessage"] is None
    assert again["endTime"] is None and again["processing"] is True
    await alice.call("failTransfer", transferId=tid, errorMessage="operator said so")
    with pytest.raises(CommandFailed, match="can no longer change"):
        await alice.call("setSendRate", transferId=tid, sendRateMax=1)
    with pytest.raises(CommandFailed, match="unfinished"):
        await alice.call("deleteDestination", destinationId=dest_id)
    with pytest.raises(CommandFailed, match="unfinished"):
        await alice.call("deleteManifest", manifestId=manifest_id)
    cancelled = await alice.call("cancelTransfer", transferId=second["transferId"])
    assert cancelled["status"] == "cancelled"
    await alice.call("deleteTransfer", transferId=tid)
    with pytest.raises(CommandFailed, match="not_found"):
        await alice.call("getTransfer", transferId=tid)
    listed = await alice.call("send.getTransfers", destinationId=dest_id)
    assert [t["transferId"] for t in listed] == [second["transferId"]]
    await alice.call("deleteDestination", destinationId=dest_id)


async def test_user_data_merges_and_deletes_on_every_object(
        connect: Connect, home: Path, silent_port: int) -> None:
    alice = await connect("alice")
    destination = await alice.call("createDestination",
                                   destinationAddress=f"127.0.0.1:{silent_port}",
                                   userData={"a": 1})
    manifest_id = await _make_manifest(alice, home)
    transfer = await alice.call("createTransfer", destinationId=destination["destinationId"],
                                manifestId=manifest_id, userData={"a": 1})
    for object_id in (destination["destinationId"], manifest_id, transfer["transferId"]):
        updated = await alice.call("updateObjectUserData", objectId=object_id,
                                   userData={"b": [1, 2]})
        assert updated["userData"]["b"] == [1, 2]
        removed = await alice.call("deleteObjectUserData", objectId=object_id, key="b")
        assert "b" not in removed["userData"]
        with pytest.raises(CommandFailed, match="no user data key 'b'"):
            await alice.call("deleteObjectUserData", objectId=object_id, key="b")
    with pytest.raises(CommandFailed, match="larger than"):
        await alice.call("updateObjectUserData", objectId=manifest_id,
                         userData={"big": "x" * 70_000})


async def test_async_commands_queue_and_report_across_connections(connect: Connect) -> None:
    alice = await connect("alice")
    queued = await alice.call("createDestinationAsync", destinationAddress="127.0.0.1:9")
    request_id = queued["requestId"]
    assert isinstance(request_id, int)
    other = await connect("alice")
    result = await other.call("getRequestResult", requestId=request_id)
    assert result["destinationAddress"] == "127.0.0.1:9"
    status = await other.call("getRequestStatus", requestId=request_id)
    assert status["processing"] is False and status["status"] == "success"
    failing = await alice.call("send.getManifestAsync", manifestId="0" * 32)
    with pytest.raises(CommandFailed) as info:
        await alice.call("getRequestResult", requestId=failing["requestId"])
    assert info.value.code == "not_found"
    bob = await connect("bob")
    with pytest.raises(CommandFailed, match="not_found"):
        await bob.call("getRequestStatus", requestId=request_id)


async def test_many_idle_connections_do_not_stop_the_server_answering(
        server: Server, connect: Connect) -> None:
    idle = [await _raw(server) for _ in range(500)]
    client = await connect("alice")
    for _ in range(5):
        assert await asyncio.wait_for(client.call("getDestinations"), 10) == []
    reader, writer = idle[-1]
    assert (await _exchange(reader, writer, b'{"request": "getServerInfo"}\n'))["status"] \
        == "success"
    for _, writer in idle:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    reader, writer = await _raw(server)
    login = orjson.dumps({"request": "auth", "parameters": {
        "user": "alice", "password": PASSWORDS["alice"]}}) + b"\n"
    assert (await _exchange(reader, writer, login))["status"] == "success"
    writer.write(b"".join(orjson.dumps({"request": "getServerInfo", "id": i}) + b"\n"
                          for i in range(200)))
    await writer.drain()
    ids = [orjson.loads(await asyncio.wait_for(reader.readline(), 10))["id"]
           for _ in range(200)]
    assert ids == list(range(200))
    writer.close()


async def test_hostile_source_paths_cannot_leave_the_sandbox(connect: Connect,
                                                             home: Path) -> None:
    alice = await connect("alice")
    os.symlink("/etc", home / "sandbox" / "etc-link")
    for mapping in ({"/etc-link/passwd": "/x"}, {"/../../etc/passwd": "/x"}):
        manifest = await alice.call("createManifest", fileMappings=mapping)
        failed = await alice.wait_for_manifest(manifest["manifestId"])
        assert failed["status"] == "error"
        assert "passwd" in failed["errorMessage"] or ".." in failed["errorMessage"]
