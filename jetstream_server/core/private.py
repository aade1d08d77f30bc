"""Files and folders the server makes for itself, readable by their owner only.

:func:`private_file` and :func:`private_dir` create files 0600 and folders 0700 whatever
the process umask (one that exists is left as it is): the state, the log, the users file
and the secret key.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file"]


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


def private_file(path: Path) -> bool:
    """Create ``path`` empty, readable and writable by its owner only, unless it exists;
    True when it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True
