"""Data shapes that the pipeline stages pass to each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Address:
    """One mailbox from a From, To or Cc header; `email` is lower-cased."""

    email: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass
class ParsedMail:
    """What the parse stage extracts from one message.

    Every field degrades to an empty value rather than raising: a mail with a
    broken header keeps its other fields, and `defects` says what was lost.
    """

    #: Message-ID without angle brackets or surrounding white space, or None.
    message_id: str | None = None
    subject: str = ""
    sender: Address | None = None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    #: Date header as an aware datetime in UTC, or None when missing or invalid.
    date: datetime | None = None
    #: Text of every inline text/plain part, joined by blank lines.
    text: str = ""
    #: Text nodes of every inline text/html part, hidden ones included.
    html_text: str = ""
    #: Messages carried inside this one: message/rfc822 parts and attached .msg files.
    nested: list[ParsedMail] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    #: Outlook's Thread-Index header, base64 as sent.
    thread_index: str | None = None
    #: One short note per thing the parser had to skip or guess.
    defects: list[str] = field(default_factory=list)

    def addresses(self) -> list[Address]:
        """Return From, To and Cc in that order, without repeats."""
        seen: dict[str, Address] = {}
        for address in [self.sender, *self.to, *self.cc]:
            if address is not None and address.email not in seen:
                seen[address.email] = address
        return list(seen.values())


class Location(enum.StrEnum):
    """Where in a mail a tracking code was found."""

    SUBJECT = "subject"
    TEXT = "text"
    HTML = "html"
    NESTED = "nested"


@dataclass(frozen=True)
class CodeCandidate:
    """A string shaped like a tracking code, found by the detect stage.

    `labelled` is true when the string followed a tracking-code label such as
    "Tracking code:" or "Sporingskode:"; only labelled candidates that the store
    does not know are reported as unknown codes.
    """

    code: str
    labelled: bool
    location: Location


class Direction(enum.StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"
    INTERNAL = "internal"


class MatchedBy(enum.StrEnum):
    """How a link from a correspondence to a CRM entity was made."""

    TRACKING_CODE = "tracking_code"
    RECORD = "record"
    ADDRESS = "address"
    MANUAL = "manual"
    #: The mail replies to, or shares an Outlook conversation with, a mail filed against the record.
    THREAD = "thread"
    #: The mail was dropped into a folder mapped to the record.
    FOLDER = "folder"


class Outcome(enum.StrEnum):
    """What became of one item a backend yielded; these are the counted outcomes."""

    FILED = "filed"
    UNMATCHED = "unmatched"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class UnmatchedReason(enum.StrEnum):
    NO_CODE = "no_code"
    UNKNOWN_CODE = "unknown_code"
    PARSE_ERROR = "parse_error"
    TOO_LARGE = "too_large"
    ERROR = "error"
