"""The users file, password hashing and the login throttle."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from jetstream_server.errors import ConfigError
from jetstream_server.throttle import LoginThrottle
from jetstream_server.users import (
    UserStore,
    check_user_name,
    hash_password,
    read_users_file,
    verify_password,
    write_users_file,
)


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


def test_throttle_grows_per_address_and_per_name_then_forgets() -> None:
    throttle = LoginThrottle(base_delay_s=0.25, max_delay_s=8.0, forget_after_s=900)
    assert throttle.delay_s("1.2.3.4", "alice", now=0) == 0
    throttle.failed("1.2.3.4", "alice", now=0)
    assert throttle.delay_s("1.2.3.4", "alice", now=1) == 0.25
    throttle.failed("1.2.3.4", "alice", now=1)
    throttle.failed("1.2.3.4", "alice", now=2)
    assert throttle.delay_s("1.2.3.4", "zed", now=3) == 1.0  # same address
    assert throttle.delay_s("5.6.7.8", "alice", now=3) == 1.0  # same name
    for i in range(10):
        throttle.failed("1.2.3.4", "alice", now=3 + i)
    assert throttle.delay_s("1.2.3.4", "alice", now=20) == 8.0
    assert throttle.delay_s("1.2.3.4", "alice", now=20 + 901) == 0
    throttle.failed("9.9.9.9", "carol", now=0)
    throttle.succeeded("9.9.9.9", "carol")
    assert throttle.delay_s("9.9.9.9", "carol", now=1) == 0


def test_throttle_keeps_a_bounded_number_of_counters() -> None:
    throttle = LoginThrottle(max_keys=10)
    for i in range(100):
        throttle.failed(f"10.0.0.{i}", f"user{i}", now=0)
    assert len(throttle._failures) <= 10
