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
a second (``transferId``, ``status``, ``totalBytes``, ``bytesDone``, ``totalFiles``,
``currentRate`` and ``averageRate`` in kbit/s, ``estimatedTimeRemaining`` in seconds).

Exit status: 0 the transfer is complete; 1 it failed (its message on stderr), or the
server refused a request; 2 usage; 3 cannot connect or log in; 130 interrupted (the
transfer is cancelled, or left running with ``--detach``).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from .console import EXIT_API_ERROR, EXIT_CONNECT, EXIT_USAGE, Login, connect, failed, read_login
from .errors import CommandFailed, ConnectionFailed, UsageError

__all__ = ["Target", "parse_target", "run_cp"]

PROG = "jetstream cp"
#: How often the transfer is looked at (and, with --json, reported).
POLL_S = 1.0
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
           rate_kbps: int | None = None, policy: str | None = None) -> int:
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
                                    rate_kbps, policy))
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
                  policy: str | None) -> int:
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
                    manifestId=manifest["manifestId"], **rate)
                self.started["transferId"] = transfer["transferId"]
                return await _follow(client, transfer, json_lines)
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


def _done_bytes(transfer: dict[str, Any]) -> int:
    """File bytes the receiver has acknowledged (about: blocks are whole)."""
    total = int(transfer["totalBytes"] or 0)
    if transfer["status"] == "complete":
        return total
    return min(int(transfer["blocksAcked"] or 0) * int(transfer["blockSize"] or 0), total)


async def _follow(client: Any, transfer: dict[str, Any], json_lines: bool) -> int:
    """Report the transfer's progress until it ends; the exit status."""
    transfer_id, total = transfer["transferId"], int(transfer["totalBytes"] or 0)
    began = last_time = time.monotonic()
    last_done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[rates]}"), TimeRemainingColumn())
    with Progress(*columns, disable=json_lines or not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"{transfer['totalFiles']} file(s)", total=total, rates="")
        while True:
            transfer = await client.call("send.getTransfer", transferId=transfer_id)
            now, done = time.monotonic(), _done_bytes(transfer)
            current = (done - last_done) * 8 / 1000 / max(now - last_time, 1e-3)
            average = done * 8 / 1000 / max(now - began, 1e-3)
            left = (total - done) * 8 / 1000 / average if average > 0 else None
            last_time, last_done = now, done
            progress.update(task, completed=done, rates=(
                f"{current / 1000:.1f} Mbit/s now, {average / 1000:.1f} average"))
            if json_lines:
                print(json.dumps({
                    "transferId": transfer_id, "status": transfer["status"],
                    "totalBytes": total, "bytesDone": done,
                    "totalFiles": transfer["totalFiles"], "currentRate": round(current),
                    "averageRate": round(average),
                    "estimatedTimeRemaining": None if left is None else round(left, 1)}),
                    flush=True)
            if transfer["status"] == "complete":
                break
            if transfer["status"] in ("error", "cancelled"):
                print(f"{PROG}: transfer {transfer_id} {transfer['status']}: "
                      f"{transfer['errorMessage'] or 'cancelled in the server'}",
                      file=sys.stderr)
                return EXIT_API_ERROR
            await asyncio.sleep(POLL_S)
    if not json_lines:
        seconds = (transfer["endTime"] - transfer["requestTime"]) / 1e6 \
            if transfer["endTime"] else time.monotonic() - began
        print(f"Sent {total} bytes in {transfer['totalFiles']} file(s) in {seconds:.1f} s "
              f"(transfer {transfer_id}).")
    return 0
