"""Start-up warnings about settings and credential files that other local users can read."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd import filemodes, secrets
from syncd.cli.main import cli
from syncd.settings import load_settings


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(filemodes, "_warned", set())
    monkeypatch.setattr(secrets, "CREDENTIALS_FALLBACK", tmp_path / "no-fallback")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A directory that every local user may enter, as /etc is."""
    path = tmp_path / "etc"
    path.mkdir()
    path.chmod(0o755)
    return path


def _settings_file(directory: Path, mode: int, text: str = 'language = "nb"\n') -> Path:
    path = directory / "settings.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "syncd.settings" and r.levelno == logging.WARNING]


def test_world_readable_settings_warned(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _settings_file(etc, 0o644)

    load_settings(str(path))

    assert _warnings(caplog) == [
        f"settings file {str(path)!r} can be read by every local user (mode 0644): run chmod 640 {path}"
    ]


def test_group_readable_settings_accepted(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_settings(str(_settings_file(etc, 0o640)))

    assert _warnings(caplog) == []


def test_settings_with_database_password_must_be_private(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _settings_file(etc, 0o640, 'database_url = "postgresql+psycopg://syncd:hemmelig@db.example/crm"\n')

    load_settings(str(path))

    assert _warnings(caplog) == [
        f"settings file {str(path)!r} can be read by the members of its group (mode 0640): run chmod 600 {path} "
        "and move the database password to SYNCD_DATABASE_URL"
    ]


def test_group_readable_credential_warned(
    etc: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = etc / "ews-password"
    secret.write_text("Sv4rt-hemmelig-æøå\n")
    secret.chmod(0o640)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(etc))

    load_settings(str(_settings_file(etc, 0o600)))

    assert _warnings(caplog) == [
        f"credential file {str(secret)!r} can be read by the members of its group (mode 0640): run chmod 600 {secret}"
    ]


def test_private_credential_accepted(
    etc: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = etc / "ews-password"
    secret.write_text("Sv4rt-hemmelig-æøå\n")
    secret.chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(etc))

    load_settings(None)

    assert _warnings(caplog) == []


def test_credential_in_closed_directory_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # /etc/syncd/credentials is root's alone (0700), so no other user can open its files.
    closed = tmp_path / "credentials"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    secret = closed / "entra-client-secret"
    secret.write_text("klient-hemmelighet\n")
    secret.chmod(0o644)
    monkeypatch.setattr(secrets, "CREDENTIALS_FALLBACK", closed)

    load_settings(None)

    assert _warnings(caplog) == []


def test_warning_once_per_process(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _settings_file(etc, 0o644)

    load_settings(str(path))
    load_settings(str(path))

    assert len(_warnings(caplog)) == 1


def test_cli_start_warns(etc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _settings_file(etc, 0o666)
    env = {"SYNCD_CONFIG": str(path), "SYNCD_DATABASE_URL": f"sqlite:///{tmp_path / 'syncd.db'}"}

    CliRunner().invoke(cli, ["db", "upgrade"], env=env, catch_exceptions=False)

    assert _warnings(caplog) == [
        f"settings file {str(path)!r} can be read by every local user (mode 0666): run chmod 640 {path}"
    ]
