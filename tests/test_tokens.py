"""API tokens, destination tokens and shared links, against real server processes: what
each allows, and every refusal with its stable code."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.errors import CommandFailed, ConnectionFailed
from tests.conftest import PASSWORDS, ServerProcess, command, make_home

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start(servers: list[ServerProcess], home: Path, *args: str,
          users: dict[str, str] | None = None) -> ServerProcess:
    if not (home / "users").exists():
        make_home(home, users)
    proc = ServerProcess(home, "--external-address", "127.0.0.1", *args)
    servers.append(proc)
    return proc


def with_token(server: ServerProcess, token: str, *args: str, password: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    """``jetstream api`` logged in with an API token (JETSTREAM_API_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_API_")}
    env["JETSTREAM_API_TOKEN"] = token
    if password is not None:
        env["JETSTREAM_API_PASSWORD"] = password
    return subprocess.run([command("jetstream"), "api", "--api-control-port",
                           str(server.api_port), *args], capture_output=True, text=True,
                          env=env, timeout=30, stdin=subprocess.DEVNULL)


def refused(done: subprocess.CompletedProcess[str], code: str, status: int = 1) -> str:
    """The message of a refusal with ``code`` (the console writes it on stderr)."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert f"[{code}]" in done.stderr, done.stderr
    return done.stderr


def wait_manifest(server: ServerProcess, manifest_id: str, user: str = "alice") -> None:
    deadline = time.monotonic() + 30
    while server.call("getManifest", f"--manifestId={manifest_id}",
                      user=user)["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def wait_transfer(server: ServerProcess, transfer_id: str, user: str = "alice"
                  ) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        got: dict[str, Any] = server.call("getTransfer", f"--transferId={transfer_id}",
                                          user=user)
        if got["status"] not in ("pending", "sending"):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def make_token(server: ServerProcess, *args: str, user: str = "alice") -> dict[str, Any]:
    result: dict[str, Any] = server.call("createAPIToken", *args, user=user)
    return result


# -- API tokens -------------------------------------------------------------------------

def test_an_api_token_acts_as_its_owner_inside_its_folder_and_permissions(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    a = start(servers, tmp_path / "a")
    folder = tmp_path / "a" / "sandbox" / "projects" / "x"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"inside")
    (tmp_path / "a" / "sandbox" / "secret.txt").write_text("outside")
    made = make_token(a, "--path=/projects/x", "--permissions=read,send",
                      "--expiryTime=1h", "--description=build bot", '--userData={"ci": 1}')
    text = made.pop("tokenString")
    token_id = made["token"]
    assert text.startswith(f"jst.{token_id}.")
    assert made["owner"] == "alice" and made["path"] == "/projects/x"
    assert made["permissions"] == ["read", "send"] and made["passwordRequired"] is False
    assert made["ownerToken"] is None and made["description"] == "build bot"
    assert made["expiryTime"] - made["creationTime"] == pytest.approx(3600e6, abs=5e6)
    # the string is never shown again, nor stored, nor logged
    listed = a.call("getAPITokens")
    assert [t["token"] for t in listed] == [token_id]
    assert "tokenString" not in listed[0] and text not in json.dumps(listed)
    secret = text.rsplit(".", 1)[1]

    # paths are relative to the token's folder: /a.bin is /projects/x/a.bin
    manifest = json.loads(with_token(a, text, "createManifest",
                                     "--fileMappings=/a.bin:/a.bin").stdout)
    assert manifest["owner"] == "alice" and manifest["ownerToken"] == token_id
    assert manifest["ownerTokenSession"]
    wait_manifest(a, manifest["manifestId"])
    files = a.call("getManifestFiles", f"--manifestId={manifest['manifestId']}")
    assert [(f["srcPath"], f["fileSize"]) for f in files["fileMappings"]] == [("/a.bin", 6)]
    # leaving the folder, by '..' or by a symlink, is refused
    refused(with_token(a, text, "createManifest", "--fileMappings=/../../secret.txt:/s"),
            "outside_token_path")
    (folder / "out").symlink_to(tmp_path / "a" / "sandbox")
    escaped = json.loads(with_token(a, text, "createManifest",
                                    "--fileMappings=/out/secret.txt:/s").stdout)
    wait_manifest(a, escaped["manifestId"])
    failed = a.call("getManifest", f"--manifestId={escaped['manifestId']}")
    assert failed["status"] == "error" and "outside" in failed["errorMessage"]

    # what the token made is seen by it, its owner and a raised superuser; not by others
    own = a.call("createManifest", "--fileMappings=/secret.txt:/s")
    seen = json.loads(with_token(a, text, "getManifests").stdout)
    assert {m["manifestId"] for m in seen} == {manifest["manifestId"], escaped["manifestId"]}
    refused(with_token(a, text, "getManifest", f"--manifestId={own['manifestId']}"),
            "not_found")
    assert len(a.call("getManifests")) == 3
    assert a.call("getManifests", user="bob") == []

    # commands outside its permissions
    for args in (["createAPIToken"], ["send.createSharedToken",
                                      f"--manifestId={manifest['manifestId']}"],
                 ["superuser"], ["recv.downloadSharedLink", "--link=x"]):
        message = refused(with_token(a, text, *args), "token_permission_denied")
        assert "permission" in message or "superuser" in message
    info = a.call("getServerInfo")
    assert info["APITokensAvailable"] is True and set(info["tokenPermissions"]) == {
        "read", "send", "receive", "share", "tokens"}
    assert secret not in (tmp_path / "a" / "server.log").read_text()
    assert not [row for row in sqlite3.connect(tmp_path / "a" / "state" / "state.sqlite3")
                .execute("SELECT body FROM objects") if secret in row[0]]


def test_token_logins_are_refused_with_their_own_codes(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    a = start(servers, tmp_path / "a")
    plain = make_token(a)["tokenString"]
    locked = make_token(a, "--password=open sesame")["tokenString"]
    soon = make_token(a, f"--expiryTime={(time.time() + 1.5) * 1e6:.0f}")["tokenString"]

    token_id, secret = plain.split(".")[1:]
    forged = f"jst.{token_id}.{'A' * len(secret)}"
    refused(with_token(a, forged, "getManifests"), "token_invalid", 3)
    refused(with_token(a, "not-a-token", "getManifests"), "token_invalid", 3)
    refused(with_token(a, locked, "getManifests"), "token_password_wrong", 3)
    refused(with_token(a, locked, "getManifests", password="wrong"),
            "token_password_wrong", 3)
    assert with_token(a, locked, "getManifests", password="open sesame").returncode == 0
    assert a.call("getAPIToken", f"--token={locked.split('.')[1]}")["passwordRequired"]
    time.sleep(2)
    refused(with_token(a, soon, "getManifests"), "token_expired", 3)
    # a creator's permission to make tokens is its own to give
    maker = make_token(a, "--permissions=read,tokens", "--expiryTime=2h")["tokenString"]
    refused(with_token(a, maker, "createAPIToken", "--permissions=send"),
            "token_permission_denied")
    refused(with_token(a, maker, "createAPIToken", "--permissions=read"), "invalid_parameter")
    child = json.loads(with_token(a, maker, "createAPIToken", "--permissions=read",
                                  "--expiryTime=1h").stdout)
    assert child["ownerToken"] == maker.split(".")[1]


async def _session(server: ServerProcess, token: str) -> AsyncClient:
    client = await AsyncClient.connect("127.0.0.1", server.api_port)
    await client.auth_token(token)
    return client


def test_deleting_or_expiring_a_token_ends_its_sessions_at_once(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    a = start(servers, tmp_path / "a")
    doomed = make_token(a)
    short = make_token(a, f"--expiryTime={(time.time() + 2) * 1e6:.0f}")

    async def scenario() -> None:
        first = await _session(a, doomed["tokenString"])
        second = await _session(a, short["tokenString"])
        assert await first.call("getManifests") == []
        a.call("deleteAPIToken", f"--token={doomed['token']}")
        with pytest.raises((CommandFailed, ConnectionFailed), match="deleted"):
            await first.call("getManifests")
        await asyncio.sleep(2.5)  # expired meanwhile: the server closed the connection
        with pytest.raises((CommandFailed, ConnectionFailed), match="expired"):
            await second.call("getManifests")
        await first.close()
        await second.close()

    asyncio.run(scenario())
    refused(with_token(a, doomed["tokenString"], "getManifests"), "token_invalid", 3)


def test_expired_tokens_are_purged_at_start_and_tokens_can_be_turned_off(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    a = start(servers, tmp_path / "a")
    make_token(a, f"--expiryTime={(time.time() + 1) * 1e6:.0f}")
    kept = make_token(a)
    time.sleep(1.2)
    a.stop()
    a = start(servers, tmp_path / "a", "--api-disable-api-tokens",
              "--api-disable-shared-tokens")
    assert [t["token"] for t in a.call("getAPITokens")] == [kept["token"]]
    info = a.call("getServerInfo")
    assert info["APITokensAvailable"] is False and info["sharedTokensAvailable"] is False
    refused(a.api("createAPIToken", user="alice", password=PASSWORDS["alice"]),
            "tokens_disabled")
    refused(with_token(a, kept["tokenString"], "getManifests"), "tokens_disabled", 3)
    manifest = a.call("createManifest", "--fileMappings=/:/x")
    refused(a.api("send.createSharedToken", f"--manifestId={manifest['manifestId']}",
                  user="alice", password=PASSWORDS["alice"]), "tokens_disabled")


# -- destination tokens -----------------------------------------------------------------

def _trigger(home: Path, name: str) -> Path:
    """A trigger script that appends its arguments, one line a run, to ``name``.log."""
    folder = home / "triggers"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/{name}.log"\ncat > /dev/null\n')
    script.chmod(0o755)
    return folder / f"{name}.log"


def test_a_destination_token_authorizes_transfers_into_its_folder_only(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    complete_log = _trigger(tmp_path / "b", "recv.transferComplete")
    started_log = _trigger(tmp_path / "b", "recv.transferStarted")
    a = start(servers, tmp_path / "a")
    b = start(servers, tmp_path / "b", "--trigger-dir", str(tmp_path / "b" / "triggers"))
    (tmp_path / "b" / "sandbox" / "inbox" / "partner").mkdir(parents=True)
    (tmp_path / "a" / "sandbox" / "out.bin").write_bytes(os.urandom(300_000))
    receiver = make_token(b, "--path=/inbox/partner", "--permissions=receive")
    no_receive = make_token(b, "--permissions=read")
    expiring = make_token(b, "--permissions=receive",
                          f"--expiryTime={(time.time() + 1) * 1e6:.0f}")
    deleted = make_token(b, "--permissions=receive")
    b.call("deleteAPIToken", f"--token={deleted['token']}")
    manifest = a.call("createManifest", "--fileMappings=/out.bin:/out.bin", user="bob")
    wait_manifest(a, manifest["manifestId"], "bob")

    def send(token: dict[str, Any], *extra: str) -> dict[str, Any]:
        destination = a.call("createDestination",
                             f"--destinationAddress=127.0.0.1:{b.recv_port}",
                             f"--destinationToken={token['tokenString']}", user="bob")
        assert destination["destinationToken"] == token["token"]
        assert token["tokenString"] not in json.dumps(destination)
        transfer = a.call("createTransfer", f"--destinationId={destination['destinationId']}",
                          f"--manifestId={manifest['manifestId']}", *extra, user="bob")
        return wait_transfer(a, transfer["transferId"], "bob")

    done = send(receiver, "--destinationPath=/sub")
    assert done["status"] == "complete", done["errorMessage"]
    arrived = tmp_path / "b" / "sandbox" / "inbox" / "partner" / "sub" / "out.bin"
    assert arrived.read_bytes() == (tmp_path / "a" / "sandbox" / "out.bin").read_bytes()
    expected = f"{done['transferId']} alice {receiver['token']}"
    deadline = time.monotonic() + 10
    while not complete_log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert complete_log.read_text().split("\n")[0] == expected
    assert started_log.read_text().split("\n")[0] == expected
    (record,) = b.call("recv.getTransfers")
    assert record["token"] == receiver["token"] and record["username"] == "alice"

    time.sleep(1)  # (the expiring token is past its time)
    for token, code in ((no_receive, "token_permission_denied"),
                        (expiring, "token_expired"), (deleted, "token_invalid")):
        failed = send(token)
        assert failed["status"] == "error" and failed["errorCode"] == code, failed
        assert failed["errorMessage"].startswith(f"{code}: The receiving server refused")


# -- shared links -----------------------------------------------------------------------

def get(server: ServerProcess, link: str, *args: str, passphrase: str | None = None,
        user: str = "bob") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    env["JETSTREAM_API_PASSWORD"] = PASSWORDS[user]
    if passphrase is not None:
        env["JETSTREAM_LINK_PASSPHRASE"] = passphrase
    return subprocess.run([command("jetstream"), "get", "--api-control-port",
                           str(server.api_port), "--user", user, link, *args],
                          capture_output=True, text=True, env=env, timeout=90,
                          stdin=subprocess.DEVNULL)


def test_a_shared_link_lets_someone_without_an_account_pull_the_files(
        servers: list[ServerProcess], tmp_path: Path) -> None:
    sent_log = _trigger(tmp_path / "a", "recv.transferComplete")  # (not fired on a)
    a = start(servers, tmp_path / "a", "--trigger-dir", str(tmp_path / "a" / "triggers"),
              users={"alice": PASSWORDS["alice"]})  # (bob has no account on a)
    received_log = _trigger(tmp_path / "b", "recv.transferComplete")
    b = start(servers, tmp_path / "b", "--trigger-dir", str(tmp_path / "b" / "triggers"))
    shared = tmp_path / "a" / "sandbox" / "film"
    shared.mkdir()
    for i in range(3):
        (shared / f"reel {i}.mov").write_bytes(os.urandom(200_000 + i))
    manifest = a.call("createManifest", "--fileMappings=/film:/film")
    wait_manifest(a, manifest["manifestId"])
    made = a.call("send.createSharedToken", f"--manifestId={manifest['manifestId']}",
                  "--downloadLimit=1", "--password=pass phrase", "--expiryTime=1d")
    link = made["link"]
    assert link.startswith(f"jetstream://127.0.0.1:{a.api_port}/{made['tokenString']}?")
    assert made["downloadLimit"] == 1 and made["downloadCount"] == 0
    assert made["passwordRequired"] is True and made["manifestId"] == manifest["manifestId"]

    refused(get(b, link, "/incoming", passphrase="wrong"), "token_password_wrong")
    done = get(b, link, "/incoming", passphrase="pass phrase")
    assert done.returncode == 0, done.stderr
    for i in range(3):
        name = f"reel {i}.mov"
        assert (tmp_path / "b" / "sandbox" / "incoming" / "film" / name).read_bytes() == \
            (shared / name).read_bytes()
    assert a.call("send.getSharedToken", f"--token={made['token']}")["downloadCount"] == 1
    (record,) = b.call("recv.getTransfers", user="bob")
    assert record["status"] == "complete" and record["username"] == "bob"
    deadline = time.monotonic() + 10
    while not received_log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received_log.read_text().split() == [record["transferId"], "bob", record["token"]]
    assert not sent_log.exists()
    (transfer,) = a.call("send.getTransfers")
    assert transfer["ownerToken"] == made["token"] and transfer["status"] == "complete"

    refused(get(b, link, "/again", passphrase="pass phrase"), "download_limit_reached")
    soon = a.call("send.createSharedToken", f"--manifestId={manifest['manifestId']}",
                  f"--expiryTime={(time.time() + 1) * 1e6:.0f}")
    gone = a.call("send.createSharedToken", f"--manifestId={manifest['manifestId']}")
    a.call("send.deleteSharedToken", f"--token={gone['token']}")
    time.sleep(1.2)
    refused(get(b, soon["link"]), "token_expired")
    refused(get(b, gone["link"]), "token_invalid")
    refused(get(b, "https://example.invalid/x"), "invalid_parameter")
    # the destination folder is made only once it is known to be inside the sandbox
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "b" / "sandbox" / "out").symlink_to(outside)
    other = a.call("send.createSharedToken", f"--manifestId={manifest['manifestId']}")
    refused(get(b, other["link"], "/out/new"), "permission_denied")
    assert list(outside.iterdir()) == []
    # a shared link's token opens nothing but its download
    refused(with_token(a, made["tokenString"], "getManifests", password="pass phrase"),
            "token_permission_denied")
