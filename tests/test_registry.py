"""Command names, parameter checking and the status tables."""

from __future__ import annotations

from typing import Any

import pytest

from jetstream_server.commands.registry import Command, Param, Registry
from jetstream_server.core.lifecycle import (
    CONNECTION,
    MANIFEST,
    RECEIVE,
    REQUEST,
    TRANSFER,
    Lifecycle,
    TransferStatus,
)
from jetstream_server.errors import (
    AmbiguousCommand,
    InvalidParameter,
    InvalidState,
    MissingParameter,
    UnknownCommand,
)


async def _noop(call: Any, params: dict[str, Any]) -> tuple[str, Any]:
    return "ok", params


def _registry() -> Registry:
    registry = Registry()
    registry.add(Command("getServerInfo", _noop, needs_auth=False))
    registry.add(Command("send.createManifest", _noop))
    registry.add(Command("send.getTransfers", _noop))
    registry.add(Command("recv.getTransfers", _noop))
    registry.add(Command("getRequestResult", _noop, asyncable=False))
    return registry


def test_qualified_and_unambiguous_unqualified_names_resolve() -> None:
    registry = _registry()
    assert registry.resolve("send.createManifest")[0].name == "send.createManifest"
    assert registry.resolve("createManifest")[0].name == "send.createManifest"
    assert registry.resolve("getServerInfo") == (registry.resolve("getServerInfo")[0], False)


def test_async_variants_resolve_to_their_base_command() -> None:
    registry = _registry()
    command, queued = registry.resolve("createManifestAsync")
    assert (command.name, queued) == ("send.createManifest", True)
    assert registry.resolve("recv.getTransfersAsync")[0].name == "recv.getTransfers"
    with pytest.raises(UnknownCommand):
        registry.resolve("getRequestResultAsync")


def test_ambiguous_and_unknown_names_are_refused() -> None:
    registry = _registry()
    with pytest.raises(AmbiguousCommand, match="send.getTransfers or recv.getTransfers"):
        registry.resolve("getTransfers")
    with pytest.raises(UnknownCommand, match="'send.getServerInfo'"):
        registry.resolve("send.getServerInfo")
    with pytest.raises(UnknownCommand):
        registry.resolve("nothing")


def test_parameters_are_checked_by_type_and_presence() -> None:
    command = Command("x", _noop, (Param("a", int, required=True), Param("b", str,
                                                                         nullable=True),
                                   Param("c", dict)))
    assert command.check_parameters({"a": 1}) == {"a": 1, "b": None, "c": None}
    assert command.check_parameters({"a": 1, "b": None})["b"] is None
    with pytest.raises(MissingParameter, match="needs parameter 'a'"):
        command.check_parameters({})
    with pytest.raises(InvalidParameter, match="'a' of x must be an integer, not a string"):
        command.check_parameters({"a": "1"})
    with pytest.raises(InvalidParameter, match="not a boolean"):
        command.check_parameters({"a": True})
    with pytest.raises(InvalidParameter, match="'c' of x must be a JSON object, not a list"):
        command.check_parameters({"a": 1, "c": []})
    with pytest.raises(InvalidParameter, match="Unknown parameter"):
        command.check_parameters({"a": 1, "typo": 2})


@pytest.mark.parametrize("machine", [TRANSFER, RECEIVE, MANIFEST, REQUEST, CONNECTION],
                         ids=lambda m: m.noun)
def test_every_status_moves_by_its_table_and_nothing_else(machine: Lifecycle[Any]) -> None:
    statuses = type(next(iter(machine.moves.values()))[1])
    for action, (sources, target) in machine.moves.items():
        for status in statuses:
            if status in sources:
                assert machine.move("t", status, action) is target
            else:
                with pytest.raises(InvalidState, match=f"Cannot {action} {machine.noun} t: "
                                                       f"its status is {status.value}"):
                    machine.move("t", status, action)


def test_complete_and_cancelled_transfers_cannot_move_and_failed_ones_only_resume() -> None:
    for status in (TransferStatus.COMPLETE, TransferStatus.CANCELLED, TransferStatus.ERROR):
        assert status.ended
    for action, (sources, _) in TRANSFER.moves.items():
        assert TransferStatus.COMPLETE not in sources and TransferStatus.CANCELLED not in sources
        assert (TransferStatus.ERROR in sources) == (action == "resume"), action


def test_no_status_is_a_bare_string_outside_the_lifecycle_module() -> None:
    """Statuses are compared and set as the enums of core/lifecycle.py, never as text."""
    import re
    from pathlib import Path

    import jetstream_server
    package = Path(jetstream_server.__file__).parent
    words = "|".join(sorted({s.value for m in (TRANSFER, RECEIVE, MANIFEST, REQUEST,
                                               CONNECTION)
                             for s in type(next(iter(m.moves.values()))[1])}))
    status_use = re.compile(rf"status\w*\s*(?:==|!=|=|is)\s*[\"']({words})[\"']")
    for path in package.rglob("*.py"):
        if path.name == "lifecycle.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not status_use.search(line), f"{path.name}:{number}: {line.strip()}"
