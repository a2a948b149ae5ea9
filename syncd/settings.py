"""Configuration: settings.toml, overridden by SYNCD_* environment variables.

The file is found at `--config PATH`, then $SYNCD_CONFIG, then
./settings.toml, then /etc/syncd/settings.toml. A nested setting such as
`sync.interval_seconds` is overridden by SYNCD_SYNC__INTERVAL_SECONDS.
Secrets never live in the file: they come from the environment or from
files that systemd's LoadCredential provides.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from syncd import filemodes
from syncd.errors import ConfigError
from syncd.secrets import find_secret

SEARCH_PATH = (Path("settings.toml"), Path("/etc/syncd/settings.toml"))

#: A password in a database URL: "scheme://user:PASSWORD@host" or "?password=PASSWORD".
_URL_PASSWORDS = (re.compile(r"(//[^/?#@:]*:)[^/?#@]*(@)"), re.compile(r"(?i)([?&]password=)[^&#]*()"))


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
    #: Seconds a node's lease on a mailbox lasts without renewal. A node
    #: renews its leases every third of this; when a node dies, the others
    #: take its mailboxes once its leases run out.
    lease_seconds: int = Field(60, ge=3)


class LimitSettings(BaseModel, extra="forbid"):
    #: A mail larger than this many bytes is kept as failed with reason too_large.
    max_message_bytes: int = Field(50 * 1024 * 1024, gt=0)
    #: Messages nested deeper than this (forwards of forwards) are not parsed
    #: further. A mail that ends unmatched names the limit in its detail.
    max_nesting_depth: int = Field(8, gt=0, le=64)
    #: Characters of one HTML body that are read; the rest is ignored, and a
    #: mail that ends unmatched names the limit in its detail.
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


class TlsSettings(BaseModel, extra="forbid"):
    """Certificate checks on the HTTPS connections to Exchange, Microsoft Graph and Entra ID."""

    #: Whether syncd checks the server certificates. With false, anyone on
    #: the network path can pose as the server and read passwords, tokens and
    #: mail, so syncd logs a warning for every mailbox it opens.
    verify: bool = True
    #: PEM file, or directory prepared with `openssl rehash`, of the CA
    #: certificates to trust in place of the default ones. It takes
    #: precedence over REQUESTS_CA_BUNDLE. Empty means requests' default:
    #: $REQUESTS_CA_BUNDLE when set, else the certifi package's bundle.
    ca_bundle: str = ""

    @field_validator("ca_bundle")
    @classmethod
    def _existing_bundle(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        if info.data.get("verify") is False:
            raise ValueError("a CA bundle is given but tls.verify is false: remove one of the two")
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError("CA bundle not found: give the path of a PEM file of CA certificates")
        return str(path)


class MetricsSettings(BaseModel, extra="forbid"):
    """The Prometheus /metrics endpoint of the daemon; `syncd sync --once` never serves it."""

    #: Whether `syncd run` serves /metrics over HTTP.
    enabled: bool = False
    #: IP address the endpoint listens on. The metrics carry mailbox
    #: addresses, so syncd logs a warning at start when this is not a
    #: loopback address.
    address: str = "127.0.0.1"
    #: TCP port of the endpoint. Prometheus's list of exporter ports gives
    #: 9810 to rtrtr, an RPKI tool that is unlikely to run beside syncd.
    port: int = 9810

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(
                "not an IP address: use 127.0.0.1, or the IP address of the interface to serve the metrics on"
            ) from exc
        return value

    @field_validator("port")
    @classmethod
    def _tcp_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("TCP port out of range: use a free port from 1 to 65535, such as 9810")
        return value


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
    #: Format of the log lines on stderr: "text", or "json" for one JSON
    #: object per line, for journald and log shippers.
    log_format: Literal["text", "json"] = "text"
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
    tls: TlsSettings = Field(default_factory=TlsSettings)
    names: NameSettings = Field(default_factory=NameSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

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

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(
                "not an SQLAlchemy URL: use e.g. postgresql+psycopg://syncd:PASSWORD@dbhost/crm"
            ) from exc
        return value

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
        """Return database_url, else the secret "database-url", else the SQLite file in data_dir.

        The secret lets a PostgreSQL password reach syncd through systemd's
        LoadCredential= instead of the settings file.
        """
        if self.database_url:
            return self.database_url
        from_secret = find_secret("database-url")
        if from_secret:
            return from_secret.strip()
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

    filemodes.warn_about_readable_files(path, password_in_file=_password_in_file(path, settings))
    return settings


def _password_in_file(path: Path | None, settings: Settings) -> bool:
    """Return whether the settings file itself holds a database password."""
    if path is None or not settings.database_url or os.environ.get("SYNCD_DATABASE_URL"):
        return False
    return make_url(settings.database_url).password is not None


def _describe(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    dotted = ".".join(str(part) for part in error["loc"])
    variable = "SYNCD_" + "__".join(str(part) for part in error["loc"]).upper()
    # The environment wins over the file, so a bad value there is the one read.
    if variable in os.environ:
        where = f" from the environment variable {variable}"
    else:
        where = f" in {str(path)!r}" if path else ""
    value = error.get("input")
    if dotted == "database_url" and isinstance(value, str):
        # The URL did not parse, so SQLAlchemy cannot mask it.
        for pattern in _URL_PASSWORDS:
            value = pattern.sub(r"\1***\2", value)
    return (
        f"invalid setting {dotted} = {value!r}{where}: {error['msg']} "
        f"(correct it in the settings file or with {variable})"
    )
