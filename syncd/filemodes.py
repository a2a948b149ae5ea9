"""Start-up warnings about a settings file or credential files that other local users can read.

The settings file contains no secret unless a database URL with a password
was put in it, so it may be readable by syncd's group (mode 0640,
root:syncd) but not by everyone. A credential file contains a password or a
client secret and should be readable by its owner only (mode 0600). A group or world read bit
counts only when the file's directory lets the same users reach it.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from syncd import secrets

log = logging.getLogger("syncd.settings")

# The CLI and the daemon both read the settings at start, so each file and
# mode is warned about once per process.
_warned: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class Exposure:
    """A file that users other than its owner can read, and the mode that fixes it."""

    path: Path
    mode: int
    readers: str
    fix_mode: str


def warn_about_readable_files(settings_path: Path | None, *, password_in_file: bool = False) -> list[Exposure]:
    """Log a warning for the settings file and each credential file that other users can read.

    `password_in_file` makes the settings file count as a credential file,
    because its database URL contains a password. Returns what was found,
    including files warned about before in this process.
    """
    found: list[Exposure] = []
    if settings_path is not None:
        exposure = _exposure(settings_path, group_may_read=not password_in_file)
        if exposure is not None:
            found.append(exposure)
            hint = " and move the database password to SYNCD_DATABASE_URL" if password_in_file else ""
            _warn(exposure, f"settings file {str(settings_path)!r}", hint)

    for path in credential_files():
        exposure = _exposure(path, group_may_read=False)
        if exposure is not None:
            found.append(exposure)
            _warn(exposure, f"credential file {str(path)!r}", "")
    return found


def credential_files() -> list[Path]:
    """Return the files in the directories where `syncd.secrets` looks for secrets."""
    directories = [Path(d) for d in os.environ.get("CREDENTIALS_DIRECTORY", "").split(":") if d]
    files: list[Path] = []
    for directory in [*directories, secrets.CREDENTIALS_FALLBACK]:
        try:
            files.extend(sorted(path for path in directory.iterdir() if path.is_file()))
        except OSError:
            # A directory that syncd cannot list is skipped, because its file names are unknown.
            continue
    return files


def _exposure(path: Path, *, group_may_read: bool) -> Exposure | None:
    try:
        mode = path.stat().st_mode
        directory_mode = path.parent.stat().st_mode
    except OSError:
        return None

    world = bool(mode & stat.S_IROTH) and bool(directory_mode & stat.S_IXOTH)
    group = bool(mode & stat.S_IRGRP) and bool(directory_mode & (stat.S_IXGRP | stat.S_IXOTH))
    if world:
        return Exposure(path, stat.S_IMODE(mode), "every local user", "640" if group_may_read else "600")
    if group and not group_may_read:
        return Exposure(path, stat.S_IMODE(mode), "the members of its group", "600")
    return None


def _warn(exposure: Exposure, description: str, hint: str) -> None:
    key = (str(exposure.path.resolve()), exposure.mode)
    if key in _warned:
        return
    _warned.add(key)
    log.warning(
        "%s can be read by %s (mode %04o): run chmod %s %s%s",
        description, exposure.readers, exposure.mode, exposure.fix_mode, shlex.quote(str(exposure.path)), hint,
    )
