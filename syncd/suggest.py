"""Suggestions for the unmatched queue: records a waiting mail may belong to, each with its reason.

Three reasons are offered, strongest first:

- thread: a mail of the same thread has been filed against the record since
  this one was queued (score 1);
- subject: the subject, without reply and forward prefixes, resembles the
  title of a record of an organisation that an address points to (score:
  difflib's similarity ratio, at least MIN_SUBJECT_SIMILARITY);
- address: the record belongs to an organisation that an address points to
  (score ADDRESS_SCORE).

An address points to an organisation when it belongs to one of its persons
or shares its domain with one of them. Public mail domains such as
gmail.com point nowhere. Suggestions are not stored; they help an admin
choose the REF for `syncd unmatched assign`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from sqlalchemy import select
from sqlalchemy.orm import Session

from crmstore import crm
from crmstore.models import RECORD_KINDS, Person, PersonAddress, Record, UnmatchedMail
from crmstore.refs import Ref
from syncd.mail import MatchedBy, ParsedMail
from syncd.parse import parse_item
from syncd.resolve import resolve

#: Suggestions shown per mail.
MAX_SUGGESTIONS = 5

#: Subjects less similar than this to a record's title give no subject reason.
MIN_SUBJECT_SIMILARITY = 0.6

#: Score of a record whose only reason is its organisation.
ADDRESS_SCORE = 0.3

THREAD_SCORE = 1.0

#: Domains of public mail services, shared by unrelated people.
PUBLIC_MAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com",
        "yahoo.com", "icloud.com", "me.com", "mac.com", "aol.com", "gmx.com", "gmx.de",
        "proton.me", "protonmail.com", "hotmail.no", "live.no", "online.no", "yahoo.no",
        "hotmail.dk", "live.dk", "outlook.dk", "yahoo.dk", "mail.dk", "jubii.dk",
        "hotmail.se", "live.se", "outlook.se", "yahoo.se",
    }
)  # fmt: skip

# Reply and forward prefixes, repeated, with gateway tags such as "[EXTERNAL]".
_SUBJECT_PREFIXES = re.compile(
    r"^(?:\s*(?:\[[^\]]{0,40}\]|(?:re|sv|aw|antw|vs|fw|fwd|wg|tr|videresend|vb|vl)\s*(?:\[\d+\])?\s*:))+",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Suggestion:
    """A record a waiting mail may belong to; `reason` is thread, subject or address."""

    ref: Ref
    reason: str
    score: float


def suggest(session: Session, entry: UnmatchedMail) -> list[Suggestion]:
    """Return up to MAX_SUGGESTIONS records for a waiting mail, best first."""
    if entry.raw_mime is None:
        return []
    resolution = resolve(session, parse_item(entry.raw_mime, entry.raw_format), [])
    mail = resolution.mail

    found: dict[Ref, Suggestion] = {}
    for link in resolution.links:
        if link.matched_by is MatchedBy.THREAD:
            _keep(found, Suggestion(Ref(link.kind, link.target_id), "thread", THREAD_SCORE))

    subject = _plain_subject(mail.subject)
    for record in _records_of(session, _organisations_of(session, mail)):
        similarity = SequenceMatcher(None, subject, _plain_subject(record.title)).ratio()
        ref = Ref(record.kind, record.id)
        if similarity >= MIN_SUBJECT_SIMILARITY:
            _keep(found, Suggestion(ref, "subject", round(similarity, 2)))
        else:
            _keep(found, Suggestion(ref, "address", ADDRESS_SCORE))

    ranked = sorted(found.values(), key=lambda s: (-s.score, -s.ref.id))
    return ranked[:MAX_SUGGESTIONS]


def _keep(found: dict[Ref, Suggestion], suggestion: Suggestion) -> None:
    known = found.get(suggestion.ref)
    if known is None or suggestion.score > known.score:
        found[suggestion.ref] = suggestion


def _organisations_of(session: Session, mail: ParsedMail) -> set[int]:
    """Return the organisations that the addresses of `mail` point to, CRM users' addresses left out."""
    emails = [address.email for address in mail.addresses()]
    users = crm.user_emails(session, emails)
    outside = [email for email in emails if email not in users]

    organisations = {person.organisation_id for person in crm.persons_by_email(session, outside).values()}
    domains = {email.rpartition("@")[2] for email in outside} - PUBLIC_MAIL_DOMAINS
    for domain in sorted(domain for domain in domains if domain):
        organisations.update(
            session.scalars(
                select(Person.organisation_id)
                .join(PersonAddress)
                .where(PersonAddress.email.endswith(f"@{domain}", autoescape=True))
            )
        )
    return organisations


def _records_of(session: Session, organisations: set[int]) -> list[Record]:
    # NOTE: records have no open or closed state yet, so every record of the
    # organisation counts as open.
    if not organisations:
        return []
    return list(
        session.scalars(
            select(Record)
            .where(Record.organisation_id.in_(organisations), Record.kind.in_(RECORD_KINDS))
            .order_by(Record.id)
        )
    )


def _plain_subject(subject: str) -> str:
    return " ".join(_SUBJECT_PREFIXES.sub("", subject).casefold().split())
