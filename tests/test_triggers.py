"""Triggers: real scripts run by real servers, their arguments and stdin compared exactly."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetstream_server.client import AsyncClient
from jetstream_server.server import Server
from tests.conftest import PASSWORDS, ServerProcess, make_home, make_settings
from tests.transfer_helpers import send, wait_transfer

CAPTURE = """#!/usr/bin/env python3
import json, os, sys, time
start = time.time()
with open(os.path.join(os.environ["JETSTREAM_TRIGGER_DIR"], "started.jsonl"), "a") as f:
    f.write(json.dumps({{"event": {name!r}, "args": sys.argv[1:]}}) + "\\n")
data = sys.stdin.buffer.read()
time.sleep({sleep})
record = {{"event": {name!r}, "args": sys.argv[1:], "stdin": data.decode(),
          "cwd": os.getcwd(), "env": dict(os.environ), "start": start, "end": time.time()}}
with open(os.path.join(os.environ["JETSTREAM_TRIGGER_DIR"], "calls.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


def install(trigger_dir: Path, name: str, sleep: float = 0.0) -> None:
    trigger_dir.mkdir(exist_ok=True)
    script = trigger_dir / name
    script.write_text(CAPTURE.format(name=name, sleep=sleep))
    script.chmod(0o755)


def calls(trigger_dir: Path, event: str | None = None) -> list[dict[str, Any]]:
    path = trigger_dir / "calls.jsonl"
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [c for c in found if event is None or c["event"] == event]


async def wait_calls(trigger_dir: Path, event: str, count: int = 1,
                     timeout_s: float = 20) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout_s):
        while len(found := calls(trigger_dir, event)) < count:
            await asyncio.sleep(0.02)
    return found



async def _client(server: Server, user: str = "alice") -> AsyncClient:
    client = await AsyncClient.connect("127.0.0.1", server.api_port)
    await client.auth(user, PASSWORDS[user])
    return client


async def test_launch_gets_the_real_control_port(tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "launch")
    async with Server(make_settings(make_home(tmp_path / "h"), trigger_dir=triggers)) as server:
        (launch,) = await wait_calls(triggers, "launch")
        assert launch["args"] == [str(server.api_port)] and server.api_port != 0


async def test_destination_triggers_name_the_destination_and_the_client(
        tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "send.destinationCreated")
    install(triggers, "send.destinationDeleted")
    async with Server(make_settings(make_home(tmp_path / "h"), trigger_dir=triggers)) as server:
        client = await _client(server)
        client_port = client._writer.get_extra_info("sockname")[1]
        created = await client.call("createDestination", destinationAddress="localhost:9100")
        again = await client.call("createDestination", destinationAddress="localhost:9100")
        assert again["destinationId"] == created["destinationId"]  # the same one, answered
        await client.call("createDestination", destinationAddress="[::1]:9101")
        await client.call("deleteDestination", destinationId=created["destinationId"])
        (deleted,) = await wait_calls(triggers, "send.destinationDeleted")
        await client.close()
    made = calls(triggers, "send.destinationCreated")
    me = f"127.0.0.1:{client_port}"
    # every successful createDestination, a destination that existed too (as JetStream's
    # documentation says); an IPv6 address in brackets, as <ip>:<port> must be read
    assert [c["args"] for c in made] == [["127.0.0.1:9100", me], ["127.0.0.1:9100", me],
                                         ["[::1]:9101", me]]
    assert deleted["args"] == ["127.0.0.1:9100", me]


@pytest.fixture
async def pair_with_triggers(tmp_path: Path) -> AsyncIterator[tuple[Server, Server, Path]]:
    triggers = tmp_path / "b-triggers"
    triggers.mkdir()
    async with Server(make_settings(make_home(tmp_path / "a"))) as a, \
            Server(make_settings(make_home(tmp_path / "b"), trigger_dir=triggers)) as b:
        yield a, b, triggers


async def test_receive_triggers_get_exact_arguments_and_file_lists(
        pair_with_triggers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    a, b, triggers = pair_with_triggers
    for name in ("recv.transferStarted", "recv.transferComplete",
                 "recv.transferComplete.json"):
        install(triggers, name)
    source = tmp_path / "a" / "sandbox" / "src"
    (source / "sous dossier é").mkdir(parents=True)
    (source / "a b.txt").write_text("spaces")
    (source / "sous dossier é" / "naïve 100%.bin").write_bytes(os.urandom(5000))
    (source / "empty").mkdir()
    client = await _client(a)
    destination = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"])
    transfer = await send(client, destination["destinationId"], {"/src": "/in box"},
                          destinationPath="/jobs", userData={"job": 42})
    await client.call("updateObjectUserData", objectId=transfer["transferId"],
                      userData={"later": True})
    done = await wait_transfer(client, transfer["transferId"])
    await client.close()
    assert done["status"] == "complete", done["errorMessage"]
    tid = transfer["transferId"]
    root = str(tmp_path / "b" / "sandbox")
    inputs = ["/in box/a b.txt", "/in box/sous dossier é/naïve 100%.bin"]
    outputs = [f"{root}/jobs/in box/a b.txt", f"{root}/jobs/in box/sous dossier é/naïve 100%.bin"]
    (started,) = await wait_calls(triggers, "recv.transferStarted")
    (complete,) = await wait_calls(triggers, "recv.transferComplete")
    (complete_json,) = await wait_calls(triggers, "recv.transferComplete.json")
    expected_json = {"inputFiles": inputs, "outputFiles": outputs, "userData": {"job": 42}}
    assert started["args"] == [tid, "bob", ""]
    assert json.loads(started["stdin"]) == expected_json
    assert complete["args"] == [tid, "bob", ""]
    assert complete["stdin"] == (f"/in%20box/a%20b.txt {outputs[0]}\n"
                                 f"/in%20box/sous%20dossier%20é/naïve%20100%25.bin "
                                 f"{outputs[1]}\n")
    assert complete_json["args"] == [tid, "bob", ""]
    assert json.loads(complete_json["stdin"]) == expected_json
    assert started["end"] <= complete["start"] <= complete["end"] <= complete_json["start"]
    # the documented shell loop gets every absolute path whole
    loop = ('while IFS=" " read -r manifest_file file_path || [ -n "${manifest_file}" ]; do '
            'printf "%s\\n" "$file_path"; done')
    read = subprocess.run(["sh", "-c", loop], input=complete["stdin"], capture_output=True,
                          text=True, timeout=10)
    assert read.stdout.splitlines() == outputs


async def test_api_triggers_get_the_command_status_message_and_result(
        tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    for name in ("on.auth", "on.send.createManifest", "on.send.getTransfer",
                 "on.getServerInfo", "on.send.getDestinationsAsync"):
        install(triggers, name)
    settings = make_settings(make_home(tmp_path / "h"), trigger_dir=triggers, trigger_on_api=True)
    async with Server(settings) as server:
        client = await _client(server)
        (tmp_path / "h" / "sandbox" / "f.txt").write_text("x")
        response = await client.request("send.createManifest",
                                        {"fileMappings": {"/f.txt": "/dst/f.txt"}})
        failed = await client.request("getTransfer", {"transferId": "0" * 32})
        await client.call("getDestinationsAsync")
        await client.close()
        (auth,) = await wait_calls(triggers, "on.auth")
        (manifest,) = await wait_calls(triggers, "on.send.createManifest")
        (missing,) = await wait_calls(triggers, "on.send.getTransfer")
        await wait_calls(triggers, "on.send.getDestinationsAsync")
    assert json.loads(auth["args"][0]) == {"request": "auth", "parameters": {"user": "alice"}}
    assert auth["args"][1:3] == ["success", "Authenticated."]
    command, status, message, result = manifest["args"]
    assert json.loads(command) == {"request": "send.createManifest",
                                   "parameters": {"fileMappings": {"/f.txt": "/dst/f.txt"}}}
    assert (status, message) == ("success", "Manifest requested.")
    assert json.loads(result) == response["result"]
    assert missing["args"][1:] == ["error", failed["message"], "null"]
    assert calls(triggers, "on.getServerInfo") == []  # not called, so not fired


async def test_triggers_run_one_at_a_time_in_event_order(tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "send.destinationCreated", sleep=0.4)
    async with Server(make_settings(make_home(tmp_path / "h"), trigger_dir=triggers)) as server:
        client = await _client(server)
        for port in (9001, 9002, 9003):
            await client.call("createDestination", destinationAddress=f"127.0.0.1:{port}")
        made = await wait_calls(triggers, "send.destinationCreated", 3)
        await client.close()
    assert [c["args"][0] for c in made] == ["127.0.0.1:9001", "127.0.0.1:9002",
                                            "127.0.0.1:9003"]
    for earlier, later in itertools.pairwise(made):
        assert later["start"] >= earlier["end"]


async def test_the_server_never_waits_for_a_trigger(tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "on.send.getDestinations", sleep=3)
    settings = make_settings(make_home(tmp_path / "h"), trigger_dir=triggers, trigger_on_api=True)
    async with Server(settings) as server:
        client = await _client(server)
        await client.call("getDestinations")
        async with asyncio.timeout(10):  # the script has started and now sleeps
            while not (triggers / "started.jsonl").exists():
                await asyncio.sleep(0.02)
        for _ in range(20):  # the API goes on while it sleeps
            assert await asyncio.wait_for(client.call("getManifests"), 2) == []
        assert calls(triggers) == []  # the first script is still running
        await client.close()
        await wait_calls(triggers, "on.send.getDestinations", 1, timeout_s=15)


async def test_missing_or_not_executable_scripts_are_no_trigger(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "send.destinationDeleted")
    (triggers / "send.destinationCreated").write_text("#!/bin/sh\ntouch ran\n")  # not +x
    settings = make_settings(make_home(tmp_path / "h"), trigger_dir=triggers, trigger_log=True)
    caplog.set_level("INFO", logger="jetstream.triggers")
    async with Server(settings) as server:
        client = await _client(server)
        created = await client.call("createDestination", destinationAddress="127.0.0.1:9")
        await client.call("deleteDestination", destinationId=created["destinationId"])
        await wait_calls(triggers, "send.destinationDeleted")
        await client.close()
    assert not (triggers / "ran").exists()
    assert "send.destinationCreated is not executable" in caplog.text
    assert "launch does not exist" in caplog.text
    # and a trigger folder that does not exist is simply no trigger
    async with Server(make_settings(make_home(tmp_path / "h2"),
                                    trigger_dir=tmp_path / "nowhere")) as server:
        client = await _client(server)
        await client.call("createDestination", destinationAddress="127.0.0.1:9")
        await client.close()


async def test_scripts_get_a_small_documented_environment(tmp_path: Path) -> None:
    triggers = tmp_path / "triggers"
    install(triggers, "launch")
    async with Server(make_settings(make_home(tmp_path / "h"), trigger_dir=triggers)) as server:
        (launch,) = await wait_calls(triggers, "launch")
    assert launch["cwd"] == str(triggers)
    env = launch["env"]
    assert set(env) == {"PATH", "HOME", "LANG", "JETSTREAM_API_CONTROL_PORT",
                        "JETSTREAM_TRIGGER_DIR", "JETSTREAM_EVENT"}
    assert env["JETSTREAM_API_CONTROL_PORT"] == str(server.api_port)
    assert env["JETSTREAM_EVENT"] == "launch" and env["LANG"] == "C.UTF-8"
    assert env["PATH"].endswith("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def _process_home(tmp_path: Path, launch: str) -> tuple[Path, Path]:
    home = make_home(tmp_path / "h")
    triggers = tmp_path / "triggers"
    triggers.mkdir()
    (triggers / "launch").write_text(launch)
    (triggers / "launch").chmod(0o755)
    return home, triggers


def test_the_documented_launch_pattern_creates_a_destination(tmp_path: Path) -> None:
    home, triggers = _process_home(tmp_path, (
        "#!/bin/sh\nexport JETSTREAM_API_PASSWORD=alice-pw\n"
        "jetstream api --user alice createDestination --destinationAddress 127.0.0.1:9999 "
        "--sendRateMax=100000 > created.json\n"))
    server = ServerProcess(home, "--trigger-dir", str(triggers))
    try:
        deadline = time.monotonic() + 20
        while not (found := json.loads(server.api("getDestinations", user="alice",
                                                  password="alice-pw").stdout or "[]")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()
    assert [(d["destinationAddress"], d["sendRateMax"]) for d in found] == [
        ("127.0.0.1:9999", 100000)]


def test_trigger_log_shows_output_on_stderr_but_not_in_the_log_file(tmp_path: Path) -> None:
    home, triggers = _process_home(tmp_path, (
        "#!/bin/sh\necho hello-from-trigger\necho oops-from-trigger >&2\nexit 3\n"))
    log_file = tmp_path / "server.log"
    server = ServerProcess(home, "--trigger-dir", str(triggers), "--trigger-log",
                           "--log", str(log_file))
    try:
        deadline = time.monotonic() + 20
        while "exited 3" not in log_file.read_text():
            assert time.monotonic() < deadline, server.log_path.read_text()
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    console = server.log_path.read_text()
    assert "hello-from-trigger" in console and "oops-from-trigger" in console
    assert f"trigger launch ['{server.api_port}'] exited 3" in console
    logged = log_file.read_text()
    assert "exited 3" in logged and "from-trigger" not in logged


def test_silent_without_trigger_log(tmp_path: Path) -> None:
    home, triggers = _process_home(tmp_path, (
        "#!/bin/sh\necho hello-from-trigger\necho oops >&2\ntouch ran\nexit 3\n"))
    server = ServerProcess(home, "--trigger-dir", str(triggers))
    try:
        deadline = time.monotonic() + 20
        while not (triggers / "ran").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        server.stop()
    console = server.log_path.read_text()
    assert "hello-from-trigger" not in console and "oops" not in console
    assert "exited" not in console and "trigger launch" not in console


def test_sigterm_lets_a_running_trigger_finish(tmp_path: Path) -> None:
    home, triggers = _process_home(tmp_path, (
        "#!/bin/sh\ntouch started\nsleep 2\ntouch finished\n"))
    server = ServerProcess(home, "--trigger-dir", str(triggers))
    try:
        deadline = time.monotonic() + 20
        while not (triggers / "started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
        assert (triggers / "finished").exists()
    finally:
        server.stop()


def test_sigterm_waits_for_a_trigger_only_as_long_as_told(tmp_path: Path) -> None:
    home, triggers = _process_home(tmp_path, (
        "#!/bin/sh\necho $$ > started\nexec sleep 30\n"))
    server = ServerProcess(home, "--trigger-dir", str(triggers), "--trigger-stop-seconds", "1")
    try:
        deadline = time.monotonic() + 20
        while not (triggers / "started").exists() or not (triggers / "started").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0  # after about 1 s, not 30
        pid = int((triggers / "started").read_text())
        os.kill(pid, 0)  # left running: the server kills no trigger
        log = server.log_path.read_text()
        assert "triggers still running after 1 s: left running" in log
        os.kill(pid, signal.SIGKILL)  # (the script this test started, by its id)
    finally:
        server.stop()


async def test_the_examples_work_as_shipped(tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "triggers.example"
    a_triggers, b_triggers = tmp_path / "a-triggers", tmp_path / "b-triggers"
    shutil.copytree(examples, a_triggers)
    shutil.copytree(examples, b_triggers)
    a_home, b_home = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    (a_home / "sandbox" / "a b.txt").write_text("x")
    async with Server(make_settings(a_home, trigger_dir=a_triggers, trigger_on_api=True)) as a, \
            Server(make_settings(b_home, trigger_dir=b_triggers)) as b:
        client = await _client(a)
        destination = await client.call(
            "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
            destinationUser="bob", destinationPassword=PASSWORDS["bob"])
        transfer = await send(client, destination["destinationId"],
                              {"/a b.txt": "/in/a b.txt"}, userData={"job": 7})
        done = await wait_transfer(client, transfer["transferId"])
        await client.call("deleteDestination", destinationId=destination["destinationId"])
        await client.close()
        assert done["status"] == "complete"
        async with asyncio.timeout(20):
            while "User Data: {'job': 7}" not in (b_triggers / "log.txt").read_text() or \
                    "deleted destination" not in (a_triggers / "log.txt").read_text():
                await asyncio.sleep(0.05)
    tid = transfer["transferId"]
    a_log, b_log = (a_triggers / "log.txt").read_text(), (b_triggers / "log.txt").read_text()
    assert f"JetStream server Launched on port {a.api_port}" in a_log
    assert f"created destination 127.0.0.1:{b.recv_port}" in a_log
    assert "Message: 'Transfer created.'" in a_log and "Status: 'success'" in a_log
    assert f"Started: '{tid}' for 'bob', 1 file(s)" in b_log
    assert f"Transfer ID {tid} initiated by bob is complete." in b_log
    assert (f"manifest file: /in/a%20b.txt, file path: {b_home}/sandbox/in/a b.txt"
            in b_log)
    assert f"Output Files: ['{b_home}/sandbox/in/a b.txt']" in b_log


async def test_transfers_go_on_while_a_receive_trigger_sleeps(
        pair_with_triggers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    a, b, triggers = pair_with_triggers
    install(triggers, "recv.transferStarted", sleep=3)
    (tmp_path / "a" / "sandbox" / "f.bin").write_bytes(os.urandom(2_000_000))
    client = await _client(a)
    destination = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"])
    transfer = await send(client, destination["destinationId"], {"/f.bin": "/f.bin"})
    done = await wait_transfer(client, transfer["transferId"], timeout_s=20)
    await client.close()
    assert done["status"] == "complete"
    assert (triggers / "started.jsonl").exists()
    assert calls(triggers) == []  # complete while the trigger still sleeps
    await wait_calls(triggers, "recv.transferStarted", timeout_s=15)


def test_a_script_that_ignores_its_stdin_still_counts_as_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under uvloop, as the server runs: writing stdin to a script that already exited
    must not lose the run (it did once: 'unable to perform operation ... closed')."""
    import uvloop

    from jetstream_server.triggers import TriggerRunner

    caplog.set_level("INFO", logger="jetstream.triggers")
    triggers = tmp_path / "triggers"
    triggers.mkdir()
    for name in ("quick", "quick.json"):
        (triggers / name).write_text("#!/bin/sh\necho ran >> runs.txt\nexit 0\n")
        (triggers / name).chmod(0o755)

    async def main() -> int:
        runner = TriggerRunner(triggers, log_runs=True)
        for _ in range(5):
            runner.fire("quick")  # no stdin
            runner.fire("quick.json", "x", stdin=b"z" * 1_000_000)  # stdin never read
        await runner.close()
        return runner.runs.total()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        assert loop_runner.run(main()) == 10
    assert (triggers / "runs.txt").read_text().count("ran") == 10
    assert sum(" exited 0 after " in r.getMessage() for r in caplog.records) == 10
    assert "could not run" not in caplog.text


async def test_a_resumed_transfer_announces_its_start_once(
        pair_with_triggers: tuple[Server, Server, Path], tmp_path: Path) -> None:
    a, b, triggers = pair_with_triggers
    install(triggers, "recv.transferStarted")
    install(triggers, "recv.transferComplete")
    (tmp_path / "a" / "sandbox" / "f.bin").write_bytes(os.urandom(1_500_000))
    client = await _client(a)
    destination = await client.call(
        "createDestination", destinationAddress=f"127.0.0.1:{b.recv_port}",
        destinationUser="bob", destinationPassword=PASSWORDS["bob"])
    transfer = await send(client, destination["destinationId"], {"/f.bin": "/f.bin"},
                          sendRateMax=4_000)
    await wait_calls(triggers, "recv.transferStarted")
    await asyncio.sleep(0.5)
    await client.call("suspendTransfer", transferId=transfer["transferId"])
    await asyncio.sleep(0.5)
    await client.call("setSendRate", transferId=transfer["transferId"], sendRateMax=0)
    await client.call("resumeTransfer", transferId=transfer["transferId"])
    assert (await wait_transfer(client, transfer["transferId"]))["status"] == "complete"
    await client.close()
    await wait_calls(triggers, "recv.transferComplete")
    await asyncio.sleep(0.3)
    assert len(calls(triggers, "recv.transferStarted")) == 1
    assert len(calls(triggers, "recv.transferComplete")) == 1
