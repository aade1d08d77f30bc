"""The users file and password hashing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from jetstream_server.core.users import (
    UserStore,
    check_user_name,
    hash_password,
    read_users_file,
    verify_password,
    write_users_file,
)
from jetstream_server.errors import ConfigError


def test_hashes_are_salted_and_verify_only_the_right_password() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second and "s3cret" not in first
    assert first.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("s3cret", first)
    assert not verify_password("s3cret ", first)
    assert not verify_password("s3cret", "garbage")


def test_users_file_round_trip_is_private(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users_file(path, {"alice": hash_password("a")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(read_users_file(path)) == ["alice"]


def test_a_broken_users_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# comment\nalice:plaintext\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_users_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_users_file(tmp_path / "missing")


def test_user_names_are_checked() -> None:
    assert check_user_name("alice.b@example.com") == "alice.b@example.com"
    for bad in ("", "a:b", "-x", "a b", "x" * 65):
        with pytest.raises(ValueError):
            check_user_name(bad)


def test_the_store_sees_users_added_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users_file(path, {})
    store = UserStore(path)
    assert not store.verify("bob", "pw")
    write_users_file(path, {"bob": hash_password("pw")})
    assert store.verify("bob", "pw")
    assert not store.verify("bob", "wrong")
    assert not store.verify("nobody", "pw")


def test_a_long_password_is_not_cut_short() -> None:
    long = "p" * 5000
    stored = hash_password(long)
    assert verify_password(long, stored)
    assert not verify_password("p" * 4096, stored)  # (the first 4096 bytes were all once)
