"""``jetstream api``: one command per invocation, exactly as JetStream's console.

    jetstream api [--host H] [--api-control-port P] [--user U] COMMAND [--param=value ...]

To any host but this machine it connects with TLS and verifies the server (see
``jetstream_server.client``: --api-fingerprint, --api-ca-file, or the known-servers file).

Parameters are the API's camelCase names, as ``--name=value`` or ``--name value``; a
parameter given without a value is ``true``. Scalars are converted to the parameter's
type, ``null`` clears a parameter that may be null, dict and list parameters take a JSON
literal, and ``--fileMappings=SRC:DST`` may repeat. The result is printed as JSON
(``indent=1, sort_keys=True``).

Exit status: 0 success; 1 the server answered with an error (message on stderr); 2 usage
error; 3 cannot connect or authenticate.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from .client import AsyncClient
from .commands import build_registry
from .commands.registry import Command
from .core.manifests import parse_console_mapping
from .errors import (
    AmbiguousCommand,
    CommandFailed,
    ConnectionFailed,
    RemoteControlRefused,
    TlsRequired,
    UnknownCommand,
    UsageError,
)
from .protocol.tls import normalize_fingerprint

__all__ = ["EXIT_API_ERROR", "EXIT_CONNECT", "EXIT_USAGE", "REGISTRY", "Login",
           "command_help", "commands_help", "connect", "failed", "parse_parameters",
           "read_login", "run_console"]

EXIT_API_ERROR, EXIT_USAGE, EXIT_CONNECT = 1, 2, 3
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


#: The commands, their parameters and help: the very table the server dispatches with.
REGISTRY = build_registry()


def _command(name: str) -> Command:
    """The command ``name`` names; a usage error (with the nearest names) if none."""
    try:
        command, _ = REGISTRY.resolve(name)
    except (UnknownCommand, AmbiguousCommand) as exc:
        raise UsageError(exc.message) from None
    return command


def commands_help() -> str:
    """Every command with its one-line summary (``jetstream api --help``)."""
    commands = REGISTRY.commands()
    width = max(len(c.name) for c in commands)
    return "\n".join(f"{c.name.ljust(width)}  {c.summary}" for c in commands)


def command_help(name: str) -> str:
    """A command's summary and parameters (``jetstream api COMMAND --help``)."""
    command = _command(name)
    lines = [f"{command.name}: {command.summary}"]
    if not command.needs_auth:
        lines.append("(no login needed)")
    for param in command.params:
        kind = _KIND_NAMES.get(param.kind, "JSON")
        lines.append(f"  --{param.name}={kind}{'' if param.required else '  (optional)'}")
    if command.asyncable:
        lines.append(f"Also {command.name}Async: queued, answers {{\"requestId\": n}} at once.")
    return "\n".join(lines)


_KIND_NAMES = {str: "TEXT", int: "INTEGER", bool: "true|false", float: "NUMBER",
               dict: "JSON-OBJECT", list: "JSON-LIST"}


def _split(args: list[str]) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UsageError(f"Unexpected argument {arg!r}: parameters look like "
                             "--name=value.")
        name, eq, value = arg[2:].partition("=")
        if eq:
            pairs.append((name, value))
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            pairs.append((name, args[i + 1]))
            i += 1
        else:
            pairs.append((name, None))
        i += 1
    return pairs


def _convert(command: str, name: str, kind: type, nullable: bool, text: str | None) -> Any:
    if text is None:
        if kind in (bool, object):
            return True
        raise UsageError(f"--{name} needs a value.")
    if nullable and text == "null":
        return None
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"--{name} of {command} takes true or false.")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--{name} of {command} takes an integer, not {text!r}.") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--{name} of {command} takes a number, not {text!r}.") from None
    try:
        value = json.loads(text)
    except ValueError:
        if kind is object:
            return text
        raise UsageError(f"--{name} of {command} takes a JSON literal, e.g. "
                         f"--{name}='{{\"key\": 1}}'.") from None
    if kind is not object and not isinstance(value, kind):
        raise UsageError(f"--{name} of {command} takes a JSON "
                         f"{'object' if kind is dict else 'list'}.")
    return value


