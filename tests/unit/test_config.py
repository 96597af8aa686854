from __future__ import annotations

from pathlib import Path

import pytest
from sidecar import config
from sidecar.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "sidecar.example.toml"


def test_the_example_file_loads_and_equals_the_defaults() -> None:
    assert config.load(EXAMPLE, {}) == config.from_dict({})


def test_database_url_from_the_environment_wins() -> None:
    settings = config.load(EXAMPLE, {"DATABASE_URL": "postgresql://u@db:5433/x"})
    assert settings.database.url.reveal() == "postgresql://u@db:5433/x"


def test_passwords_never_print() -> None:
    settings = config.from_dict({}, {"DATABASE_URL": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.database.url)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"ledger": {"batch_commands_max": 0}}, "ledger.batch_commands_max"),
        ({"ledger": {"batch_linger_ms": "2"}}, "ledger.batch_linger_ms"),
        ({"capture": {"batch_linger_ms": -1}}, "capture.batch_linger_ms"),
        ({"ledger": {"partitons": 2}}, "ledger.partitons: unknown setting"),
        ({"database": {"schema": "Bad-Name"}}, "database.schema"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        (
            {"database": {"pool_connections_min": 9, "pool_connections_max": 2}},
            "pool_connections_min",
        ),
        ({"log_level": "LOUD"}, "log_level"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_setting_fails_naming_the_key(data: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        config.from_dict(data)


def test_a_linger_of_zero_means_no_waiting() -> None:
    settings = config.from_dict(
        {"ledger": {"batch_linger_ms": 0}, "capture": {"batch_linger_ms": 0}}
    )
    assert settings.ledger.batch_linger_ms == 0.0 and settings.capture.batch_linger_ms == 0.0


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", {})
    broken = tmp_path / "broken.toml"
    broken.write_text("[ledger\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        config.load(broken, {})


def test_a_watch_list_over_twenty_or_more_than_eight_tiers_fails_at_start_up() -> None:
    watched = {f"acc-{i}": f"ACC-{i:04d}" for i in range(21)}
    with pytest.raises(ConfigError, match=r"telemetry\.watch_accounts: at most 20"):
        config.from_dict({"telemetry": {"watch_accounts": watched}})
    tiers = {f"tier-{i}": [f"T{i}-*"] for i in range(9)}
    with pytest.raises(ConfigError, match=r"telemetry\.account_tiers: at most 8"):
        config.from_dict({"telemetry": {"account_tiers": tiers}})
    with pytest.raises(ConfigError, match=r"telemetry\.watch_accounts\.Treasury"):
        config.from_dict({"telemetry": {"watch_accounts": {"Treasury": "ACC-1"}}})
    with pytest.raises(ConfigError, match="watched under two names"):
        config.from_dict({"telemetry": {"watch_accounts": {"a": "ACC-1", "b": "ACC-1"}}})
    ok = config.from_dict(
        {"telemetry": {"watch_accounts": {f"acc-{i}": f"ACC-{i}" for i in range(20)}}}
    )
    assert len(ok.telemetry.watch_accounts) == 20
