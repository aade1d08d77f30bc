"""Command-line entry points: ``jetstream-server`` and ``jetstream (server|api)``.

Only this module installs signal handlers, sets up logging and picks the event loop. The
daemon's modules are imported when the daemon runs, and the console's when ``api`` runs,
so that neither pays for the other at start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .core.config import SETTINGS, Setting, default_home, load_settings
from .core.objects import OVERWRITE_RULES
from .core.private import private_file
from .core.users import (
    check_user_name,
    hash_password,
    read_users_file,
    write_users_file,
)
from .errors import ConfigError
from .protocol.wire import DEFAULT_PORT
from .sdnotify import notify, watchdog

if TYPE_CHECKING:
    from .server import Server

__all__ = ["jetstream_main", "server_main"]

log = logging.getLogger("jetstream.cli")

EXIT_CONFIG = 2


def _fail(message: str) -> None:
    click.echo(f"jetstream-server: error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _option(setting: Setting) -> Any:
    kwargs: dict[str, Any] = {"envvar": setting.envvar, "help": setting.help, "default": None}
    if setting.kind is bool and setting.flag:
        kwargs.update(is_flag=True, flag_value=True)
    elif setting.kind is bool:
        kwargs.update(type=click.BOOL, metavar="true|false")
    elif setting.kind is list:
        kwargs.update(multiple=True)
    elif setting.kind is int:
        kwargs.update(type=int)
    elif setting.kind is Path:
        kwargs.update(type=click.Path(path_type=Path))
    return click.option("--" + setting.name, setting.attr, **kwargs)


def _server_options(func: Any) -> Any:
    for setting in reversed(SETTINGS):
        func = _option(setting)(func)
    return click.option("--config", "config_file", envvar="JETSTREAM_CONFIG",
                        type=click.Path(path_type=Path),
                        help="TOML file of settings (keys are the flag names).")(func)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and any extra fields."""

    _standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            # ISO 8601 with the zone's offset: lines from servers in different zones compare
            "time": dt.datetime.fromtimestamp(record.created).astimezone().isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._standard:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _setup_logging(log_file: Path | None, log_format: str = "text",
                   level: str = "info") -> None:
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if log_file is not None:
        try:
            private_file(log_file)  # created 0600: logs name users, addresses and paths
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            _fail(f"Cannot open --log file {log_file}: {exc.strerror}.")
        handler.setFormatter(formatter)
        root.addHandler(handler)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 65536
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


async def _serve(server: Server) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if server.closing:  # a second signal: exit at once
            log.warning("second signal: exiting now")
            os._exit(1)
        notify("STOPPING=1")
        log.info("stopping: draining")
        server.close()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    await server.start()
    notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=Listening on port {server.api_port}")
    pinger = loop.create_task(watchdog())
    try:
        await server.serve_forever()  # (until a signal closes it and the drain is done)
    finally:
        pinger.cancel()
    log.info("stopped")


def run_server(config_file: Path | None, given: dict[str, Any]) -> None:
    try:
        settings = load_settings(given, config_file)
    except ConfigError as exc:
        _fail(str(exc))
    _setup_logging(settings.log, settings.log_format, settings.log_level)
    _raise_fd_limit()
    import uvloop

    from .server import Server

    server = Server(settings)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(server))
    except ConfigError as exc:
        _fail(str(exc))


class _ServerGroup(click.Group):
    """``jetstream-server [OPTIONS]`` runs the daemon; ``... user`` manages users."""


