"""How `jetstream api` turns --name=value arguments into typed parameters."""

from __future__ import annotations

import pytest

from jetstream_server.console import UsageError, parse_parameters


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


def test_unknown_commands_pass_json_or_text_through() -> None:
    assert parse_parameters("futureCommand", ["--n=5", "--s=text", "--flag"]) == {
        "n": 5, "s": "text", "flag": True}
