"""Record stage: write a resolved mail, its links and its ledger entry.

The functions add to the session they are given and never commit: the
pipeline commits the correspondence or unmatched row together with the
processed-item ledger entry, so an item is recorded exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore.models import (
    Correspondence,
    CorrespondenceCandidate,
    CorrespondenceLink,
    ProcessedItem,
    UnmatchedMail,
)
from syncd import thread
from syncd.correlate import CandidateRecord, Link
from syncd.mail import Address, Direction, Outcome, ParsedMail
from syncd.resolve import Resolution


@dataclass(frozen=True)
class Source:
    """The origin of an item: mailbox (or "import"), folder and item id."""

    mailbox: str
    folder_key: str
    folder_name: str
    item_id: str


def message_key(mail: ParsedMail) -> str:
    """Return the deduplication key of a mail: its Message-ID, else a content hash."""
    if mail.message_id:
        return thread.message_id_key(mail.message_id)

    digest = hashlib.sha256()
    for part in (
        mail.sender.email if mail.sender else "",
        mail.date.isoformat() if mail.date else "",
        mail.subject,
        " ".join(mail.text.split()),
        " ".join(mail.html_text.split()),
    ):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return "sha256:" + digest.hexdigest()


def feedback_outcome(outcome: Outcome, unmatched_id: int | None) -> Outcome:
    """Return the outcome to show on an item: a duplicate of a queued mail is not filed either."""
    if outcome is Outcome.DUPLICATE and unmatched_id is not None:
        return Outcome.UNMATCHED
    return outcome


def find_ledger_entry(session: Session, source: Source) -> ProcessedItem | None:
    return session.scalar(
        select(ProcessedItem).where(
            ProcessedItem.mailbox == source.mailbox,
            ProcessedItem.folder_key == source.folder_key,
            ProcessedItem.item_id == source.item_id,
        )
    )


def record_filed(
    session: Session, resolution: Resolution, raw: bytes, raw_format: str, source: Source
) -> tuple[Outcome, Correspondence]:
    """Write the correspondence (or find the one already filed) with its links and source.

    Returns DUPLICATE when the same mail was already filed from another item,
    for example when two users dropped it. The new item then becomes a
    second source, and links the earlier filing lacked are added.
    """
    correspondence = find_correspondence(session, resolution.mail)
    outcome = Outcome.DUPLICATE
    if correspondence is None:
        outcome = Outcome.FILED
        correspondence = new_correspondence(
            session, resolution.mail, resolution.direction, raw, raw_format
        )
    attach_links(correspondence, resolution.links)
    attach_candidates(correspondence, resolution.candidate_records)
    remember_thread(session, correspondence, resolution)

    add_ledger_entry(session, source, outcome, correspondence_id=correspondence.id)
    return outcome, correspondence


def remember_thread(session: Session, correspondence: Correspondence, resolution: Resolution) -> None:
    """Store the Message-IDs and conversation keys that let replies to this mail find it."""
    thread.remember(session, correspondence.id, resolution.mail, "message")
    if resolution.forward is not None:
        thread.remember(session, correspondence.id, resolution.forward, "forward")


def find_correspondence(session: Session, mail: ParsedMail) -> Correspondence | None:
    key = message_key(mail)
    return session.scalar(select(Correspondence).where(Correspondence.message_key == key))


def new_correspondence(
    session: Session, mail: ParsedMail, direction: Direction, raw: bytes | None, raw_format: str
) -> Correspondence:
    correspondence = Correspondence(
        message_key=message_key(mail),
        message_id=mail.message_id,
        subject=mail.subject,
        sender=mail.sender.email if mail.sender else None,
        sender_name=mail.sender.name if mail.sender else "",
        to_addresses=[_address_json(address) for address in mail.to],
        cc_addresses=[_address_json(address) for address in mail.cc],
        sent_at=mail.date,
        direction=direction.value,
        body_text=mail.text or mail.html_text,
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        raw_format=raw_format,
        raw_mime=raw,
    )
    session.add(correspondence)
    session.flush()
    return correspondence


def attach_links(correspondence: Correspondence, links: list[Link]) -> None:
    """Add the links the correspondence does not have yet."""
    existing = {(link.target_kind, link.target_id, link.matched_by) for link in correspondence.links}
    for link in links:
        if (link.kind, link.target_id, link.matched_by.value) not in existing:
            existing.add((link.kind, link.target_id, link.matched_by.value))
            correspondence.links.append(
                CorrespondenceLink(
                    target_kind=link.kind, target_id=link.target_id, matched_by=link.matched_by.value
                )
            )


def attach_candidates(correspondence: Correspondence, candidates: list[CandidateRecord]) -> None:
    """Add the candidate records the correspondence has neither as candidate nor as link.

    A candidate whose record a later filing of the same mail linked is removed.
    """
    linked = {(link.target_kind, link.target_id) for link in correspondence.links}
    correspondence.candidates[:] = [
        c for c in correspondence.candidates if (c.target_kind, c.target_id) not in linked
    ]
    existing = {(c.target_kind, c.target_id, c.reason) for c in correspondence.candidates}
    for candidate in candidates:
        key = (candidate.kind, candidate.record_id, candidate.reason.value)
        if (candidate.kind, candidate.record_id) in linked or key in existing:
            continue
        existing.add(key)
        correspondence.candidates.append(
            CorrespondenceCandidate(
                target_kind=candidate.kind, target_id=candidate.record_id, reason=candidate.reason.value
            )
        )


def record_unfiled(
    session: Session,
    *,
    mail: ParsedMail | None,
    raw: bytes | None,
    raw_format: str,
    source: Source,
    outcome: Outcome,
    reason: str,
    detail: str = "",
) -> tuple[Outcome, UnmatchedMail]:
    """Queue a mail that could not be filed, keeping its raw bytes and the reason.

    `outcome` is UNMATCHED or FAILED. A mail already waiting in the queue
    under the same Message-ID is not queued twice: the item is recorded as a
    DUPLICATE source of the waiting entry.
    """
    key = message_key(mail) if mail is not None and mail.message_id else None
    waiting = None
    if key is not None:
        waiting = session.scalar(
            select(UnmatchedMail).where(UnmatchedMail.message_key == key).limit(1)
        )
    if waiting is not None:
        add_ledger_entry(session, source, Outcome.DUPLICATE, unmatched_id=waiting.id)
        return Outcome.DUPLICATE, waiting

    entry = UnmatchedMail(
        message_key=key,
        message_id=mail.message_id if mail else None,
        subject=mail.subject if mail else "",
        sender=mail.sender.email if mail and mail.sender else None,
        outcome=outcome.value,
        reason=reason,
        detail=detail[:2000],
        raw_format=raw_format,
        raw_mime=raw,
    )
    session.add(entry)
    session.flush()
    add_ledger_entry(session, source, outcome, unmatched_id=entry.id)
    return outcome, entry


def add_ledger_entry(
    session: Session,
    source: Source,
    outcome: Outcome,
    *,
    correspondence_id: int | None = None,
    unmatched_id: int | None = None,
) -> ProcessedItem:
    entry = ProcessedItem(
        mailbox=source.mailbox,
        folder_key=source.folder_key,
        folder_name=source.folder_name,
        item_id=source.item_id,
        outcome=outcome.value,
        correspondence_id=correspondence_id,
        unmatched_id=unmatched_id,
        feedback_pending=True,
    )
    session.add(entry)
    session.flush()
    return entry


def _address_json(address: Address) -> dict[str, str]:
    return {"email": address.email, "name": address.name}
