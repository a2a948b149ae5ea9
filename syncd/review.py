"""The unmatched queue: filing a waiting mail by hand, dismissing it, or reopening it.

Assigning never teaches syncd anything implicitly: it files this one mail
against the named entity, adds no address, mapping or rule, and nothing
else changes. Like every filed mail, the assigned one keeps its Message-ID
in the thread table, so a reply to it follows it to the same entity.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from crmstore import crm
from crmstore.errors import InvalidInputError, NotFoundError
from crmstore.models import Correspondence, ProcessedItem, UnmatchedMail
from crmstore.refs import Ref
from syncd.correlate import CandidateRecord, Link, Signal
from syncd.mail import MatchedBy
from syncd.parse import is_unreadable, parse_item
from syncd.record import (
    attach_candidates,
    attach_links,
    find_correspondence,
    new_correspondence,
    remember_thread,
)
from syncd.resolve import Resolution, resolve

#: The signal behind a record link that resolve made, for keeping it as a
#: candidate when an admin files the mail elsewhere.
SIGNAL_OF_LINK = {
    MatchedBy.TRACKING_CODE: Signal.CODE,
    MatchedBy.FOLDER: Signal.FOLDER,
    MatchedBy.THREAD: Signal.THREAD,
}


def get_open(session: Session, unmatched_id: int) -> UnmatchedMail:
    entry = session.get(UnmatchedMail, unmatched_id)
    if entry is None:
        raise NotFoundError(f"unmatched mail {unmatched_id} does not exist: see `syncd unmatched list`")
    if entry.state != "open":
        raise InvalidInputError(f"unmatched mail {unmatched_id} is already {entry.state}")
    return entry


def assign(session: Session, unmatched_id: int, ref: Ref) -> Correspondence:
    """File the waiting mail against `ref` (matched_by manual) and close the entry.

    The links to the persons in From, To and Cc are made as for any mail.
    Records that the thread suggests now are kept as candidates, not linked,
    because the admin chose the record.
    """
    entry = get_open(session, unmatched_id)
    crm.entity_name(session, ref)
    if entry.raw_mime is None:
        raise InvalidInputError(
            f"unmatched mail {unmatched_id} has no stored content ({entry.reason}): "
            "import the original file with `syncd import` instead"
        )

    mail = parse_item(entry.raw_mime, entry.raw_format)
    if is_unreadable(mail):
        raise InvalidInputError(
            f"unmatched mail {unmatched_id} could not be read ({entry.reason}): it has nothing to file; "
            f"dismiss it with `syncd unmatched dismiss {unmatched_id}`"
        )
    resolution = resolve(session, mail, [])
    links = [Link(ref.kind, ref.id, MatchedBy.MANUAL)]
    if ref.is_record:
        links.append(Link("organisation", crm.get_record(session, ref).organisation_id, MatchedBy.RECORD))
    links += [link for link in resolution.links if link.matched_by is MatchedBy.ADDRESS]
    resolution.candidate_records += [
        CandidateRecord(link.kind, link.target_id, SIGNAL_OF_LINK[link.matched_by])
        for link in resolution.links
        if link.matched_by in SIGNAL_OF_LINK and (link.kind, link.target_id) != (ref.kind, ref.id)
    ]
    correspondence = _file(session, entry, resolution, links)

    entry.state = "assigned"
    entry.correspondence_id = correspondence.id
    # The items that brought the mail in become sources of the correspondence.
    session.execute(
        update(ProcessedItem)
        .where(ProcessedItem.unmatched_id == entry.id)
        .values(correspondence_id=correspondence.id)
    )
    return correspondence


def dismiss(session: Session, unmatched_id: int) -> None:
    """Hide the waiting mail from the queue; it stays in the database."""
    get_open(session, unmatched_id).state = "dismissed"


def reopen(session: Session, unmatched_id: int) -> None:
    """Put a dismissed mail back in the queue as open."""
    entry = session.get(UnmatchedMail, unmatched_id)
    if entry is None:
        raise NotFoundError(f"unmatched mail {unmatched_id} does not exist: see `syncd unmatched list --all`")
    if entry.state != "dismissed":
        # An assigned mail is already filed, so reopening it would file it twice.
        raise InvalidInputError(
            f"unmatched mail {unmatched_id} is {entry.state}, not dismissed: only a dismissed mail can be reopened"
        )
    entry.state = "open"


def _file(
    session: Session, entry: UnmatchedMail, resolution: Resolution, links: list[Link]
) -> Correspondence:
    correspondence = find_correspondence(session, resolution.mail)
    if correspondence is None:
        correspondence = new_correspondence(
            session, resolution.mail, resolution.direction, entry.raw_mime, entry.raw_format
        )
    attach_links(correspondence, list(dict.fromkeys(links)))
    attach_candidates(correspondence, resolution.candidate_records)
    remember_thread(session, correspondence, resolution)
    session.flush()
    return correspondence
