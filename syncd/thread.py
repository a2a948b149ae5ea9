"""Threads: the Message-IDs and Outlook conversation keys of filed mail, and the records a reply leads to.

A reply names the mails it replies to in In-Reply-To and References (RFC
5322, section 3.6.4). Outlook also sends Thread-Index, the conversation
index of [MS-OXOMSG] section 2.2.1.3, whose first 22 bytes stay the same
for every mail of a conversation. Every filed mail leaves its
Message-ID and conversation key in `message_refs`; a later mail whose
headers name one of them belongs to the records that mail was filed against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from crmstore.models import CorrespondenceLink, MessageRef, Record
from syncd.mail import MatchedBy, ParsedMail

log = logging.getLogger("syncd.thread")

#: Message-IDs longer than this are keyed by their hash, which keeps an index
#: entry within PostgreSQL's size limit.
MAX_PLAIN_KEY = 200

#: Bytes of a Thread-Index that identify the conversation: a reserved byte,
#: five bytes of the time the conversation began and a 16-byte GUID. Each
#: reply appends five bytes.
CONVERSATION_KEY_BYTES = 22

#: Message-IDs from References looked up per mail. A long thread lists every
#: ancestor; the last ones are the nearest, so those are kept.
MAX_REFERENCES = 100

#: Links that file a mail against a record. A reply follows these; links by
#: address name people, not records.
RECORD_MATCHES = (MatchedBy.TRACKING_CODE, MatchedBy.FOLDER, MatchedBy.THREAD, MatchedBy.MANUAL)


def message_id_key(message_id: str) -> str:
    """Return the key under which a Message-ID is stored: "mid:" plus the id, or a hash of a long one."""
    if len(message_id) <= MAX_PLAIN_KEY:
        return f"mid:{message_id}"
    return "mid-sha256:" + hashlib.sha256(message_id.encode()).hexdigest()


def conversation_key(thread_index: str | None) -> str | None:
    """Return the conversation part of an Outlook Thread-Index in hex, or None when it is missing or invalid."""
    if not thread_index:
        return None
    compact = "".join(thread_index.split())
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < CONVERSATION_KEY_BYTES:
        return None
    return raw[:CONVERSATION_KEY_BYTES].hex()


def referenced_keys(mails: Iterable[ParsedMail]) -> list[str]:
    """Return the keys of the Message-IDs that `mails` reply to, nearest first, without repeats."""
    ids: list[str] = []
    for mail in mails:
        if mail.in_reply_to:
            ids.append(mail.in_reply_to)
        ids.extend(reversed(mail.references[-MAX_REFERENCES:]))
    return list(dict.fromkeys(message_id_key(message_id) for message_id in ids if message_id))


def records_in_thread(session: Session, mails: Sequence[ParsedMail]) -> list[Record]:
    """Return the records that filed mail of the same thread as `mails` is filed against.

    `mails` are the mail to file and, for a forward, the forward around
    it. In-Reply-To and References decide; Thread-Index is used only when
    they name no filed mail, which is the case when a client left them out.
    A mail never counts as its own thread.
    """
    own = {message_id_key(mail.message_id) for mail in mails if mail.message_id}
    excluded = set(
        session.scalars(select(MessageRef.correspondence_id).where(MessageRef.message_key.in_(own)))
    ) if own else set()

    replied_to = [key for key in referenced_keys(mails) if key not in own]
    found = _correspondence_with(session, MessageRef.message_key, replied_to) - excluded
    if not found:
        conversations = {key for key in (conversation_key(mail.thread_index) for mail in mails) if key}
        found = _correspondence_with(session, MessageRef.thread_key, list(conversations)) - excluded
    if not found:
        return []

    records = session.scalars(
        select(Record)
        .join(
            CorrespondenceLink,
            (CorrespondenceLink.target_kind == Record.kind) & (CorrespondenceLink.target_id == Record.id),
        )
        .where(
            CorrespondenceLink.correspondence_id.in_(found),
            CorrespondenceLink.matched_by.in_([match.value for match in RECORD_MATCHES]),
        )
        .order_by(Record.id)
        .distinct()
    )
    return list(records)


def remember(session: Session, correspondence_id: int, mail: ParsedMail, role: str) -> None:
    """Store the Message-ID and conversation key of `mail` for `correspondence_id`, unless already stored.

    `role` is "message" for the mail recorded and "forward" for the
    forward that carried it.
    """
    key = message_id_key(mail.message_id) if mail.message_id else None
    conversation = conversation_key(mail.thread_index)
    if key is None and conversation is None:
        return
    known = session.scalar(
        select(MessageRef.id).where(
            MessageRef.correspondence_id == correspondence_id,
            _equal_or_null(MessageRef.message_key, key),
            _equal_or_null(MessageRef.thread_key, conversation),
        )
    )
    if known is None:
        session.add(
            MessageRef(
                correspondence_id=correspondence_id, message_key=key, thread_key=conversation, role=role
            )
        )


def _correspondence_with(
    session: Session, column: InstrumentedAttribute[str | None], keys: list[str]
) -> set[int]:
    if not keys:
        return set()
    return set(session.scalars(select(MessageRef.correspondence_id).where(column.in_(keys))))


def _equal_or_null(column: InstrumentedAttribute[str | None], value: str | None) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value
