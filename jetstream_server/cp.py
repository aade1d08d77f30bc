"""``jetstream cp [OPTIONS] SRC... TARGET``: copy files and folders to another server
through the local one, in one command, with a progress bar.

Each SRC is a path in the local user's sandbox (what the user sees as ``/``, as
``createManifest``'s sources); it arrives as ``DST/<its name>``. TARGET is
``[USER@]HOST[:PORT]:DST`` (the receiving server's data address, port 8886 by default;
an IPv6 address in brackets: ``[::1]:8887:/in``) or ``DESTINATION_ID:DST`` (one of the
local server's destinations). USER's password on the receiving server comes from
``JETSTREAM_DESTINATION_PASSWORD``, else it is asked; without USER@ the receiving server
must trust this one's key (or take anonymous transfers).

It makes the destination (``createDestination`` answers with the matching one if it
exists), the manifest and the transfer (which waits for the manifest), then follows the
transfer until it ends: a progress bar on a terminal, or with ``--json`` one line of JSON
a second (see ``jetstream_server.watch``). ``--overwrite`` says what happens to files that
exist there (createTransfer's ``overwrite``: always, never, ifNewer, ifDifferent,
ifChecksumDiffers).

Exit status: 0 the transfer is complete; 1 it failed (its message on stderr), or the
server refused a request; 2 usage; 3 cannot connect or log in; 130 interrupted (the
transfer is cancelled, or left running with ``--detach``).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from .console import EXIT_CONNECT, EXIT_USAGE, Login, connect, failed, read_login
from .errors import CommandFailed, ConnectionFailed, UsageError
from .watch import follow

__all__ = ["Target", "parse_target", "run_cp"]

PROG = "jetstream cp"
#: A local server's destination id.
_DESTINATION_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Target:
    """Where ``jetstream cp`` sends: a new or matching destination (``address``, with
    ``user``), or an existing one (``destination_id``), and the folder there."""

    path: str
    address: str | None = None
    user: str | None = None
    destination_id: str | None = None


def parse_target(text: str) -> Target:
    """``[USER@]HOST[:PORT]:DST`` or ``DESTINATION_ID:DST`` (UsageError if neither)."""
    user = None
    head, at, rest = text.partition("@")
    if at and head and not any(c in head for c in ":/[]"):
        user, text = head, rest
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UsageError(f"{text!r}: an IPv6 address is written [ADDRESS]:DST or "
                             "[ADDRESS]:PORT:DST.")
        address, rest = f"[{host}]", rest[1:]
    else:
        address, colon, rest = text.partition(":")
        if not colon or not address:
            raise UsageError(f"{text!r} names no server: write [USER@]HOST[:PORT]:DST "
                             "(or DESTINATION_ID:DST).")
    port, colon, after = rest.partition(":")
    if colon and port.isdigit():
        address, rest = f"{address}:{port}", after
    path = "/" + rest.lstrip("/")
    if user is None and address != text and _DESTINATION_ID.fullmatch(address):
        return Target(path, destination_id=address)
    return Target(path, address=address, user=user)


def _mappings(sources: list[str], folder: str) -> dict[str, str]:
    """Each source to ``folder/<its name>``."""
    out: dict[str, str] = {}
    for source in sources:
        name = source.rstrip("/").rsplit("/", 1)[-1]
        if not name:
            raise UsageError(f"{source!r}: name a file or folder, not the sandbox's /.")
        out["/" + source.lstrip("/")] = folder.rstrip("/") + "/" + name
    return out


def run_cp(host: str, port: int, user: str | None, sources: list[str], target_text: str,
           tls: dict[str, Any], *, json_lines: bool = False, detach: bool = False,
           rate_kbps: int | None = None, policy: str | None = None,
           overwrite: str | None = None) -> int:
    """Copy ``sources`` to the target through the local server; the exit status."""
    try:
        target = parse_target(target_text)
        mappings = _mappings(sources, target.path)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    remote_password = None
    if target.user is not None:
        remote_password = os.environ.get("JETSTREAM_DESTINATION_PASSWORD")
        if remote_password is None:
            try:
                remote_password = getpass.getpass(
                    f"Password of {target.user} on {target.address}: ")
            except (EOFError, OSError):
                print(f"{PROG}: no password for {target.user}: set "
                      "JETSTREAM_DESTINATION_PASSWORD", file=sys.stderr)
                return EXIT_CONNECT
    login = read_login(user, None, PROG)
    if login is None:
        return EXIT_CONNECT
    started: dict[str, str] = {}
    copy = _Copy(host, port, login, tls, started)
    try:
        return asyncio.run(copy.run(target, remote_password, mappings, json_lines,
                                    rate_kbps, policy, overwrite))
    except KeyboardInterrupt:
        transfer_id = started.get("transferId")
        if transfer_id is None:
            print(f"{PROG}: interrupted before a transfer was made.", file=sys.stderr)
        elif detach:
            print(f"{PROG}: interrupted; transfer {transfer_id} goes on in the server "
                  "(getTransfer shows it).", file=sys.stderr)
        else:
            message = asyncio.run(copy.cancel(transfer_id))
            print(f"{PROG}: interrupted; {message}", file=sys.stderr)
        return 130


class _Copy:
    def __init__(self, host: str, port: int, login: Login, tls: dict[str, Any],
                 started: dict[str, str]) -> None:
        self.host, self.port, self.login, self.tls = host, port, login, tls
        self.started = started  # (the transfer's id, for an interrupt to cancel it)

    async def run(self, target: Target, remote_password: str | None,
                  mappings: dict[str, str], json_lines: bool, rate_kbps: int | None,
                  policy: str | None, overwrite: str | None) -> int:
        try:
            client = await connect(self.host, self.port, self.login, self.tls, PROG)
        except (ConnectionFailed, CommandFailed) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        async with client:
            try:
                rate: dict[str, Any] = {k: v for k, v in (
                    ("sendRateMax", rate_kbps), ("ratePolicy", policy)) if v is not None}
                destination_id = target.destination_id
                if destination_id is None:
                    params: dict[str, Any] = {"destinationAddress": target.address, **rate}
                    if target.user is not None:
                        params.update(destinationUser=target.user,
                                      destinationPassword=remote_password)
                    made = await client.call("send.createDestination", **params)
                    destination_id = made["destinationId"]
                manifest = await client.call("send.createManifest", fileMappings=mappings)
                transfer = await client.call(
                    "send.createTransfer", destinationId=destination_id,
                    manifestId=manifest["manifestId"], overwrite=overwrite, **rate)
                self.started["transferId"] = transfer["transferId"]
                return await follow(client, [transfer["transferId"]], json_lines, PROG)
            except (CommandFailed, ConnectionFailed) as exc:
                return failed(PROG, exc)

    async def cancel(self, transfer_id: str) -> str:
        """Cancel the transfer (after an interrupt); what happened, to say."""
        try:
            client = await connect(self.host, self.port, self.login, self.tls, PROG)
            async with client:
                await client.call("send.cancelTransfer", transferId=transfer_id)
        except (ConnectionFailed, CommandFailed) as exc:
            return f"transfer {transfer_id} could not be cancelled: {exc}"
        return f"transfer {transfer_id} cancelled."
