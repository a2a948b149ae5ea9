"""The folders a mailbox is scanned in, as stored: sync folders and folders mapped to one record.

A sync folder is found or created by the backend's `ensure_folders`. A
mapped folder is a subfolder of the first sync folder, made by
`syncd mailbox map-folder`, and every mail in it is filed against its record.
The functions add to or query the session they are given and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import crm
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Mailbox, MailboxFolder, utcnow
from crmstore.refs import Ref
from syncd.backends.base import Folder


@dataclass(frozen=True)
class ScannedFolder:
    """A folder that a pass scans, and the record it is mapped to, if any."""

    folder: Folder
    mapped_to: Ref | None = None


def get_mailbox(session: Session, address: str) -> Mailbox:
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address.lower()))
    if mailbox is None:
        raise NotFoundError(f"mailbox {address!r} is not enrolled: see `syncd mailbox list`")
    return mailbox


def sync_folders(session: Session, address: str, kind: str) -> list[Folder]:
    """Return the sync folders that the backend `kind` found on an earlier pass, in the order found."""
    rows = session.scalars(
        select(MailboxFolder)
        .join(Mailbox)
        .where(Mailbox.address == address, MailboxFolder.backend == kind, MailboxFolder.record_kind.is_(None))
        .order_by(MailboxFolder.id)
    )
    return [Folder(row.folder_key, row.name) for row in rows]


def mapped_folders(session: Session, address: str) -> list[MailboxFolder]:
    """Return the mapped folders of a mailbox, of whichever backend found them, oldest first."""
    return list(
        session.scalars(
            select(MailboxFolder)
            .join(Mailbox)
            .where(Mailbox.address == address, MailboxFolder.record_kind.is_not(None))
            .order_by(MailboxFolder.id)
        )
    )


def save_sync_folders(session: Session, address: str, kind: str, folders: list[Folder]) -> None:
    """Store the sync folders a backend found, keeping the cursors of those already stored."""
    mailbox = get_mailbox(session, address)
    known = {row.folder_key: row for row in mailbox.folders}
    for folder in folders:
        row = known.get(folder.key)
        if row is None:
            mailbox.folders.append(MailboxFolder(folder_key=folder.key, name=folder.name, backend=kind))
        else:
            row.name = folder.name


def forget_sync_folders(session: Session, address: str) -> None:
    """Drop the stored sync folders, so the next pass finds them again; mapped folders stay."""
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
    if mailbox is not None:
        mailbox.folders[:] = [row for row in mailbox.folders if row.is_mapped]


def move_mapped_folder(session: Session, row_id: int, found: Folder, kind: str) -> None:
    """Point a mapped folder at the folder found again by name, and start it from scratch."""
    row = session.get(MailboxFolder, row_id)
    if row is None:
        return
    row.folder_key = found.key
    row.name = found.name
    row.backend = kind
    row.sync_state = None
    row.updated_at = utcnow()


def map_folder(session: Session, address: str, kind: str, folder: Folder, ref: Ref) -> bool:
    """Store `folder` as mapped to the record `ref`; return False when it already was.

    A folder of that name that was mapped before under another key (the
    user deleted it and map-folder made it again) is moved to the new key.
    """
    if not ref.is_record:
        raise InvalidInputError(
            f"{str(ref)!r} is not a record: a folder maps to activity:ID, offer:ID or delivery:ID"
        )
    crm.get_record(session, ref)
    mailbox = get_mailbox(session, address)

    row = next((r for r in mailbox.folders if r.folder_key == folder.key), None)
    if row is None:
        row = next((r for r in mailbox.folders if r.is_mapped and r.name.casefold() == folder.name.casefold()), None)
    if row is not None and not row.is_mapped:
        raise InvalidInputError(f"folder {folder.name!r} is a sync folder of {mailbox.address}, so it cannot be mapped")
    if row is not None and (row.record_kind, row.record_id) != (ref.kind, ref.id):
        raise InvalidInputError(
            f"folder {folder.name!r} of {mailbox.address} is mapped to {row.record_kind}:{row.record_id}: "
            f"run `syncd mailbox unmap-folder {mailbox.address} {folder.name!r}` first"
        )
    if row is not None and row.folder_key == folder.key:
        return False

    if row is None:
        row = MailboxFolder(folder_key=folder.key, name=folder.name, backend=kind)
        mailbox.folders.append(row)
    row.folder_key = folder.key
    row.name = folder.name
    row.backend = kind
    row.sync_state = None
    row.record_kind = ref.kind
    row.record_id = ref.id
    return True


def unmap_folder(session: Session, address: str, name: str) -> MailboxFolder:
    """Delete the mapping of the folder `name`; the folder itself stays in the mailbox."""
    mailbox = get_mailbox(session, address)
    row = next((r for r in mailbox.folders if r.is_mapped and r.name.casefold() == name.strip().casefold()), None)
    if row is None:
        raise NotFoundError(
            f"folder {name!r} of {mailbox.address} is not mapped: see `syncd mailbox folders {mailbox.address}`"
        )
    mailbox.folders.remove(row)
    return row


def mapped_ref(row: MailboxFolder) -> Ref | None:
    if row.record_kind is None or row.record_id is None:
        return None
    return Ref(row.record_kind, row.record_id)
