"""``jetstream get LINK [DESTINATION_PATH]``: fetch a shared link's files into the local
server, with a progress bar.

It asks the local server (``--host``, ``--api-control-port``, ``--user`` as ``jetstream
api``) to fetch the link (``recv.downloadSharedLink``), then follows the incoming transfer
in ``recv.getTransfers`` until it is complete. The link's passphrase, if it has one, comes
from ``JETSTREAM_LINK_PASSPHRASE``, else it is asked.

Exit status: 0 the files are in place; 1 the transfer or the sharing server failed
(message on stderr); 2 usage; 3 cannot connect or log in; 130 interrupted (the transfer
goes on in the server).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import time
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .console import EXIT_API_ERROR, EXIT_CONNECT, connect, failed, read_login
from .errors import CommandFailed, ConnectionFailed, TokenPasswordWrong

__all__ = ["run_get"]

PROG = "jetstream get"
#: How often the incoming transfer is looked at.
POLL_S = 0.5
#: How long the sharing server may take to start sending before giving up.
START_TIMEOUT_S = 120.0


def run_get(host: str, port: int, user: str | None, link: str, destination_path: str | None,
            tls: dict[str, Any]) -> int:
    """Fetch ``link`` into the local server; the exit status."""
    login = read_login(user, None, PROG)
    if login is None:
        return EXIT_CONNECT
    try:
        return asyncio.run(_get(host, port, login, link, destination_path, tls))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the transfer goes on in the server "
              "(recv.getTransfers shows it).", file=sys.stderr)
        return 130


async def _get(host: str, port: int, login: Any, link: str, destination_path: str | None,
               tls: dict[str, Any]) -> int:
    try:
        client = await connect(host, port, login, tls, PROG)
    except (ConnectionFailed, CommandFailed) as exc:
        print(f"{PROG}: {exc}",
              file=sys.stderr)
        return EXIT_CONNECT
    async with client:
        params: dict[str, Any] = {"link": link, "password": os.environ.get(
            "JETSTREAM_LINK_PASSPHRASE")}
        if destination_path is not None:
            params["destinationPath"] = destination_path
        try:
            try:
                started = await client.call("recv.downloadSharedLink", **params)
            except CommandFailed as exc:
                if exc.code != TokenPasswordWrong.code or params["password"] is not None \
                        or not sys.stdin.isatty():
                    raise
                params["password"] = getpass.getpass("Passphrase of the link: ")
                started = await client.call("recv.downloadSharedLink", **params)
            return await _follow(client, started)
        except (CommandFailed, ConnectionFailed) as exc:
            return failed(PROG, exc)


async def _follow(client: Any, started: dict[str, Any]) -> int:
    """Show the incoming transfer's progress until it ends."""
    transfer_id, total = started["transferId"], started.get("totalBytes") or 0
    deadline = time.monotonic() + START_TIMEOUT_S
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not sys.stderr.isatty(), transient=False) as progress:
        task = progress.add_task(f"{started.get('totalFiles', 0)} file(s)", total=total)
        while True:
            record = next((r for r in await client.call("recv.getTransfers")
                           if r["transferId"] == transfer_id), None)
            if record is not None:
                progress.update(task, completed=min(record["bytesRecv"], total))
                if record["status"] == "complete":
                    progress.update(task, completed=total)
                    break
                if record["status"] == "error":
                    print(f"{PROG}: the transfer failed: {record['errorMessage']}",
                          file=sys.stderr)
                    return EXIT_API_ERROR
            elif time.monotonic() > deadline:
                print(f"{PROG}: the sharing server did not start sending within "
                      f"{START_TIMEOUT_S:.0f} s: can it reach this server's data port?",
                      file=sys.stderr)
                return EXIT_API_ERROR
            await asyncio.sleep(POLL_S)
    print(f"Received {total} bytes in {started.get('totalFiles', 0)} file(s) into "
          f"{started.get('destinationPath', '/')} (transfer {transfer_id}).")
    return 0
