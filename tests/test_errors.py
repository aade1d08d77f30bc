"""One exception tree: local and remote errors, each with its stable code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import jetstream_server
from jetstream_server import errors
from jetstream_server.client import AsyncClient
from jetstream_server.server import Server


def test_every_error_is_local_or_remote_and_has_a_code_of_its_own() -> None:
    classes = [getattr(errors, name) for name in errors.__all__
               if isinstance(getattr(errors, name), type)]
    for cls in classes:
        assert issubclass(cls, errors.JetStreamError), cls
        if cls not in (errors.JetStreamError, errors.LocalError, errors.RemoteError):
            assert issubclass(cls, errors.LocalError) != issubclass(cls, errors.RemoteError)
    codes = [cls.code for cls in classes
             if cls not in (errors.JetStreamError, errors.LocalError, errors.RemoteError,
                            errors.ApiError, errors.CommandFailed)]
    assert len(codes) == len(set(codes)), codes
    for code, cls in errors.ERROR_CODES.items():
        assert issubclass(cls, errors.ApiError) and cls.code == code
        made = errors.api_error(code, "why")
        assert type(made) is cls and made.message == "why"
    future = errors.api_error("a_code_of_a_newer_server", "why")
    assert type(future) is errors.ApiError and future.code == "a_code_of_a_newer_server"


def test_no_exception_class_lives_outside_the_tree() -> None:
    package = Path(jetstream_server.__file__).parent
    defines = re.compile(r"^class \w+\((?:\w+\.)?(?:Exception|BaseException)\)", re.M)
    for path in package.rglob("*.py"):
        if path.name != "errors.py":
            assert not defines.search(path.read_text()), path


def test_nothing_swallows_cancellation() -> None:
    package = Path(jetstream_server.__file__).parent
    swallow = re.compile(r"suppress\([^)]*CancelledError|except[^:]*CancelledError[^:]*:\s*"
                         r"\n\s*(?:pass|return|continue)\b")
    for path in package.rglob("*.py"):
        assert not swallow.search(path.read_text()), path


async def test_the_client_raises_the_servers_code_as_a_remote_error(home: Path) -> None:
    from tests.conftest import make_settings

    async with Server(make_settings(home)) as srv:
        client = await AsyncClient.connect("127.0.0.1", srv.api_port)
        with pytest.raises(errors.CommandFailed) as failed:
            await client.call("getTransfer", transferId="0" * 32)
        assert isinstance(failed.value, errors.RemoteError)
        assert failed.value.code == errors.AuthRequired.code
        assert str(failed.value) == (f"{failed.value.message} [auth_required]")
        await client.close()
    with pytest.raises(errors.ConnectionFailed):
        await AsyncClient.connect("127.0.0.1", srv.api_port, timeout_s=2)
