"""Resolve stage: turn tracking codes and addresses into links to CRM entities.

Each distinct known code links the mail to its record (tracking_code) and to
the record's organisation (record). Each address in From, To or Cc that
belongs to a person links that person and the person's organisation
(address). A mail with at least one link is filed; one without is unmatched,
with reason unknown_code when a labelled code was not found in the store and
no_code otherwise.

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
from syncd.forward import find_forwarded_original
from syncd.mail import CodeCandidate, Direction, MatchedBy, ParsedMail, UnmatchedReason

log = logging.getLogger("syncd.resolve")


@dataclass(frozen=True)
class Link:
    """A link to make: `kind` is a record kind, "organisation" or "person"."""

    kind: str
    target_id: int
    matched_by: MatchedBy


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
) -> Resolution:
    """Resolve one parsed mail against the store.

    `inbound` marks an inbound mailbox. `local_timezone` is the zone in
    which an inline-forwarded original's date is read when it names none.
    """
    recorded, forwarded_by = _unwrap_forward(session, mail, inbound=inbound, local_timezone=local_timezone)
    links: list[Link] = []

    records = crm.records_by_code(session, (candidate.code for candidate in candidates))
    for code, record in records.items():
        links.append(Link(record.kind, record.id, MatchedBy.TRACKING_CODE))
        links.append(Link("organisation", record.organisation_id, MatchedBy.RECORD))
    unknown = [c.code for c in candidates if c.labelled and c.code not in records]

    emails = [address.email for address in recorded.addresses()]
    for person in crm.persons_by_email(session, emails).values():
        links.append(Link("person", person.id, MatchedBy.ADDRESS))
        links.append(Link("organisation", person.organisation_id, MatchedBy.ADDRESS))

    if unknown:
        log.info(
            "message %s names unknown tracking code(s) %s",
            recorded.message_id or "(no Message-ID)",
            ", ".join(unknown),
        )
    return Resolution(
        mail=recorded,
        direction=_direction(session, recorded),
        links=list(dict.fromkeys(links)),
        unknown_codes=unknown,
        forwarded_by=forwarded_by,
    )


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
