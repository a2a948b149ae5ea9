"""Secrets by name: passwords and client secrets that never live in settings or the database.

A mailbox's enrolment stores only the name of its secret, e.g. "ews-password".
The value comes from the environment variable SYNCD_SECRET_EWS_PASSWORD, or
from the file of that name in $CREDENTIALS_DIRECTORY, where systemd's
LoadCredential= puts it, or from /etc/syncd/credentials/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from syncd.errors import ConfigError

CREDENTIALS_FALLBACK = Path("/etc/syncd/credentials")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def variable_for(name: str) -> str:
    """Return the environment variable that may hold the secret `name`."""
    return "SYNCD_SECRET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid secret name {name!r}: use lower-case letters, digits, '.', '_' and '-'"
        )
    return name


def find_secret(name: str) -> str | None:
    """Return the secret `name`, or None when it is set nowhere."""
    validate_name(name)
    variable = variable_for(name)
    if os.environ.get(variable):
        return os.environ[variable]

    directories = [Path(d) for d in os.environ.get("CREDENTIALS_DIRECTORY", "").split(":") if d]
    for directory in [*directories, CREDENTIALS_FALLBACK]:
        path = directory / name
        if path.is_file():
            # Only the line end that editors and `echo` add is dropped: a
            # password may begin or end with a space.
            return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    return None


def read_secret(name: str) -> str:
    """Return the secret `name`; raise ConfigError saying where it was looked for."""
    value = find_secret(name)
    if value is not None:
        return value
    variable = variable_for(name)
    raise ConfigError(
        f"secret {name!r} not found: set {variable}, or pass it with "
        f"LoadCredential={name}:PATH in the service unit, or put it in {CREDENTIALS_FALLBACK / name}"
    )
