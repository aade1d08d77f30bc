"""--auth pam: the operating system's accounts log in (API and transfers), members of a
--supergroup may raise; real accounts made with useradd (root only, as in CI)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                       reason="needs root and useradd to make OS accounts"),
]


@pytest.fixture
def account() -> Iterator[tuple[str, str, str]]:
    """A real OS account with a password, in a new group: (name, password, group)."""
    suffix = secrets.token_hex(3)
    name, group, password = f"jst{suffix}", f"jstg{suffix}", "Pam-pw-" + secrets.token_hex(6)
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", group, name],
                   check=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
    try:
        yield name, password, group
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", group], check=False)


def test_os_accounts_log_in_through_pam_and_a_supergroup_raises(
        tmp_path: Path, account: tuple[str, str, str]) -> None:
    name, password, group = account
    (tmp_path / "sandbox").mkdir()
    server = ServerProcess(tmp_path, "--auth", "pam", "--supergroup", group)
    try:
        done = server.api("getManifests", user=name, password=password)
        assert done.returncode == 0, done.stderr
        wrong = server.api("getManifests", user=name, password="not it")
        assert wrong.returncode == 3 and "[auth_failed]" in wrong.stderr
        nobody = server.api("getManifests", user="no-such-account", password="x")
        assert nobody.returncode == 3 and "[auth_failed]" in nobody.stderr
        raised = server.api("superuser", user=name, password=password)
        assert raised.returncode == 0, raised.stderr
        # the local users file plays no part
        assert not (tmp_path / "users").exists()
        subprocess.run(["usermod", "-L", name], check=True)  # a locked account: refused
        locked = server.api("getManifests", user=name, password=password)
        assert locked.returncode == 3 and "[auth_failed]" in locked.stderr
    finally:
        server.stop()