@click.group(cls=_ServerGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@_server_options
@click.version_option(__version__, prog_name="jetstream-server")
@click.pass_context
def server_cli(ctx: click.Context, /, config_file: Path | None, **given: Any) -> None:
    """Run the jetstream-server daemon (or manage its users with 'user')."""
    if ctx.invoked_subcommand is None:
        run_server(config_file, given)


@server_cli.group("user")
def user_cli() -> None:
    """Manage the users file: add, passwd, del, list."""


_users_file_option = click.option(
    "--users-file", type=click.Path(path_type=Path), envvar="JETSTREAM_USERS_FILE",
    default=None, help="Users file (default: HOME/users).")


def _users_path(users_file: Path | None) -> Path:
    if users_file is not None:
        return users_file
    return default_home() / "users"


def _read_password(name: str) -> str:
    password = os.environ.get("JETSTREAM_API_PASSWORD")
    if password is not None:
        return password
    try:
        first = getpass.getpass(f"New password for {name}: ")
        second = getpass.getpass("Repeat it: ")
    except (EOFError, OSError):
        _fail("No password given: set JETSTREAM_API_PASSWORD or run in a terminal.")
    if first != second:
        _fail("The passwords differ.")
    return first


def _set_password(users: dict[str, str], name: str, path: Path) -> None:
    """Ask for NAME's password and write the users file with its hash."""
    password = _read_password(name)
    if not password:
        _fail("The password is empty.")
    users[name] = hash_password(password)
    write_users_file(path, users)


def _load_users(path: Path, must_exist: bool) -> dict[str, str]:
    if not path.exists() and not must_exist:
        return {}
    try:
        return read_users_file(path)
    except ConfigError as exc:
        _fail(str(exc))
    raise AssertionError


@user_cli.command("add")
@click.argument("name")
@_users_file_option
def user_add(name: str, users_file: Path | None) -> None:
    """Add user NAME (password from JETSTREAM_API_PASSWORD, else asked twice)."""
    path = _users_path(users_file)
    try:
        check_user_name(name)
    except ValueError as exc:
        _fail(str(exc))
    users = _load_users(path, must_exist=False)
    if name in users:
        _fail(f"User {name} already exists in {path}; use 'passwd' to change the password.")
    _set_password(users, name, path)
    click.echo(f"Added user {name} to {path}.")


@user_cli.command("passwd")
@click.argument("name")
@_users_file_option
def user_passwd(name: str, users_file: Path | None) -> None:
    """Change the password of user NAME."""
    path = _users_path(users_file)
    users = _load_users(path, must_exist=True)
    if name not in users:
        _fail(f"No user {name} in {path}.")
    _set_password(users, name, path)
    click.echo(f"Changed the password of {name}.")


@user_cli.command("del")
@click.argument("name")
@_users_file_option
def user_del(name: str, users_file: Path | None) -> None:
    """Remove user NAME."""
    path = _users_path(users_file)
    users = _load_users(path, must_exist=True)
    if users.pop(name, None) is None:
        _fail(f"No user {name} in {path}.")
    write_users_file(path, users)
    click.echo(f"Removed user {name}.")


@user_cli.command("list")
@_users_file_option
def user_list(users_file: Path | None) -> None:
    """List the users, one per line."""
    for name in sorted(_load_users(_users_path(users_file), must_exist=True)):
        click.echo(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jetstream")
def jetstream_cli() -> None:
    """jetstream: run a server ('server'), send it an API command ('api'), copy files to
    another server through it ('cp'), follow transfers ('status'), or fetch a shared
    link into it ('get')."""


jetstream_cli.add_command(server_cli, "server")


class _ApiCommand(click.Command):
    """``jetstream api --help`` lists every command, from the registry the server uses."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .console import REGISTRY

        with formatter.section("Commands (jetstream api COMMAND --help for its parameters)"):
            formatter.write_dl([(c.name, c.summary) for c in REGISTRY.commands()])


def _connection_options(func: Any) -> Any:
    """--host, --api-control-port and --user, as every console command has them."""
    for option in reversed((
        click.option("--host", default="localhost", envvar="JETSTREAM_API_HOST",
                     show_default=True, help="Server to connect to."),
        click.option("--api-control-port", "port", type=int, default=DEFAULT_PORT,
                     envvar="JETSTREAM_API_CONTROL_PORT", show_default=True,
                     help="Its control API port."),
        click.option("--user", default=None, envvar="JETSTREAM_API_USER",
                     help="Log in as this user (password from JETSTREAM_API_PASSWORD, "
                          "else asked)."),
    )):
        func = option(func)
    return func


def _tls_options(func: Any) -> Any:
    """How the console trusts a server's TLS certificate."""
    for option in reversed((
        click.option("--api-fingerprint", "fingerprint", default=None,
                     envvar="JETSTREAM_API_FINGERPRINT",
                     help="Trust the server whose TLS certificate has this fingerprint "
                          "(certificateFingerprint in its getServerInfo)."),
        click.option("--api-ca-file", "ca_file", type=click.Path(path_type=Path),
                     default=None, envvar="JETSTREAM_API_CA_FILE",
                     help="Trust the server's certificate if this CA (PEM) signed it for "
                          "--host."),
        click.option("--api-tls/--no-api-tls", "tls", default=None,
                     help="TLS even to this machine (default: TLS to any other host; plain "
                          "text to this one). Other hosts' servers are remembered on first "
                          "use in ~/.config/jetstream/known_servers "
                          "($JETSTREAM_KNOWN_SERVERS)."),
    )):
        func = option(func)
    return func


@jetstream_cli.command("api", cls=_ApiCommand,
                       context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@_connection_options
@click.option("--token", default=None, envvar="JETSTREAM_API_TOKEN",
              help="Log in with this API token's string instead of --user (better given "
                   "as JETSTREAM_API_TOKEN; its password, if any, from "
                   "JETSTREAM_API_PASSWORD).")
@click.option("--superuser", is_flag=True,
              help="Raise the session to superuser before COMMAND (for the commands only a "
                   "raised superuser may run; the user must be one of the server's "
                   "--superuser names).")
@_tls_options
@click.argument("command")
@click.argument("parameters", nargs=-1, type=click.UNPROCESSED)
def api_cli(host: str, port: int, user: str | None, token: str | None, superuser: bool,
            fingerprint: str | None, ca_file: Path | None, tls: bool | None, command: str,
            parameters: tuple[str, ...]) -> None:
    """Send COMMAND with --param=value parameters and print the result as JSON."""
    from .console import run_console

    sys.exit(run_console(host, port, user, command, list(parameters),
                         {"tls": tls, "fingerprint": fingerprint, "ca_file": ca_file},
                         token, superuser))


@jetstream_cli.command("cp", context_settings={"allow_interspersed_args": True})
@_connection_options
@_tls_options
@click.option("--json", "json_lines", is_flag=True,
              help="One line of progress JSON a second instead of the progress bar.")
@click.option("--detach", is_flag=True,
              help="On Ctrl-C leave the transfer running (default: cancel it).")
@click.option("--send-rate-max", "rate_kbps", type=click.IntRange(0), default=None,
              help="kbit/s (0: as fast as the path allows).")
@click.option("--rate-policy", "policy", type=click.Choice(["fair", "low", "high", "fixed"]),
              default=None, help="How to share the link (default fair).")
@click.option("--overwrite", type=click.Choice(OVERWRITE_RULES), default=None,
              help="Files that exist there: always replaced (the default), never, ifNewer, "
                   "ifDifferent (size or modification time), ifChecksumDiffers (only the "
                   "parts that differ are sent).")
@click.argument("paths", nargs=-1, required=True)
def cp_cli(host: str, port: int, user: str | None, fingerprint: str | None,
           ca_file: Path | None, tls: bool | None, json_lines: bool, detach: bool,
           rate_kbps: int | None, policy: str | None, overwrite: str | None,
           paths: tuple[str, ...]) -> None:
    """Copy files and folders of your sandbox (SRC...) to another server through the
    local one: jetstream cp SRC... [USER@]HOST[:PORT]:DST (or DESTINATION_ID:DST). USER's
    password from JETSTREAM_DESTINATION_PASSWORD, else asked. Exit 0 only when the
    transfer is complete."""
    from .cp import run_cp

    if len(paths) < 2:
        raise click.UsageError("name at least one SRC and the TARGET ([USER@]HOST[:PORT]:DST).")
    sys.exit(run_cp(host, port, user, list(paths[:-1]), paths[-1],
                    {"tls": tls, "fingerprint": fingerprint, "ca_file": ca_file},
                    json_lines=json_lines, detach=detach, rate_kbps=rate_kbps,
                    policy=policy, overwrite=overwrite))


@jetstream_cli.command("status")
@_connection_options
@_tls_options
@click.option("--json", "json_lines", is_flag=True,
              help="One line of progress JSON a second per transfer instead of bars.")
@click.argument("transfer_id", required=False)
def status_cli(host: str, port: int, user: str | None, fingerprint: str | None,
               ca_file: Path | None, tls: bool | None, json_lines: bool,
               transfer_id: str | None) -> None:
    """Follow a transfer (TRANSFER_ID), or every unfinished one of yours, until it ends,
    with progress bars. Exit 0 when each is complete, 1 when one failed or was
    cancelled; Ctrl-C stops watching (the transfers go on)."""
    from .console import EXIT_CONNECT, read_login
    from .watch import run_status

    login = read_login(user, None, "jetstream status")
    if login is None:
        sys.exit(EXIT_CONNECT)
    sys.exit(run_status(host, port, login,
                        {"tls": tls, "fingerprint": fingerprint, "ca_file": ca_file},
                        transfer_id, json_lines))


@jetstream_cli.command("get")
@_connection_options
@_tls_options
@click.argument("link")
@click.argument("destination_path", required=False)
def get_cli(host: str, port: int, user: str | None, fingerprint: str | None,
            ca_file: Path | None, tls: bool | None, link: str,
            destination_path: str | None) -> None:
    """Fetch a shared link's files into the local server (its DESTINATION_PATH folder),
    with a progress bar. The link's passphrase from JETSTREAM_LINK_PASSPHRASE, else
    asked."""
    from .get import run_get

    sys.exit(run_get(host, port, user, link, destination_path,
                     {"tls": tls, "fingerprint": fingerprint, "ca_file": ca_file}))


def _main(group: click.Group, prog_name: str) -> None:
    """Run ``group``; a usage error is one line on stderr and exit status 2."""
    try:
        group.main(prog_name=prog_name, standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"{prog_name}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)


def server_main() -> None:
    _main(server_cli, "jetstream-server")


def jetstream_main() -> None:
    _main(jetstream_cli, "jetstream")
