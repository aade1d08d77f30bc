"""Command names, parameter checking and the transfer state table."""

from __future__ import annotations

from typing import Any

import pytest

from jetstream_server.commands.registry import Command, Param, Registry
from jetstream_server.core.lifecycle import TRANSFER_MOVES, TransferStatus, transfer_move
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


def test_transfer_moves_follow_the_table_and_nothing_else() -> None:
    for action, (sources, target) in TRANSFER_MOVES.items():
        for status in TransferStatus:
            if status in sources:
                assert transfer_move("t", status, action) is target
            else:
                with pytest.raises(InvalidState, match=f"Cannot {action} transfer t"):
                    transfer_move("t", status, action)


def test_complete_and_cancelled_transfers_cannot_move_and_failed_ones_only_resume() -> None:
    for status in (TransferStatus.COMPLETE, TransferStatus.CANCELLED, TransferStatus.ERROR):
        assert status.ended
    for action, (sources, _) in TRANSFER_MOVES.items():
        assert TransferStatus.COMPLETE not in sources and TransferStatus.CANCELLED not in sources
        assert (TransferStatus.ERROR in sources) == (action == "resume"), action
