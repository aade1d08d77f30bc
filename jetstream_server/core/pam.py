"""The operating system's accounts as the server's users (``--auth pam``).

A password is checked by PAM (python-pam, through libpam: authentication and account
management, so an expired or locked account is refused), with the service name
``--pam-service`` (``jetstream``; PAM falls back to its ``other`` configuration when
/etc/pam.d has no file of that name). PAM reads /etc/shadow, so the server must run as
root; successes are not cached, so a changed or locked password counts at once.
"""

from __future__ import annotations

import grp
import os
import pwd

import pam

from ..errors import ConfigError
from .users import check_user_name

__all__ = ["PamAccounts"]


class PamAccounts:
    """Users are the system's accounts; a user's groups are its OS groups."""

    def __init__(self, service: str) -> None:
        if os.geteuid() != 0:
            raise ConfigError("--auth pam needs the server to run as root (PAM reads "
                              "/etc/shadow); run it as root or use --users-file.")
        self.service = service

    def verify(self, name: str, password: str) -> bool:
        """Check a password with PAM (slow, and slower when wrong: call it off the event
        loop)."""
        try:
            check_user_name(name)
        except ValueError:
            return False
        checker = pam.pam()
        return bool(checker.authenticate(name, password, service=self.service,
                                         resetcreds=False))

    def exists(self, name: str) -> bool:
        """Whether the system has an account of that name."""
        try:
            pwd.getpwnam(name)
        except (KeyError, ValueError):
            return False
        return True

    def names(self) -> list[str]:
        """Not listed: every account with a password may log in."""
        return []

    def groups_of(self, name: str) -> frozenset[str]:
        """The OS groups of ``name`` (its primary group included)."""
        try:
            gid = pwd.getpwnam(name).pw_gid
            gids = os.getgrouplist(name, gid)
        except (KeyError, ValueError, OSError):
            return frozenset()
        names = set()
        for g in gids:
            try:
                names.add(grp.getgrgid(g).gr_name)
            except KeyError:
                pass
        return frozenset(names)
