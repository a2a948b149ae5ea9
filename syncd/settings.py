"""Configuration: settings.toml, overridden by SYNCD_* environment variables.

The file is found at `--config PATH`, then $SYNCD_CONFIG, then
./settings.toml, then /etc/syncd/settings.toml. A nested setting such as
`sync.interval_seconds` is overridden by SYNCD_SYNC__INTERVAL_SECONDS.
Secrets never live in the file: they come from the environment or from
files that systemd's LoadCredential provides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from syncd.errors import ConfigError

SEARCH_PATH = (Path("settings.toml"), Path("/etc/syncd/settings.toml"))


class SyncSettings(BaseModel, extra="forbid"):
    #: Seconds between two passes over one mailbox.
    interval_seconds: int = Field(120, gt=0)
    #: Up to this many seconds are added at random to each interval, so that
    #: mailboxes do not all hit the server at the same moment.
    jitter_seconds: int = Field(20, ge=0)
    #: Items fetched and recorded per batch; the cursor advances once per batch.
    batch_size: int = Field(50, gt=0, le=500)
    #: Tries of one backend call that fails with throttling or a time-out.
    max_attempts: int = Field(5, gt=0)
    #: Upper bound in seconds on one wait between two tries.
    max_backoff_seconds: float = Field(300.0, gt=0)
    #: Seconds between two looks of the daemon at the enrolled mailboxes,
    #: so that enrolments, removals and disabled mailboxes take effect
    #: without a restart.
    enrolment_check_seconds: int = Field(30, gt=0)


class LimitSettings(BaseModel, extra="forbid"):
    #: A mail larger than this many bytes is kept as failed with reason too_large.
    max_message_bytes: int = Field(50 * 1024 * 1024, gt=0)
    #: Messages nested deeper than this (forwards of forwards) are not parsed further.
    max_nesting_depth: int = Field(8, gt=0, le=64)
    #: Characters of one HTML body that are read; the rest is ignored.
    max_html_chars: int = Field(5_000_000, gt=0)


class EwsSettings(BaseModel, extra="forbid"):
    #: Seconds one EWS request may take before it counts as timed out.
    timeout_seconds: float = Field(120.0, gt=0)
    #: Concurrent EWS requests per service account, shared by every mailbox
    #: that account reaches. Exchange throttles per account, so keep it small.
    max_connections_per_account: int = Field(4, gt=0, le=64)


class GraphSettings(BaseModel, extra="forbid"):
    #: Base URL of Microsoft Graph; other clouds (national clouds) have their own.
    base_url: str = "https://graph.microsoft.com/v1.0"
    #: Seconds one Graph request may take before it counts as timed out.
    timeout_seconds: float = Field(60.0, gt=0)
    #: Requests in flight per mailbox; Exchange Online allows at most 4 per app and mailbox.
    max_concurrency: int = Field(4, ge=1, le=4)


class EntraSettings(BaseModel, extra="forbid"):
    #: Microsoft Entra ID sign-in host that issues app tokens (OAuth 2.0 client credentials).
    authority_host: str = "https://login.microsoftonline.com"


class NameSettings(BaseModel, extra="forbid"):
    """Folder and category names users see in Outlook; empty means the preset's name."""

    sync_folder: str = ""
    processed_folder: str = ""
    category_filed: str = ""
    category_not_filed: str = ""


#: Names per language preset. Norwegian (bokmål) is the default because the
#: first users are Norwegian.
NAME_PRESETS: dict[str, dict[str, str]] = {
    "nb": {
        "sync_folder": "CRM-arkiv",
        "processed_folder": "Arkivert",
        "category_filed": "Arkivert i CRM",
        "category_not_filed": "Ikke arkivert i CRM",
    },
    "en": {
        "sync_folder": "CRM archive",
        "processed_folder": "Filed",
        "category_filed": "Filed in CRM",
        "category_not_filed": "Not filed in CRM",
    },
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SYNCD_", env_nested_delimiter="__", extra="forbid"
    )

    #: SQLAlchemy URL of the CRM store. Empty means an SQLite file in data_dir.
    database_url: str = ""
    #: Directory for the SQLite database and other state. Empty means
    #: $STATE_DIRECTORY (set by systemd), else ~/.local/share/syncd.
    data_dir: str = ""
    #: Level of syncd's own log lines: DEBUG, INFO, WARNING or ERROR.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Language preset for folder and category names: "nb" or "en".
    language: Literal["nb", "en"] = "nb"
    #: IANA time zone of the users. Outlook and Gmail print a forwarded
    #: mail's date in the forwarder's local time without a zone, so the
    #: date of an inline-forwarded original is read in this zone.
    local_timezone: str = "Europe/Oslo"
    sync: SyncSettings = Field(default_factory=SyncSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    ews: EwsSettings = Field(default_factory=EwsSettings)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    entra: EntraSettings = Field(default_factory=EntraSettings)
    names: NameSettings = Field(default_factory=NameSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("local_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown time zone: use an IANA name such as Europe/Oslo") from exc
        return value

    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        return Path.home() / ".local" / "share" / "syncd"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'syncd.db'}"

    def name(self, key: str) -> str:
        """Return the folder or category name `key`, from settings or the language preset."""
        configured: str = getattr(self.names, key)
        return configured or NAME_PRESETS[self.language][key]


def find_config(explicit: str | None) -> Path | None:
    """Return the settings file to read, or None when there is none."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"settings file {explicit!r} not found: check --config")
        return path
    from_env = os.environ.get("SYNCD_CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"settings file {from_env!r} not found: check SYNCD_CONFIG")
        return path
    return next((path for path in SEARCH_PATH if path.is_file()), None)


def load_settings(explicit: str | None = None) -> Settings:
    """Read and validate the settings; raise ConfigError naming the bad setting."""
    path = find_config(explicit)

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        settings: Settings = FileSettings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    except ValueError as exc:
        # tomllib reports syntax errors as ValueError subclasses.
        raise ConfigError(f"settings file {str(path)!r} is not valid TOML: {exc}") from exc
    return settings


def _describe(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    dotted = ".".join(str(part) for part in error["loc"])
    variable = "SYNCD_" + "__".join(str(part) for part in error["loc"]).upper()
    where = f" in {str(path)!r}" if path else ""
    value = error.get("input")
    return (
        f"invalid setting {dotted} = {value!r}{where}: {error['msg']} "
        f"(set it in the settings file or with {variable})"
    )
