"""Server settings: one table, read from flags, ``JETSTREAM_*`` variables and a TOML file.

Precedence, highest first: the command line, the environment (``--api-port`` reads
``JETSTREAM_API_PORT``), the ``--config`` TOML file (keys are the flag names without the
dashes in front, with ``-`` or ``_``), then the defaults below. Paths left at their
defaults live under one home folder, ``$JETSTREAM_HOME`` or
``~/.local/share/jetstream-server``, which is created with an empty users file and an
empty sandbox on first start, so that the server runs with no settings at all.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..protocol.noise import CIPHERS
from ..protocol.wire import DEFAULT_PORT
from .bandwidth import Window, check_limit, parse_schedule

__all__ = ["SETTINGS", "Setting", "Settings", "default_home", "load_settings"]

#: The --log-level names.
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Setting:
    """One server setting: its flag, environment variable, TOML key and help."""
    name: str  # the flag without "--"
    kind: type  # str, int, bool, Path or list
    help: str
    flag: bool = True  # a bool given as a bare flag; False: it takes true or false

    @property
    def attr(self) -> str:
        """Its attribute name in :class:`Settings`."""
        return self.name.replace("-", "_")

    @property
    def envvar(self) -> str:
        """The environment variable that sets it."""
        return "JETSTREAM_" + self.name.upper().replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("api-host", str, "Address the control API listens on (default: all interfaces)."),
    Setting("api-port", int, f"TCP port of the control API (default {DEFAULT_PORT}; 0 picks "
                             "one)."),
    Setting("api-allow-remote-control", bool,
            "Accept API connections from addresses other than loopback (over TLS only)."),
    Setting("api-cert", Path, "TLS certificate (PEM) of the control port, with --api-key "
                              "(default: one the server makes, in the state folder)."),
    Setting("api-key", Path, "Private key (PEM) of --api-cert."),
    Setting("api-disable-api-tokens", bool, "Turn API tokens off (createAPIToken, token "
                                            "logins, destination tokens)."),
    Setting("api-disable-shared-tokens", bool, "Turn shared links off "
                                               "(send.createSharedToken, their downloads)."),
    Setting("external-address", str, "HOST or HOST:PORT other servers reach this one's "
                                      "control port at, for shared links (default: the "
                                      "host name; the port: --api-port)."),
    Setting("recv-port", int, f"Data port, UDP and TCP (default {DEFAULT_PORT}; 0 picks one)."),
    Setting("recv-allow-anonymous", bool,
            "Accept incoming transfers without credentials, as user 'anonymous'."),
    Setting("no-data-encryption", bool,
            "Do not encrypt file data between servers (trusted networks only): such a "
            "server sends to, and receives from, only servers that do not encrypt either."),
    Setting("data-cipher", str,
            "AEAD of the data sessions this server starts: 'aes-256-gcm' (default) or "
            "'chacha20-poly1305'."),
    Setting("udp-offload", bool,
            "Send and receive UDP data in batches with Linux GSO/GRO where the kernel "
            "allows: true (default) or false.", flag=False),
    Setting("users-file", Path, "Users file (default: HOME/users)."),
    Setting("auth", str, "Who may log in: 'users-file' (default: --users-file) or 'pam' "
                         "(the operating system's accounts; the server must run as root)."),
    Setting("pam-service", str, "PAM service name with --auth pam (default: jetstream; "
                                "PAM uses 'other' when /etc/pam.d has no such file)."),
    Setting("superuser", list, "A user who may raise a session with superuser(); repeatable."),
    Setting("supergroup", list, "With --auth pam: members of this OS group are superusers; "
                                "repeatable."),
    Setting("sandbox-dir", str,
            "Root of every user's files; %u, %d, %f, %% expand (default: HOME/sandbox)."),
    Setting("persistent-state-dir", Path, "Folder of the server's state (default: HOME/state)."),
    Setting("secret-key-file", Path,
            "Key that seals stored destination passwords, kept apart from the state "
            "(default: HOME/secret.key; made at first start, mode 0600)."),
    Setting("persistent-destinations", bool,
            "Keep destinations across restarts: true (default) or false.", flag=False),
    Setting("persistent-transfers", bool,
            "Keep transfers (and the manifests they use) across restarts: true (default) "
            "or false.", flag=False),
    Setting("trigger-dir", Path, "Folder of trigger scripts."),
    Setting("trigger-log", bool, "Log each trigger run and show its output on stderr."),
    Setting("trigger-on-api", bool, "Run on.<command> triggers after every API command."),
    Setting("trigger-stop-seconds", int, "On SIGTERM, wait this long for running and "
                                         "queued trigger scripts (default 30; 0-3600; keep "
                                         "it below the unit's TimeoutStopSec)."),
    Setting("log", Path, "Also write the log to this file."),
    Setting("log-format", str, "Log lines as 'text' (default) or 'json' (one object a line)."),
    Setting("log-level", str, "Log from this level on: debug, info (default), warning, error."),
    Setting("metrics-port", int, "Serve Prometheus metrics over HTTP on this TCP port "
                                 "(default: off; 0 picks one). See docs/operations.md."),
    Setting("metrics-host", str, "Address the metrics port listens on (default 127.0.0.1: "
                                 "this machine only)."),
    Setting("server-name", str, "Friendly server name (default: the host name)."),
    Setting("incoming-rate-limit", int, "Most this server receives at, in all (kbit/s; "
                                        "default 0: no limit)."),
    Setting("outgoing-rate-limit", int, "Most this server sends at, in all (kbit/s; "
                                        "default 0: no limit)."),
    Setting("borrow-incoming-rate", bool, "Incoming transfers may also use the outgoing "
                                          "limit while nothing is sent."),
    Setting("borrow-outgoing-rate", bool, "Outgoing transfers may also use the incoming "
                                          "limit while nothing is received."),
    Setting("transfers-per-destination", int, "Transfers to one destination sent at the "
                                              "same time (default 1: one after another, in "
                                              "priority order; up to 64)."),
)
#: The config file's table of limits by time of day (core/bandwidth.py); no flag.
SCHEDULE_KEY = "bandwidth-schedule"
_BY_KEY = {s.name: s for s in SETTINGS} | {s.attr: s for s in SETTINGS}


def default_home() -> Path:
    """Where the server keeps its files by default (``$JETSTREAM_HOME``, XDG,
    ~/.local/share)."""
    env = os.environ.get("JETSTREAM_HOME")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "jetstream-server"


@dataclass(frozen=True)
class Settings:
    """Every server setting, merged from flags, environment, TOML and defaults."""
    api_host: str | None = None
    api_port: int = DEFAULT_PORT
    api_allow_remote_control: bool = False
    api_cert: Path | None = None
    api_key: Path | None = None
    api_disable_api_tokens: bool = False
    api_disable_shared_tokens: bool = False
    external_address: str | None = None
    recv_port: int = DEFAULT_PORT
    recv_allow_anonymous: bool = False
    no_data_encryption: bool = False
    data_cipher: str = "aes-256-gcm"
    udp_offload: bool = True
    users_file: Path = field(default_factory=lambda: default_home() / "users")
    auth: str = "users-file"
    pam_service: str = "jetstream"
    superuser: tuple[str, ...] = ()
    supergroup: tuple[str, ...] = ()
    sandbox_dir: str = field(default_factory=lambda: str(default_home() / "sandbox"))
    persistent_state_dir: Path = field(default_factory=lambda: default_home() / "state")
    secret_key_file: Path = field(default_factory=lambda: default_home() / "secret.key")
    persistent_destinations: bool = True
    persistent_transfers: bool = True
    trigger_dir: Path | None = None
    trigger_log: bool = False
    trigger_on_api: bool = False
    trigger_stop_seconds: int = 30
    log: Path | None = None
    log_format: str = "text"
    log_level: str = "info"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    server_name: str = field(default_factory=socket.gethostname)
    incoming_rate_limit: int = 0
    outgoing_rate_limit: int = 0
    borrow_incoming_rate: bool = False
    borrow_outgoing_rate: bool = False
    transfers_per_destination: int = 1
    #: the config file's [[bandwidth-schedule]] entries
    bandwidth_schedule: tuple[Window, ...] = ()
    #: Settings left at their defaults (their paths may be created on start).
    defaulted: frozenset[str] = frozenset()

    def public(self) -> dict[str, Any]:
        """The settings as a superuser sees them in getServerInfo's ``configuration``."""
        return {**{s.attr: _plain(getattr(self, s.attr)) for s in SETTINGS},
                "bandwidth_schedule": [w.to_api() for w in self.bandwidth_schedule]}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def load_settings(given: dict[str, Any], config_file: Path | None) -> Settings:
    """Merge ``given`` (from flags or the environment; None means not given) over the
    TOML file's values and the defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_toml(config_file))
    for key, value in given.items():
        if value is not None and value != ():
            values[_BY_KEY[key].attr] = value
    for key in ("users_file", "persistent_state_dir", "secret_key_file", "trigger_dir", "log",
                "api_cert", "api_key"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).expanduser()
    for key in ("superuser", "supergroup"):
        if key in values:
            values[key] = tuple(values[key])
    if values.get("auth", "users-file") not in ("users-file", "pam"):
        raise ConfigError("--auth must be 'users-file' or 'pam'.")
    for key in ("api_port", "recv_port", "metrics_port"):
        port = values.get(key)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"--{key.replace('_', '-')} must be between 0 and 65535.")
    if not 0 <= values.get("trigger_stop_seconds", 30) <= 3600:
        raise ConfigError("--trigger-stop-seconds must be between 0 and 3600.")
    if values.get("log_format", "text") not in ("text", "json"):
        raise ConfigError("--log-format must be 'text' or 'json'.")
    if values.get("log_level", "info") not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}.")
    for key in ("incoming_rate_limit", "outgoing_rate_limit"):
        try:
            check_limit(values.get(key, 0), "--" + key.replace("_", "-"))
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None
    if not 1 <= values.get("transfers_per_destination", 1) <= 64:
        raise ConfigError("--transfers-per-destination must be between 1 and 64.")
    if values.get("data_cipher", "aes-256-gcm") not in CIPHERS:
        raise ConfigError(f"--data-cipher must be one of {', '.join(CIPHERS)}.")
    defaulted = frozenset(s.attr for s in SETTINGS if s.attr not in values)
    return Settings(**values, defaulted=defaulted)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
    values: dict[str, Any] = {}
    schedule = data.pop(SCHEDULE_KEY, None)
    if schedule is not None:
        try:
            values["bandwidth_schedule"] = parse_schedule(
                schedule if isinstance(schedule, list) else [schedule])
        except ValueError as exc:
            raise ConfigError(f"Config file {path}: {exc}.") from None
    for key, value in data.items():
        setting = _BY_KEY.get(key)
        if setting is None:
            raise ConfigError(f"Unknown setting {key!r} in config file {path}.")
        values[setting.attr] = _check_type(setting, value, path)
    return values


def _check_type(setting: Setting, value: Any, path: Path) -> Any:
    if setting.kind is list:
        if isinstance(value, str):
            return [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        expected_name = "a list of strings"
    else:
        kind = str if setting.kind is Path else setting.kind
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        expected_name = {str: "a string", int: "an integer", bool: "true or false"}[kind]
    if not ok:
        raise ConfigError(f"Setting {setting.name!r} in config file {path} must be "
                          f"{expected_name}.")
    return value
