"""The local users file: user names and salted, slow password hashes (scrypt).

One user per line, ``NAME:$scrypt$ln=14,r=8,p=1$SALT$HASH`` with SALT and HASH in base64;
blank lines and lines starting with ``#`` are ignored. The file is written atomically with
mode 0600. Plain-text passwords are never stored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError
from .private import private_dir

__all__ = [
    "MAX_SCRYPT_BYTES",
    "Accounts",
    "StoredHash",
    "UserStore",
    "check_user_name",
    "hash_password",
    "parse_hash",
    "read_users_file",
    "scrypt_hash",
    "verify_password",
    "write_users_file",
]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@\-]{0,63}$")
_LOG2_N, _R, _P = 14, 8, 1
_HASH = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


#: The most memory a derivation may take (128 x r x N x p bytes): 16 times the default
#: parameters' 16 MiB. Parameters that need more are refused (ValueError).
MAX_SCRYPT_BYTES = 256 * 1024 * 1024


def scrypt_bytes(log2_n: int, r: int, p: int) -> int:
    """The memory scrypt takes with these parameters."""
    return 128 * r * (1 << log2_n) * p


def scrypt_hash(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """The password's slow hash under ``salt`` (blocking, about 0.1 s of CPU with the
    default parameters); ValueError when the parameters are out of range."""
    if not (1 <= log2_n <= 30 and r >= 1 and p >= 1) or \
            scrypt_bytes(log2_n, r, p) > MAX_SCRYPT_BYTES:
        raise ValueError(f"scrypt parameters ln={log2_n}, r={r}, p={p} need more than "
                         f"{MAX_SCRYPT_BYTES} bytes")
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt,
                          n=1 << log2_n, r=r, p=p, maxmem=MAX_SCRYPT_BYTES + 1024 * 1024,
                          dklen=32)


def check_user_name(name: str) -> str:
    """``name`` if it may name a user; ValueError saying why not."""
    if not _NAME.match(name):
        raise ValueError(
            f"Invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "not starting with a punctuation mark."
        )
    return name


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password``, as the users file stores it."""
    salt = secrets.token_bytes(16)
    digest = scrypt_hash(password, salt, _LOG2_N, _R, _P)
    return (f"$scrypt$ln={_LOG2_N},r={_R},p={_P}$"
            f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")


@dataclass(frozen=True)
class StoredHash:
    """A parsed ``$scrypt$`` hash: salt, parameters and the derived key."""

    salt: bytes
    log2_n: int
    r: int
    p: int
    digest: bytes


def parse_hash(stored: str) -> StoredHash | None:
    """The parts of a stored hash; None when it is malformed or its parameters are not
    ones this server would compute."""
    match = _HASH.match(stored)
    if match is None:
        return None
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (10 <= log2_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4) or \
            scrypt_bytes(log2_n, r, p) > MAX_SCRYPT_BYTES:
        return None
    return StoredHash(base64.b64decode(match.group(4)), log2_n, r, p,
                      base64.b64decode(match.group(5)))


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; takes the same time either way."""
    parts = parse_hash(stored)
    if parts is None:
        return False
    return hmac.compare_digest(
        scrypt_hash(password, parts.salt, parts.log2_n, parts.r, parts.p), parts.digest)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a user name is unknown, so that an unknown name costs the
    same time (made at the first such login, not when this module is imported)."""
    return hash_password(secrets.token_hex(8))


def read_users_file(path: Path) -> dict[str, str]:
    """Read ``path`` into {name: hash}; raise :class:`ConfigError` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Users file {path} does not exist: create it with "
            f"'jetstream-server user add NAME --users-file {path}'."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read users file {path}: {exc}.") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not _NAME.match(name) or not _HASH.match(stored):
            raise ConfigError(f"Users file {path}, line {number}: expected NAME:$scrypt$... .")
        users[name] = stored
    return users


def write_users_file(path: Path, users: dict[str, str]) -> None:
    """Replace ``path`` atomically with ``users``, readable only by its owner."""
    private_dir(path.parent)
    lines = ["# jetstream-server users: managed by 'jetstream-server user'\n"]
    lines += [f"{name}:{stored}\n" for name, stored in sorted(users.items())]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.writelines(lines)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Accounts(Protocol):
    """Who may log in, and with which password: the users file (:class:`UserStore`) or
    the operating system's accounts (``core.pam.PamAccounts``)."""

    def verify(self, name: str, password: str) -> bool:
        """Check a password (slow: call it off the event loop)."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the user exists (for logs only)."""
        ...

    def names(self) -> list[str]:
        """The users' names, where they can be listed."""
        ...

    def groups_of(self, name: str) -> frozenset[str]:
        """The user's groups (for --supergroup)."""
        ...


#: Passwords remembered as checked (see UserStore.verify).
_VERIFIED_CACHE = 1024


class UserStore:
    """The server's view of the users file, re-read whenever the file changes.

    A password that checked out is remembered (in memory only, as an HMAC under a key of
    this process's, with the stored hash it matched), so that the next login with it,
    a transfer's say, costs no scrypt while the user's hash is unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, str] = {}
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], str] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the file if it changed. Raises :class:`ConfigError` if it cannot."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            read_users_file(self.path)  # raises the error that says how to create it
            raise
        except OSError as exc:
            raise ConfigError(f"Cannot read users file {self.path}: {exc.strerror}.") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._users = read_users_file(self.path)
            self._stamp = stamp

    def stored_hash(self, name: str) -> str | None:
        """The user's stored password hash, if the user exists."""
        try:
            self.reload()
        except ConfigError:
            pass
        return self._users.get(name)

    def names(self) -> list[str]:
        """The users' names, sorted."""
        return sorted(self._users)

    def exists(self, name: str) -> bool:
        """Whether the users file has ``name``."""
        return self.stored_hash(name) is not None

    def groups_of(self, name: str) -> frozenset[str]:
        """A users-file user is in no group (--supergroup is for --auth pam)."""
        return frozenset()

    def verify(self, name: str, password: str) -> bool:
        """Check a password (slow: call it off the event loop)."""
        try:
            self.reload()
        except ConfigError:
            pass  # keep the last good copy; the operator sees the error in the log
        stored = self._users.get(name)
        key = (name, hmac.new(self._pepper, password.encode("utf-8", "surrogatepass"),
                              "sha256").digest())
        if stored is not None and self._verified.get(key) == stored:
            return True
        ok = verify_password(password, stored if stored is not None else _dummy_hash())
        if ok and stored is not None:
            if len(self._verified) >= _VERIFIED_CACHE:
                self._verified.clear()
            self._verified[key] = stored
        return ok and stored is not None
