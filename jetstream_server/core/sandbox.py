"""Sandbox paths: placeholder expansion and confinement of a user's paths to the sandbox.

A user sees the sandbox as ``/``: the virtual path ``/a/b`` means ``<sandbox>/a/b``, and a
relative ``a/b`` means the same. A path with a ``..`` component or a NUL byte is refused
rather than normalised, and so is one whose real location (symlinks resolved) is outside
the sandbox. A sandbox of ``/`` gives the whole file system, as JetStream does without one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PathOutside, PathRefused

__all__ = ["MAX_NAME_BYTES", "expand_sandbox", "long_name", "open_in_sandbox", "real_sandbox",
           "resolve_in_sandbox", "split_user", "virtual_parts", "written_parts",
           "written_path"]

#: The longest name of a file or folder (bytes of UTF-8) that Linux file systems take.
MAX_NAME_BYTES = 255


def split_user(full_name: str) -> tuple[str, str]:
    """(user, domain) of ``DOMAIN\\user`` or ``user@domain``; the domain may be empty."""
    if "\\" in full_name:
        domain, _, user = full_name.partition("\\")
        return user, domain
    if "@" in full_name:
        user, _, domain = full_name.partition("@")
        return user, domain
    return full_name, ""


def expand_sandbox(template: str, full_name: str) -> str:
    """Expand ``%u`` (user), ``%d`` (domain), ``%f`` (full user name) and ``%%``."""
    user, domain = split_user(full_name)
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            code = template[i + 1]
            expansion = {"u": user, "d": domain, "f": full_name, "%": "%"}.get(code)
            if expansion is not None:
                out.append(expansion)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def virtual_parts(path: str) -> list[str]:
    """The components of a user's path, refusing NUL bytes and ``..``."""
    if "\x00" in path:
        raise PathRefused(f"Path {path!r} contains a NUL byte.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"Path {path!r} contains '..', which is not allowed.")
    return parts


def long_name(parts: list[str]) -> str | None:
    """The first of ``parts`` longer than MAX_NAME_BYTES, if one is."""
    for part in parts:  # (63 characters are at most 252 bytes of UTF-8)
        if len(part) > 63 and len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return part
    return None


def real_sandbox(root: str) -> str:
    """The real path of the sandbox folder ``root``, which must exist."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise PathRefused(f"Sandbox folder {root} does not exist.")
    return real_root


def _inside(real: str, real_root: str) -> bool:
    return real_root == "/" or real == real_root or real.startswith(real_root + os.sep)


def resolve_in_sandbox(root: str, path: str) -> Path:
    """The real path of the user's ``path`` inside ``root``, which must exist.

    Raises :class:`~jetstream_server.errors.PathOutside` when symlinks lead out of the
    sandbox.
    """
    real_root = real_sandbox(root)
    real = os.path.realpath(os.path.join(real_root, *virtual_parts(path)))
    if not _inside(real, real_root):
        raise PathOutside(f"Path {path} leads outside the sandbox.")
    return Path(real)


def open_in_sandbox(real_root: str, path: str) -> int:
    """A descriptor of the user's file ``path`` opened for reading under the sandbox
    ``real_root`` (from :func:`real_sandbox`). The file actually opened is checked (its
    path, as /proc/self/fd tells), so no symlink, not even one swapped in meanwhile, leads
    out: two system calls, where resolving the path first costs one per component.

    Raises :class:`~jetstream_server.errors.PathOutside` when symlinks lead out of the
    sandbox."""
    joined = os.path.join(real_root, *virtual_parts(path))
    fd = os.open(joined, os.O_RDONLY | os.O_CLOEXEC)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: resolve the path instead
        real = os.path.realpath(joined)
    if not _inside(real, real_root):
        os.close(fd)
        raise PathOutside(f"Path {path} leads outside the sandbox.")
    return fd


def written_parts(destination_path: str | None, target: str) -> list[str]:
    """The components under the sandbox where a received file goes:
    ``<destinationPath>/<file target path>``, both taken as relative to the sandbox."""
    name = virtual_parts(target)
    if not name:
        raise PathRefused(f"Path {target!r} names no file.")
    return virtual_parts(destination_path or "") + name


def written_path(sandbox: str, user: str, destination_path: str | None, target: str) -> str:
    """JetStream's rule: ``<sandbox>/<destinationPath>/<file target path>``."""
    root = expand_sandbox(sandbox, user)
    return os.path.join(root, *written_parts(destination_path, target))
