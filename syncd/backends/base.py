"""The contract every mailbox backend implements.

A backend serves one mailbox. The sync loop asks it for its sync folders,
then for batches of new items per folder since a stored cursor, records each
item in its own transaction, stores the batch's cursor only after those
transactions have committed, and finally hands the outcomes back so the
backend can tell the user (a category, a move, a deleted file).

Backends never touch the database. A backend may yield an item again after a
crash or a server-side replay; the processed-item ledger makes that harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from syncd.errors import ConfigError
from syncd.mail import Outcome


@dataclass(frozen=True)
class Folder:
    """A folder that syncd scans.

    `key` identifies the folder within the mailbox and survives restarts (an
    EWS or Graph folder id, or a path for the drop directory). `name` is the
    display name in the mailbox.
    """

    key: str
    name: str


@dataclass(frozen=True)
class FolderReport:
    """One sync folder after `ensure_folders`, and whether this call created it."""

    folder: Folder
    created: bool


@dataclass
class Item:
    """One mail as a backend yields it.

    `raw` contains the RFC 5322 bytes, or the bytes of an Outlook .msg file when
    `format` is "msg". When the backend could not fetch the content, `raw` is
    None and `error` says why; the item is still recorded, as failed. `size`
    is the size in bytes when the backend knows it without reading the
    content, so that an oversize item is rejected before it is read.
    """

    folder: Folder
    item_id: str
    raw: bytes | None
    format: str = "eml"
    error: str | None = None
    size: int | None = None


@dataclass
class Batch:
    """Items that one cursor step covers, and the cursor after them (None: no cursor)."""

    folder: Folder
    items: list[Item]
    state: str | None


@dataclass(frozen=True)
class FeedbackRequest:
    """An outcome to show the user on one item, after its transaction committed."""

    folder_key: str
    item_id: str
    outcome: Outcome


class MailboxBackend(Protocol):
    """One mailbox, seen through EWS, Microsoft Graph or a drop directory."""

    #: The value stored in the mailbox's `backend` column: "folder", "ews" or "graph".
    kind: str

    def ensure_folders(self) -> list[FolderReport]:
        """Find the sync folders, create the missing ones, and return them all."""
        ...

    def ensure_subfolder(self, parent: Folder, name: str) -> FolderReport:
        """Find the folder `name` directly below `parent`, creating it when missing.

        Mapped folders are made this way below a sync folder. The new folder
        is a folder of its own: scanning `parent` does not yield its items.
        """
        ...

    def batches(
        self, folder: Folder, state: str | None, known: Callable[[str], bool] | None = None
    ) -> Iterator[Batch]:
        """Yield the items added to `folder` since `state`, one batch per cursor step.

        `known(item_id)` is true for an item the ledger already holds. A
        backend skips such items where it can tell before fetching their
        content, so that a replayed or resynced folder costs no downloads.
        """
        ...

    def apply_feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackRequest]:
        """Show each outcome in the mailbox and return the requests that were applied.

        A request that could not be applied is left out of the result, and
        a later pass tries it again. Feedback never undoes or repeats the
        filing.
        """
        ...

    def close(self) -> None:
        """Release connections; the backend is not used afterwards."""
        ...


def content_digest(raw: bytes) -> str:
    """Return a short hash of an item's bytes, for item ids that must change with the content."""
    return hashlib.sha256(raw).hexdigest()[:16]


def check_categories(categories: Mapping[str, str]) -> dict[Outcome, str]:
    """Return the Outlook category per outcome; raise ConfigError for an unknown outcome or empty name."""
    checked: dict[Outcome, str] = {}
    for outcome, name in categories.items():
        try:
            key = Outcome(outcome)
        except ValueError:
            valid = ", ".join(o.value for o in Outcome)
            raise ConfigError(f"category outcome {outcome!r} is unknown; use one of {valid}.") from None
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"category name for outcome {key.value!r} is empty; give an Outlook category name.")
        checked[key] = name
    return checked
