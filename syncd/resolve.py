"""Resolve stage: turn tracking codes, the folder, the thread and addresses into links to CRM entities.

The signals are gathered here and weighed in `syncd.correlate`. They are a
known code in the new text or in quoted history, the record of a mapped
folder, the records that earlier mail of the same thread was filed against,
and each address in From, To or Cc that belongs to a person. A mail with at
least one link is filed; one without is unmatched, with reason unknown_code when
a labelled code was not found in the store and no_code otherwise.

When a CRM user forwards a mail into syncd, the mail recorded is the
forwarded original, so its sender, recipients, date and subject are the
customer's, not the forward's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import tzinfo

from sqlalchemy.orm import Session

from crmstore import crm
from crmstore.models import Record
from crmstore.refs import Ref
from syncd import thread
from syncd.correlate import CandidateRecord, Evidence, Link, Signal, Target, decide
from syncd.forward import find_forwarded_original
from syncd.mail import CodeCandidate, Direction, ParsedMail, UnmatchedReason
from syncd.quoting import codes_in_new_text

__all__ = ["Link", "Resolution", "resolve"]

log = logging.getLogger("syncd.resolve")


@dataclass
class Resolution:
    """What the record stage needs to file one mail."""

    #: The mail to record: the forwarded original when the mail was a forward.
    mail: ParsedMail
    direction: Direction
    links: list[Link] = field(default_factory=list)
    #: Codes that followed a tracking-code label but are not in the store.
    unknown_codes: list[str] = field(default_factory=list)
    #: Address of the CRM user who forwarded the original, when it was a forward.
    forwarded_by: str | None = None
    #: The forward that carried `mail`, when it was a forward into syncd.
    forward: ParsedMail | None = None
    #: Records that only outranked signals named; kept on the correspondence for review.
    candidate_records: list[CandidateRecord] = field(default_factory=list)

    @property
    def filed(self) -> bool:
        return bool(self.links)

    @property
    def reason(self) -> UnmatchedReason:
        """Why an unfiled mail is unmatched; meaningless when `filed` is true."""
        return UnmatchedReason.UNKNOWN_CODE if self.unknown_codes else UnmatchedReason.NO_CODE


def resolve(
    session: Session,
    mail: ParsedMail,
    candidates: list[CodeCandidate],
    *,
    inbound: bool = False,
    local_timezone: tzinfo | None = None,
    mapped_to: Ref | None = None,
) -> Resolution:
    """Resolve one parsed mail against the store.

    `inbound` marks an inbound mailbox. `local_timezone` is the zone in
    which an inline-forwarded original's date is read when it names none.
    `mapped_to` is the record of the mapped folder the mail lies in.
    """
    recorded, forwarded_by = _unwrap_forward(session, mail, inbound=inbound, local_timezone=local_timezone)
    # For a forward, the forward's own subject, note and headers count too:
    # a code the user wrote in the note is a code written for this mail.
    carriers = [recorded] if recorded is mail else [recorded, mail]

    records = crm.records_by_code(session, (candidate.code for candidate in candidates))
    unknown = [c.code for c in candidates if c.labelled and c.code not in records]
    evidence = _code_evidence(carriers, records)
    evidence += _folder_evidence(session, mapped_to, recorded)
    evidence += [Evidence(Signal.THREAD, _target(record)) for record in thread.records_in_thread(session, carriers)]
    emails = [address.email for address in recorded.addresses()]
    for person in crm.persons_by_email(session, emails).values():
        evidence.append(Evidence(Signal.ADDRESS, Target("person", person.id, person.organisation_id)))
    decision = decide(evidence)

    label = recorded.message_id or "(no Message-ID)"
    if unknown:
        log.info("message %s names unknown tracking code(s) %s", label, ", ".join(unknown))
    if decision.candidates:
        log.info(
            "message %s: signals disagree; kept as candidates: %s",
            label, ", ".join(f"{c.kind}:{c.record_id} ({c.reason})" for c in decision.candidates),
        )
    return Resolution(
        mail=recorded,
        direction=_direction(session, recorded),
        links=decision.links,
        unknown_codes=unknown,
        forwarded_by=forwarded_by,
        forward=mail if recorded is not mail else None,
        candidate_records=decision.candidates,
    )


def _code_evidence(carriers: list[ParsedMail], records: dict[str, Record]) -> list[Evidence]:
    written = set().union(*(codes_in_new_text(carrier) for carrier in carriers)) if records else set()
    return [
        Evidence(Signal.CODE if code in written else Signal.QUOTED_CODE, _target(record))
        for code, record in records.items()
    ]


def _folder_evidence(session: Session, mapped_to: Ref | None, mail: ParsedMail) -> list[Evidence]:
    if mapped_to is None:
        return []
    record = session.get(Record, mapped_to.id)
    if record is None or record.kind != mapped_to.kind:
        log.warning(
            "message %s lies in a folder mapped to %s, which does not exist; the mapping is ignored",
            mail.message_id or "(no Message-ID)", mapped_to,
        )
        return []
    return [Evidence(Signal.FOLDER, _target(record))]


def _target(record: Record) -> Target:
    return Target(record.kind, record.id, record.organisation_id)


def _unwrap_forward(
    session: Session, mail: ParsedMail, *, inbound: bool, local_timezone: tzinfo | None
) -> tuple[ParsedMail, str | None]:
    """Return the mail to record and, for a forward into syncd, who forwarded it.

    A CRM user's forward counts as a forward into syncd when it arrives in an
    inbound mailbox, or when none of its recipients is a CRM contact person:
    a forward to a customer is ordinary outgoing correspondence.
    """
    if mail.sender is None or not crm.user_emails(session, [mail.sender.email]):
        return mail, None

    recipients = [address.email for address in [*mail.to, *mail.cc]]
    if not inbound and crm.persons_by_email(session, recipients):
        return mail, None

    original = find_forwarded_original(mail, assume_tz=local_timezone)
    if original is None:
        return mail, None
    return original, mail.sender.email


def _direction(session: Session, mail: ParsedMail) -> Direction:
    emails = [address.email for address in mail.addresses()]
    users = crm.user_emails(session, emails)
    if emails and users.issuperset(emails):
        return Direction.INTERNAL
    if mail.sender is not None and mail.sender.email in users:
        return Direction.OUTGOING
    return Direction.INCOMING