def parse_parameters(command_name: str, args: list[str]) -> dict[str, Any]:
    """Turn ``--name=value`` arguments into typed API parameters."""
    command = _command(command_name)
    kinds = {p.name: p for p in command.params}
    params: dict[str, Any] = {}
    mappings: dict[str, str] = {}
    for name, text in _split(args):
        param = kinds.get(name)
        if name == "fileMappings" and text is not None and not text.lstrip().startswith(
                ("{", "[")):
            try:
                src, dst = parse_console_mapping(text)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            mappings[src] = dst
            continue
        if name in params:
            raise UsageError(f"--{name} is given more than once.")
        if param is None:
            params[name] = _convert(command_name, name, object, False, text)
        else:
            params[name] = _convert(command_name, name, param.kind, param.nullable, text)
    if mappings:
        if "fileMappings" in params:
            raise UsageError("Give --fileMappings as SRC:DST (repeatable) or as one JSON "
                             "literal, not both.")
        params["fileMappings"] = mappings
    return params


@dataclass(frozen=True)
class Login:
    """How the console logs in: as ``user`` with ``password``, or with an API ``token``
    (and ``password``, the token's, if it has one); neither: not at all."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    async def to(self, client: AsyncClient) -> None:
        """Log ``client`` in (CommandFailed if refused)."""
        if self.token is not None:
            await client.auth_token(self.token, self.password)
        elif self.user is not None:
            assert self.password is not None
            await client.auth(self.user, self.password)


def read_login(user: str | None, token: str | None, prog: str) -> Login | None:
    """The login the options and the environment give (the password from
    JETSTREAM_API_PASSWORD, else asked for a user; a token's only from the environment);
    None, having said why on stderr, when a password is needed and cannot be read."""
    password = os.environ.get("JETSTREAM_API_PASSWORD")
    if token is not None:
        return Login(token=token, password=password)
    if user is not None and password is None:
        try:
            password = getpass.getpass(f"Password for {user}: ")
        except (EOFError, OSError):
            print(f"{prog}: no password: set JETSTREAM_API_PASSWORD", file=sys.stderr)
            return None
    return Login(user, password)


def failed(prog: str, exc: CommandFailed | ConnectionFailed) -> int:
    """Say on stderr why a request failed; the exit status (EXIT_API_ERROR when the
    server refused it, EXIT_CONNECT when the connection failed)."""
    print(f"{prog}: {exc}", file=sys.stderr)
    return EXIT_CONNECT if isinstance(exc, ConnectionFailed) else EXIT_API_ERROR


async def connect(host: str, port: int, login: Login, tls: dict[str, Any], prog: str
                  ) -> AsyncClient:
    """A logged-in client (ConnectionFailed, or CommandFailed when the login is
    refused)."""
    client = await AsyncClient.connect(host, port, **tls)
    if client.trust_note is not None:
        print(f"{prog}: {client.trust_note}", file=sys.stderr)
    try:
        await login.to(client)
    except BaseException:
        await client.close()
        raise
    return client


async def _run(host: str, port: int, login: Login, command: str, params: dict[str, Any],
               tls: dict[str, Any], superuser: bool = False) -> tuple[int, Any]:
    try:
        client = await connect(host, port, login, tls, "jetstream api")
    except ConnectionFailed as exc:
        return EXIT_CONNECT, str(exc)
    except CommandFailed as exc:
        return EXIT_CONNECT, str(exc)
    async with client:
        try:
            if superuser:
                await client.call("superuser")
            result = await client.call(command, **params)
        except CommandFailed as exc:
            if exc.code in (RemoteControlRefused.code, TlsRequired.code):
                return EXIT_CONNECT, str(exc)
            return EXIT_API_ERROR, str(exc)
        except ConnectionFailed as exc:
            return EXIT_CONNECT, str(exc)
    return 0, result


def run_console(host: str, port: int, user: str | None, command: str, args: list[str],
                tls: dict[str, Any] | None = None, token: str | None = None,
                superuser: bool = False) -> int:
    """Run one command (``tls``: AsyncClient.connect's tls, fingerprint and ca_file;
    ``token``: log in with this API token instead of ``user``; ``superuser``: raise the
    session first)."""
    tls = tls or {}
    try:
        if "--help" in args or "-h" in args:
            print(command_help(command))
            return 0
        params = parse_parameters(command, args)
        if tls.get("fingerprint") is not None:
            try:
                normalize_fingerprint(tls["fingerprint"])
            except ValueError as exc:
                raise UsageError(f"--api-fingerprint: {exc}.") from None
    except UsageError as exc:
        print(f"jetstream api: {exc}", file=sys.stderr)
        return EXIT_USAGE
    login = read_login(user, token, "jetstream api")
    if login is None:
        return EXIT_CONNECT
    status, value = asyncio.run(_run(host, port, login, command, params, tls, superuser))
    if status == 0:
        print(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False))
    else:
        print(f"jetstream api: {value}", file=sys.stderr)
    return status
