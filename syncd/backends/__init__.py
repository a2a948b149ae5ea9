"""Mailbox backends, and the factory that opens the right one for an enrolled mailbox."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from syncd.errors import ConfigError

if TYPE_CHECKING:
    from crmstore.models import Mailbox
    from syncd.backends.base import MailboxBackend
    from syncd.settings import Settings

BACKEND_KINDS = ("folder",)


def open_backend(mailbox: Mailbox, settings: Settings) -> MailboxBackend:
    """Build the backend for an enrolled mailbox from its stored config and the settings."""
    if mailbox.backend == "folder":
        from syncd.backends.dropdir import DropDirectoryBackend

        return DropDirectoryBackend(
            Path(mailbox.config["path"]),
            post_action=mailbox.config.get("post_action", "move"),
            batch_size=settings.sync.batch_size,
            max_item_bytes=settings.limits.max_message_bytes,
        )
    raise ConfigError(
        f"mailbox {mailbox.address!r} uses backend {mailbox.backend!r}, which this syncd "
        f"does not support: use one of {', '.join(BACKEND_KINDS)}"
    )
