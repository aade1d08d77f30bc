"""Commands by explicit name, their parameters, and the resolution of requested names.

Names are JetStream's: ``send.*``, ``recv.*`` and unqualified server commands. A request
may leave out ``send.``/``recv.`` when only one command has that name; every command
marked ``asyncable`` is also reachable as ``<name>Async``, which queues it and answers
``{"requestId": n}`` at once.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AmbiguousCommand, InvalidParameter, MissingParameter, UnknownCommand

__all__ = ["SECRET_PARAMETERS", "Command", "Param", "Registry"]

#: Parameters never echoed into logs or triggers.
SECRET_PARAMETERS = frozenset({"password", "destinationPassword", "token",
                               "destinationToken", "link", "mappings"})
_NAMESPACES = ("send.", "recv.")

_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", bool: "true or false",
                                 dict: "a JSON object", list: "a JSON list", float: "a number"}


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    required: bool = False
    nullable: bool = False

    def check(self, command: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if self.kind is object:  # any JSON value; the handler checks it
            return value
        ok = isinstance(value, self.kind)
        if self.kind is int and isinstance(value, bool):
            ok = False
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise InvalidParameter(
                f"Parameter {self.name!r} of {command} must be {_TYPE_NAMES[self.kind]}"
                f"{' or null' if self.nullable else ''}, not {_json_type(value)}."
            )
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (dict, "an object"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


#: handler(context, parameters) -> (message, result)
Handler = Callable[[Any, dict[str, Any]], Awaitable[tuple[str, Any]]]


@dataclass(frozen=True)
class Command:
    """One API command: its name, handler, parameters and rules. Its help is the first
    line of the handler's docstring. ``permission``: what a token session needs to run
    it (core/tokens.py's PERMISSIONS; None: any session)."""

    name: str
    handler: Handler
    params: tuple[Param, ...] = ()
    needs_auth: bool = True
    asyncable: bool = True
    permission: str | None = "read"

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.handler) or "").split("\n", 1)[0]

    def check_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """The parameters, type-checked; absent optional ones are None."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise InvalidParameter(
                f"Unknown parameter(s) {', '.join(unknown)} for {self.name} (it takes: {names})."
            )
        out: dict[str, Any] = {}
        for param in self.params:
            if param.name not in given:
                if param.required:
                    raise MissingParameter(
                        f"{self.name} needs parameter {param.name!r}.")
                out[param.name] = None
            else:
                out[param.name] = param.check(self.name, given[param.name])
        return out


class Registry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"command {command.name} registered twice")
        self._commands[command.name] = command

    def commands(self) -> list[Command]:
        return [self._commands[name] for name in sorted(self._commands)]

    def resolve(self, name: str) -> tuple[Command, bool]:
        """(command, queued) for a requested name; queued is True for ``...Async``."""
        found = self._lookup(name)
        if found is not None:
            return found, False
        if name.endswith("Async"):
            base = self._lookup(name[: -len("Async")])
            if base is not None and base.asyncable:
                return base, True
        raise UnknownCommand(f"Unknown command {name!r}.{self._suggest(name)}")

    def _suggest(self, name: str) -> str:
        """' Did you mean ...?' with the nearest names, if some are near."""
        if name.startswith(_NAMESPACES):  # as it was typed: qualified, or not
            names = sorted(self._commands)
        else:
            names = sorted({c.name.split(".", 1)[-1] for c in self._commands.values()})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.8)
        return f" Did you mean {' or '.join(close)}?" if close else ""

    def _lookup(self, name: str) -> Command | None:
        command = self._commands.get(name)
        if command is not None or name.startswith(_NAMESPACES):
            return command
        matches = [self._commands[ns + name] for ns in _NAMESPACES
                   if ns + name in self._commands]
        if len(matches) > 1:
            options = " or ".join(c.name for c in matches)
            raise AmbiguousCommand(f"Command {name!r} is ambiguous: use {options}.")
        return matches[0] if matches else None
