"""How `jetstream api` turns --name=value arguments into typed parameters."""

from __future__ import annotations

import pytest

from jetstream_server.console import (
    REGISTRY,
    UsageError,
    command_help,
    commands_help,
    parse_parameters,
)


def test_scalars_convert_to_the_parameter_type() -> None:
    params = parse_parameters("createDestination", [
        "--destinationAddress", "host:9000", "--sendRateMax=100000",
        "--userData={\"job\": 42}"])
    assert params == {"destinationAddress": "host:9000", "sendRateMax": 100000,
                      "userData": {"job": 42}}


def test_file_mappings_repeat_into_one_object() -> None:
    params = parse_parameters("createManifest", ["--fileMappings=/a:/b",
                                                 "--fileMappings", "/c d:/e f"])
    assert params == {"fileMappings": {"/a": "/b", "/c d": "/e f"}}


def test_nullable_parameters_take_null_and_ints_stay_strict() -> None:
    assert parse_parameters("send.createTransfer", ["--destinationPath=null"]) == {
        "destinationPath": None}
    with pytest.raises(UsageError, match="--priority of send.createTransfer takes an integer"):
        parse_parameters("send.createTransfer", ["--priority=high"])


@pytest.mark.parametrize("args", [
    ["positional"],
    ["--userData=[1]"],
    ["--userData={broken"],
    ["--sendRateMax=1", "--sendRateMax=2"],
    ["--sendRateMax"],
])
def test_usage_errors(args: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_parameters("createDestination", args)


def test_unknown_parameters_pass_json_or_text_through_to_the_server() -> None:
    assert parse_parameters("getServerInfo", ["--n=5", "--s=text", "--flag"]) == {
        "n": 5, "s": "text", "flag": True}


def test_an_unknown_command_is_a_usage_error_that_names_the_nearest() -> None:
    with pytest.raises(UsageError) as unknown:
        parse_parameters("getTransfr", [])
    assert str(unknown.value) == ("Unknown command 'getTransfr'. Did you mean getTransfer "
                                  "or getTransfers?")
    with pytest.raises(UsageError, match="^Unknown command 'frobnicate'.$"):
        parse_parameters("frobnicate", [])
    with pytest.raises(UsageError, match="is ambiguous: use send.getTransfers or "
                                         "recv.getTransfers"):
        parse_parameters("getTransfers", [])


def test_every_command_has_a_one_line_summary_and_its_help_lists_its_parameters() -> None:
    for command in REGISTRY.commands():
        assert command.summary and "\n" not in command.summary, command.name
    assert commands_help().count("\n") == len(REGISTRY.commands()) - 1
    text = command_help("createTransfer")
    assert text.splitlines()[0] == ("send.createTransfer: Queue a manifest's files for a "
                                    "destination.")
    assert "  --destinationId=TEXT" in text and "  --priority=INTEGER  (optional)" in text
    assert "(no login needed)" in command_help("getServerInfo")
