"""Retention and erasure: purging old correspondence, and forgetting one person's address.

The functions change the session they are given and never commit, so the
caller runs each in one transaction, and a dry run rolls it back.

The processed-item ledger keeps its rows when the mail they brought in is
deleted. Only the row's pointer to the mail is cleared, so the item is still
recorded and is never filed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, Text, cast, delete, func, or_, select, update
from sqlalchemy.orm import Session

from crmstore.crm import normalise_email
from crmstore.errors import InvalidInputError, NotFoundError, StoreError
from crmstore.models import (
    Base,
    Correspondence,
    CorrespondenceLink,
    CrmUser,
    PersonAddress,
    ProcessedItem,
    UnmatchedMail,
)
from syncd.parse import parse_item
from syncd.scrub import RawOutcome, mentions_in_raw, scrub_raw, scrub_text

#: Rows changed per statement or loaded at a time, which keeps the bound
#: parameters of one IN list well below SQLite's and PostgreSQL's limits.
CHUNK_SIZE = 200


@dataclass
class PurgeCounts:
    """Counts of the rows a purge deleted, or would delete in a dry run."""

    correspondence: int = 0
    links: int = 0
    #: Ledger rows that lost their pointer to a deleted correspondence or unmatched entry.
    sources_cleared: int = 0
    unmatched: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ForgetReport:
    """Counts of the changes that forgetting an address made, or would make in a dry run."""

    address: str
    #: "person:ID" of the person the address belonged to, or None.
    person: str | None = None
    address_removed: bool = False
    #: The person's addresses that stay; each needs its own forget.
    other_addresses: list[str] = field(default_factory=list)
    correspondence_deleted: int = 0
    correspondence_scrubbed: int = 0
    #: Links to the person removed from the correspondence that stays.
    links_removed: int = 0
    raw_rewritten: int = 0
    raw_dropped: int = 0
    unmatched_deleted: int = 0
    unmatched_scrubbed: int = 0
    sources_cleared: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- purge ----------------------------------------------------------------------------


def purge_before(session: Session, cutoff: datetime, *, include_unmatched: bool = False) -> PurgeCounts:
    """Delete the correspondence sent or filed before `cutoff`, with its links.

    With `include_unmatched`, the unmatched-queue entries created before
    `cutoff` go too, whatever their state.
    """
    counts = PurgeCounts()
    old = select(Correspondence.id).where(
        or_(Correspondence.sent_at < cutoff, Correspondence.filed_at < cutoff)
    )
    for chunk in _chunks(list(session.scalars(old))):
        _add_deleted(counts, delete_correspondence(session, chunk))

    if include_unmatched:
        old_unmatched = select(UnmatchedMail.id).where(UnmatchedMail.created_at < cutoff)
        for chunk in _chunks(list(session.scalars(old_unmatched))):
            deleted = delete_rows(session, _table(UnmatchedMail), chunk)
            counts.unmatched += deleted["deleted"]
            counts.sources_cleared += deleted.get(ProcessedItem.__tablename__, 0)
    return counts


def delete_correspondence(session: Session, ids: Sequence[int]) -> dict[str, int]:
    """Delete the correspondence rows `ids` and what depends on them; return counts per table."""
    return delete_rows(session, _table(Correspondence), ids)


def delete_rows(session: Session, table: Table, ids: Sequence[int]) -> dict[str, int]:
    """Delete rows of `table` by id, after the rows that point at them.

    A pointing row whose foreign key cascades on delete is deleted too. A
    pointing row whose foreign key may be NULL stays, without the pointer.
    Returns the rows touched per table name, and the rows of `table` under
    "deleted". Reading the foreign keys from the schema keeps a table added
    later from blocking the delete.
    """
    counts: dict[str, int] = {}
    if not ids:
        return {"deleted": 0}
    for dependent in Base.metadata.sorted_tables:
        for foreign_key in dependent.foreign_keys:
            if foreign_key.column is not table.c.id:
                continue
            column = foreign_key.parent
            if (foreign_key.ondelete or "").upper() == "CASCADE":
                result = session.execute(delete(dependent).where(column.in_(ids)))
            elif column.nullable:
                result = session.execute(update(dependent).where(column.in_(ids)).values({column.name: None}))
            else:
                raise StoreError(
                    f"{dependent.name}.{column.name} points at {table.name} without ON DELETE CASCADE "
                    "and cannot be NULL, so those rows cannot be deleted; the schema needs a migration"
                )
            counts[dependent.name] = counts.get(dependent.name, 0) + _rowcount(result)
    counts["deleted"] = _rowcount(session.execute(delete(table).where(table.c.id.in_(ids))))
    session.expire_all()
    return counts


def _add_deleted(counts: PurgeCounts, deleted: dict[str, int]) -> None:
    counts.correspondence += deleted["deleted"]
    counts.links += deleted.get(CorrespondenceLink.__tablename__, 0)
    counts.sources_cleared += deleted.get(ProcessedItem.__tablename__, 0)


# -- forget ---------------------------------------------------------------------------


def forget_address(session: Session, address: str) -> ForgetReport:
    """Remove `address` from stored mail and from its person; delete the mail that was only theirs.

    A correspondence is deleted when the address is its sender or a
    recipient and every other party is a CRM user. Every other
    correspondence or unmatched entry that mentions the address keeps its
    row: the address leaves the sender, To and Cc, the subject, the body
    text and the raw copy, and the links to the person go unless the
    person's other addresses are parties too.
    """
    email = normalise_email(address)
    user = session.scalar(select(CrmUser).where(CrmUser.email == email))
    if user is not None:
        raise InvalidInputError(
            f"address {email!r} belongs to CRM user {user.name!r}: "
            "`syncd person forget` removes the addresses of contact persons"
        )

    report = ForgetReport(address=email)
    owner = session.scalar(select(PersonAddress).where(PersonAddress.email == email))
    person_id = owner.person_id if owner is not None else None
    if owner is not None:
        report.person = f"person:{person_id}"
        report.other_addresses = sorted(
            session.scalars(
                select(PersonAddress.email).where(
                    PersonAddress.person_id == person_id, PersonAddress.email != email
                )
            )
        )

    correspondence_ids = _correspondence_mentioning(session, email)
    unmatched_ids = _unmatched_mentioning(session, email)
    if owner is None and not correspondence_ids and not unmatched_ids:
        raise NotFoundError(f"address {email!r} not found: no person has it and no stored mail mentions it")

    users = set(session.scalars(select(CrmUser.email)))
    _forget_in_correspondence(session, correspondence_ids, email, person_id, users, report)
    _forget_in_unmatched(session, unmatched_ids, email, users, report)

    if owner is not None:
        session.delete(owner)
        report.address_removed = True
    session.flush()
    return report


def _forget_in_correspondence(
    session: Session, ids: list[int], email: str, person_id: int | None, users: set[str], report: ForgetReport
) -> None:
    keep_links_for = set(report.other_addresses)
    for chunk in _chunks(ids):
        doomed: list[int] = []
        unlink: list[int] = []
        for correspondence in _load(session, Correspondence, chunk):
            parties = _parties(correspondence)
            if email in parties and parties - {email} <= users:
                doomed.append(correspondence.id)
                continue
            _scrub_correspondence(correspondence, email, report)
            if not parties & keep_links_for:
                unlink.append(correspondence.id)
        _flush_and_release(session)

        if person_id is not None and unlink:
            report.links_removed += _rowcount(
                session.execute(
                    delete(CorrespondenceLink).where(
                        CorrespondenceLink.correspondence_id.in_(unlink),
                        CorrespondenceLink.target_kind == "person",
                        CorrespondenceLink.target_id == person_id,
                    )
                )
            )
        deleted = delete_correspondence(session, doomed)
        report.correspondence_deleted += deleted["deleted"]
        report.sources_cleared += deleted.get(ProcessedItem.__tablename__, 0)


def _forget_in_unmatched(
    session: Session, ids: list[int], email: str, users: set[str], report: ForgetReport
) -> None:
    for chunk in _chunks(ids):
        doomed: list[int] = []
        for entry in _load(session, UnmatchedMail, chunk):
            parties = _unmatched_parties(entry)
            if email in parties and parties - {email} <= users:
                doomed.append(entry.id)
                continue
            if entry.sender == email:
                entry.sender = None
            entry.subject = scrub_text(entry.subject, email)
            entry.detail = scrub_text(entry.detail, email)
            entry.raw_mime = _scrubbed_raw(entry.raw_mime, entry.raw_format, email, report)
            report.unmatched_scrubbed += 1
        _flush_and_release(session)
        deleted = delete_rows(session, _table(UnmatchedMail), doomed)
        report.unmatched_deleted += deleted["deleted"]
        report.sources_cleared += deleted.get(ProcessedItem.__tablename__, 0)


def _scrub_correspondence(correspondence: Correspondence, email: str, report: ForgetReport) -> None:
    if correspondence.sender == email:
        correspondence.sender = None
        correspondence.sender_name = ""
    # New lists, because the JSON columns do not see changes made in place.
    correspondence.to_addresses = [a for a in correspondence.to_addresses if _email_of(a) != email]
    correspondence.cc_addresses = [a for a in correspondence.cc_addresses if _email_of(a) != email]
    correspondence.subject = scrub_text(correspondence.subject, email)
    correspondence.body_text = scrub_text(correspondence.body_text, email)
    correspondence.raw_mime = _scrubbed_raw(correspondence.raw_mime, correspondence.raw_format, email, report)
    report.correspondence_scrubbed += 1


def _scrubbed_raw(raw: bytes | None, raw_format: str, email: str, report: ForgetReport) -> bytes | None:
    if raw is None:
        return None
    cleaned, outcome = scrub_raw(raw, raw_format, email)
    if outcome is RawOutcome.REWRITTEN:
        report.raw_rewritten += 1
    elif outcome is RawOutcome.DROPPED:
        report.raw_dropped += 1
    return cleaned


def _correspondence_mentioning(session: Session, email: str) -> list[int]:
    """Return the ids of the correspondence whose fields or raw copy mention `email`."""
    found = set(
        session.scalars(
            select(Correspondence.id).where(
                or_(
                    Correspondence.sender == email,
                    _lower_contains(cast(Correspondence.to_addresses, Text), email),
                    _lower_contains(cast(Correspondence.cc_addresses, Text), email),
                    _lower_contains(Correspondence.subject, email),
                    _lower_contains(Correspondence.body_text, email),
                )
            )
        )
    )
    found.update(_raw_mentioning(session, select(Correspondence.id, Correspondence.raw_mime), found, email))
    return sorted(found)


def _unmatched_mentioning(session: Session, email: str) -> list[int]:
    found = set(
        session.scalars(
            select(UnmatchedMail.id).where(
                or_(
                    UnmatchedMail.sender == email,
                    _lower_contains(UnmatchedMail.subject, email),
                    _lower_contains(UnmatchedMail.detail, email),
                )
            )
        )
    )
    found.update(_raw_mentioning(session, select(UnmatchedMail.id, UnmatchedMail.raw_mime), found, email))
    return sorted(found)


def _raw_mentioning(session: Session, query: Select[int, bytes | None], skip: set[int], email: str) -> Iterator[int]:
    # NOTE: this reads the stored bytes without decoding them, so a mail that
    # names the address only inside a base64 part, and nowhere in its
    # headers, subject or body text, is not found.
    rows = session.execute(query.execution_options(yield_per=CHUNK_SIZE))
    for row_id, raw in rows:
        if row_id not in skip and raw is not None and mentions_in_raw(raw, email):
            yield row_id


def _lower_contains(column: Any, email: str) -> Any:
    return func.lower(column).contains(email, autoescape=True)


def _parties(correspondence: Correspondence) -> set[str]:
    addresses = [correspondence.sender or "", *map(_email_of, correspondence.to_addresses),
                 *map(_email_of, correspondence.cc_addresses)]
    return {address for address in addresses if address}


def _unmatched_parties(entry: UnmatchedMail) -> set[str]:
    # The queue stores only the sender, so the recipients come from the raw copy.
    parties = {entry.sender} if entry.sender else set()
    if entry.raw_mime is not None:
        parties.update(address.email for address in parse_item(entry.raw_mime, entry.raw_format).addresses())
    return parties


def _email_of(address: dict[str, str]) -> str:
    return str(address.get("email", "")).lower()


def _flush_and_release(session: Session) -> None:
    # Raw copies can be megabytes each; once written, the rows need not stay in memory.
    session.flush()
    for instance in list(session.identity_map.values()):
        if isinstance(instance, (Correspondence, UnmatchedMail)):
            session.expunge(instance)


def _load(session: Session, model: type[Any], ids: Sequence[int]) -> list[Any]:
    return list(session.scalars(select(model).where(model.id.in_(ids)).order_by(model.id)))


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK_SIZE):
        yield list(ids[start:start + CHUNK_SIZE])
