"""Settings: file discovery, environment overrides, validation messages, name presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.errors import ConfigError
from syncd.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SYNCD_CONFIG", "SYNCD_DATABASE_URL", "SYNCD_DATA_DIR", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings()
    assert settings.sync.interval_seconds == 120
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path}/.local/share/syncd/syncd.db"


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "custom.toml"
    config.write_text('log_level = "DEBUG"\n[sync]\ninterval_seconds = 60\nbatch_size = 10\n')
    monkeypatch.setenv("SYNCD_SYNC__BATCH_SIZE", "25")
    settings = load_settings(str(config))
    assert settings.log_level == "DEBUG"
    assert settings.sync.interval_seconds == 60
    assert settings.sync.batch_size == 25


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "env.toml"
    config.write_text('language = "en"\n')
    monkeypatch.setenv("SYNCD_CONFIG", str(config))
    assert load_settings().name("sync_folder") == "CRM archive"


def test_settings_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('data_dir = "/srv/syncd"\n')
    assert load_settings().resolved_database_url() == "sqlite:////srv/syncd/syncd.db"


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCD_DATABASE_URL", "postgresql+psycopg://syncd@db.example/crm")
    assert load_settings().resolved_database_url() == "postgresql+psycopg://syncd@db.example/crm"


def test_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/syncd")
    assert load_settings().resolved_database_url() == "sqlite:////var/lib/syncd/syncd.db"


def test_norwegian_names_by_default() -> None:
    settings = load_settings()
    assert settings.name("sync_folder") == "CRM-arkiv"
    assert settings.name("category_filed") == "Arkivert i CRM"


def test_invalid_value_names_setting_and_variable(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[sync]\ninterval_seconds = -5\n")
    with pytest.raises(ConfigError) as error:
        load_settings(str(config))
    message = str(error.value)
    assert "invalid setting sync.interval_seconds = -5" in message
    assert "SYNCD_SYNC__INTERVAL_SECONDS" in message


def test_unknown_key_rejected(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[sync]\ninterval = 5\n")
    with pytest.raises(ConfigError, match="sync.interval"):
        load_settings(str(config))


def test_missing_file_named() -> None:
    with pytest.raises(ConfigError, match="settings file 'nowhere.toml' not found"):
        load_settings("nowhere.toml")


def test_broken_toml_named(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[sync\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(config))


def test_shipped_settings_file_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[1] / "settings.toml"
    assert load_settings(str(shipped)).language == "nb"


def test_unknown_time_zone_rejected(tmp_path: Path) -> None:
    config = tmp_path / "zone.toml"
    config.write_text('local_timezone = "Europe/Bergen"\n')
    with pytest.raises(ConfigError, match="invalid setting local_timezone = 'Europe/Bergen'"):
        load_settings(str(config))


def test_invalid_value_from_environment_blames_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[sync]\nlease_seconds = 60\n")
    monkeypatch.setenv("SYNCD_SYNC__LEASE_SECONDS", "abc")

    with pytest.raises(ConfigError) as error:
        load_settings(str(config))

    message = str(error.value)
    assert message.startswith("invalid setting sync.lease_seconds = 'abc' from the environment variable ")
    assert "SYNCD_SYNC__LEASE_SECONDS" in message
    assert str(config) not in message
