"""Files and folders the server makes for itself, readable by their owner only.

:func:`private_file` and :func:`private_dir` create files 0600 and folders 0700 whatever
the process umask (one that exists is left as it is): the state, the log, the users file
and the keys. :func:`read_private_file` reads a secret, refusing one others may read;
:func:`private_secret` makes it first if it is missing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

__all__ = ["private_dir", "private_file", "private_secret", "read_private_file",
           "write_private_file"]


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents as folders only their owner can enter."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # (the umask may have taken bits away)


def _create(path: Path) -> int:
    """A descriptor of ``path``, created 0600 whatever the umask; FileExistsError if it
    exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: Path) -> bool:
    """Create ``path`` empty, readable and writable by its owner only, unless it exists;
    True when it was created."""
    try:
        os.close(_create(path))
    except FileExistsError:
        return False
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, in a 0700 folder made if missing) holding ``data``, flushed
    to disk; FileExistsError if it exists."""
    private_dir(path.parent)
    fd = _create(path)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def private_secret(path: Path, what: str, make: Callable[[], bytes]) -> bytes:
    """The secret in ``path`` (``what`` names it in errors), written there by ``make()``
    first if the file does not exist. ConfigError as :func:`read_private_file` says, or
    when it cannot be made."""
    if not path.exists():
        try:
            write_private_file(path, make())
        except FileExistsError:
            pass  # (made meanwhile by another start)
        except OSError as exc:
            raise ConfigError(f"Cannot make {what} {path}: {exc.strerror}.") from None
    return read_private_file(path, what)


def read_private_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, a secret (``what`` names it in errors). Raises ConfigError
    when it cannot be read, or when anyone but its owner may read it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read {what} {path}: {exc.strerror}.") from None
    if mode & 0o077:
        raise ConfigError(f"{what[:1].upper()}{what[1:]} {path} is readable by others (mode "
                          f"{mode:04o}): chmod 600 {path}.")
    return data
