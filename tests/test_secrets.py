"""Secrets by name: environment first, then credential files, never trimmed of spaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd import secrets
from syncd.errors import ConfigError
from syncd.settings import load_settings


@pytest.fixture(autouse=True)
def _no_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(secrets, "CREDENTIALS_FALLBACK", tmp_path / "etc-credentials")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SYNCD_SECRET_EWS_PASSWORD", raising=False)


def test_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ews-password").write_text("fra-fil\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("SYNCD_SECRET_EWS_PASSWORD", "fra-miljø")
    assert secrets.read_secret("ews-password") == "fra-miljø"


def test_credentials_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ews-password").write_text(" mellomrom først og sist \n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert secrets.read_secret("ews-password") == " mellomrom først og sist "


def test_missing_secret_names_places() -> None:
    with pytest.raises(ConfigError) as error:
        secrets.read_secret("ews-password")
    assert "set SYNCD_SECRET_EWS_PASSWORD" in str(error.value)
    assert "LoadCredential=ews-password:PATH" in str(error.value)


def test_bad_name_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid secret name '../passwd'"):
        secrets.read_secret("../passwd")


def test_database_url_from_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "database-url").write_text("postgresql+psycopg://syncd:hemmelig@127.0.0.1/crm\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    assert load_settings().resolved_database_url() == "postgresql+psycopg://syncd:hemmelig@127.0.0.1/crm"
