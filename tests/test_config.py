"""Settings: flags over environment over TOML over defaults; bad settings say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jetstream_server.cli import server_cli
from jetstream_server.core.config import load_settings
from jetstream_server.errors import ConfigError


def test_toml_values_fill_in_and_given_values_win(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('api-port = 9001\nrecv_port = 9002\nsuperuser = ["root"]\n'
                      'trigger-log = true\nsandbox-dir = "/srv/%u"\n')
    settings = load_settings({"api_port": 9100, "recv_port": None}, config)
    assert settings.api_port == 9100  # given beats the file
    assert settings.recv_port == 9002
    assert settings.superuser == ("root",)
    assert settings.trigger_log is True
    assert settings.sandbox_dir == "/srv/%u"
    assert "api_port" not in settings.defaulted and "log" in settings.defaulted


@pytest.mark.parametrize(("text", "message"), [
    ("no-such-setting = 1\n", "Unknown setting 'no-such-setting'"),
    ('api-port = "8886"\n', "'api-port' .* must be an integer"),
    ("trigger-log = 1\n", "'trigger-log' .* must be true or false"),
    ("api-port = [\n", "not valid TOML"),
    ("outgoing-rate-limit = -5\n", "--outgoing-rate-limit is in kbit/s"),
    ('[[bandwidth-schedule]]\nfrom = "08:00"\nuntil = "9pm"\noutgoing-rate-limit = 1\n',
     "bandwidth-schedule entry 1: until must be a time of day HH:MM"),
])
def test_bad_toml_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, config)


def test_ports_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigError, match="--api-port must be between 0 and 65535"):
        load_settings({"api_port": 70000}, None)


def _run_with(env: dict[str, str], *args: str) -> dict[str, object]:
    """Parse like the real CLI and return what it would load (without serving)."""
    captured: dict[str, object] = {}

    def fake_run(config_file: Path | None, given: dict[str, object]) -> None:
        captured.update(vars(load_settings(given, config_file)))

    import jetstream_server.cli as cli

    original = cli.run_server
    cli.run_server = fake_run
    try:
        result = CliRunner().invoke(server_cli, list(args), env=env)
    finally:
        cli.run_server = original
    assert result.exit_code == 0, result.output
    return captured


def test_flags_beat_environment_beats_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("api-port = 1111\nrecv-port = 2222\nserver-name = \"from-toml\"\n")
    loaded = _run_with({"JETSTREAM_API_PORT": "3333", "JETSTREAM_RECV_PORT": "4444",
                        "JETSTREAM_TRIGGER_ON_API": "true"},
                       "--config", str(config), "--api-port", "5555")
    assert loaded["api_port"] == 5555
    assert loaded["recv_port"] == 4444
    assert loaded["server_name"] == "from-toml"
    assert loaded["trigger_on_api"] is True


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("api-port = 1234\n")
    assert _run_with({"JETSTREAM_CONFIG": str(config)})["api_port"] == 1234


def test_the_shipped_example_config_and_its_schedule_load(tmp_path: Path) -> None:
    """systemd/jetstream-server.toml, with its commented bandwidth lines switched on."""
    example = Path(__file__).parent.parent / "systemd" / "jetstream-server.toml"
    text = example.read_text()
    for line in ("outgoing-rate-limit = 300000", "borrow-outgoing-rate = true",
                 "[[bandwidth-schedule]]", 'days = "weekdays"', 'from = "08:00"',
                 'until = "18:00"', "outgoing-rate-limit = 50000"):
        text = text.replace("# " + line, line)
    config = tmp_path / "server.toml"
    config.write_text(text)
    settings = load_settings({}, config)
    assert (settings.outgoing_rate_limit, settings.borrow_outgoing_rate) == (300_000, True)
    (window,) = settings.bandwidth_schedule
    assert window.to_api() == {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00",
                               "until": "18:00", "outgoingRateLimit": 50_000}
