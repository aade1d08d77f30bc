"""Following transfers on a console: ``jetstream status [TRANSFER_ID]``, and the progress
``jetstream cp`` shows.

On a terminal each transfer is a progress bar (bytes, files, current and average rate,
time left); with ``--json`` (or when stderr is not a terminal) one JSON line a second per
transfer: ``transferId``, ``status``, ``totalBytes``, ``bytesComplete``, ``bytesToSend``,
``totalFiles``, ``filesComplete``, ``filesSkipped``, ``currentRate`` and ``averageRate``
(kbit/s), ``estimatedTimeRemaining`` (seconds, null when unknown), ``errorMessage``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from .client import ENDED
from .console import EXIT_API_ERROR, EXIT_CONNECT, Login, connect, failed
from .errors import CommandFailed, ConnectionFailed

__all__ = ["POLL_S", "PROGRESS_FIELDS", "follow", "run_status"]

#: How often the transfers are looked at (and, with --json, reported).
POLL_S = 1.0
#: The fields of a JSON progress line, from the Transfer structure.
PROGRESS_FIELDS = ("transferId", "status", "totalBytes", "bytesComplete", "bytesToSend",
                   "totalFiles", "filesComplete", "filesSkipped", "currentRate",
                   "averageRate", "estimatedTimeRemaining", "errorMessage")


def _rates(transfer: dict[str, Any]) -> str:
    """Files, current and average rate, time left (or how it ended), in a line's room."""
    files = f"{transfer['filesComplete'] + transfer['filesSkipped']}/" \
            f"{transfer['totalFiles']} files"
    if transfer["filesSkipped"]:
        files += f" ({transfer['filesSkipped']} kept)"
    text = f"{files} {transfer['currentRate'] / 1000:.1f} Mbit/s " \
           f"avg {transfer['averageRate'] / 1000:.1f}"
    if transfer["status"] in ENDED:
        return f"{text} {transfer['status']}"
    left = transfer["estimatedTimeRemaining"]
    return f"{text} {'?' if left is None else f'{left:.0f} s'} left"


async def follow(client: Any, transfer_ids: list[str], json_lines: bool, prog: str) -> int:
    """Report the transfers' progress until each has ended: 0 if every one is complete,
    1 if one failed or was cancelled (its message on stderr)."""
    status = 0
    left = list(transfer_ids)
    complete: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=16),
                  DownloadColumn(), TextColumn("{task.fields[rates]}"),
                  disable=json_lines or not sys.stderr.isatty()) as progress:
        bars: dict[str, TaskID] = {}
        while left:
            for transfer_id in list(left):
                transfer = await client.call("send.getTransfer", transferId=transfer_id)
                done, total = transfer["bytesComplete"], transfer["totalBytes"]
                if transfer_id not in bars:
                    bars[transfer_id] = progress.add_task(transfer_id[:8], total=total,
                                                          rates="")
                progress.update(bars[transfer_id], completed=done, rates=_rates(transfer))
                if json_lines:
                    print(json.dumps({k: transfer[k] for k in PROGRESS_FIELDS}), flush=True)
                if transfer["status"] in ENDED:
                    left.remove(transfer_id)
                    if transfer["status"] != "complete":
                        status = EXIT_API_ERROR
                        print(f"{prog}: transfer {transfer_id} {transfer['status']}: "
                              f"{transfer['errorMessage'] or 'cancelled in the server'}",
                              file=sys.stderr)
                    elif not json_lines:
                        complete.append(transfer)
            if left:
                await asyncio.sleep(POLL_S)
    for transfer in complete:  # (once the bars are done)
        _summary(transfer)
    return status


def _summary(transfer: dict[str, Any]) -> None:
    seconds = (transfer["endTime"] - (transfer["startTime"] or transfer["requestTime"])) / 1e6
    skipped = f", {transfer['filesSkipped']} kept as they were" \
        if transfer["filesSkipped"] else ""
    print(f"Transfer {transfer['transferId']} complete: {transfer['filesComplete']} file(s) "
          f"delivered{skipped}, {transfer['totalBytes']} bytes, in {seconds:.1f} s.")


async def _status(host: str, port: int, login: Login, tls: dict[str, Any],
                  transfer_id: str | None, json_lines: bool, prog: str) -> int:
    try:
        client = await connect(host, port, login, tls, prog)
    except (ConnectionFailed, CommandFailed) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    async with client:
        try:
            if transfer_id is None:
                transfers = await client.call("send.getTransfers")
                ids = [t["transferId"] for t in transfers if t["status"] not in ENDED]
                if not ids:
                    print("No transfers running.", file=sys.stderr)
                    return 0
            else:
                ids = [transfer_id]
            return await follow(client, ids, json_lines, prog)
        except (CommandFailed, ConnectionFailed) as exc:
            return failed(prog, exc)


def run_status(host: str, port: int, login: Login, tls: dict[str, Any],
               transfer_id: str | None, json_lines: bool) -> int:
    """``jetstream status``: follow the transfer (or every unfinished one of the user's)
    until it ends; the exit status (130 on Ctrl-C, the transfers going on)."""
    prog = "jetstream status"
    try:
        return asyncio.run(_status(host, port, login, tls, transfer_id, json_lines, prog))
    except KeyboardInterrupt:
        return 130
