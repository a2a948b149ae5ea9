"""Parse stage: turn the bytes of one mail (RFC 5322 or Outlook .msg) into a ParsedMail.

parse_message and parse_msg return a ParsedMail for any input and raise
no Exception subclass. Each header and each MIME part is read on its own,
so a broken one loses only itself, and `ParsedMail.defects` gets one note
for it. Messages carried inside the mail (message/rfc822 parts, attached
.msg files and messages inside TNEF parts) are parsed the same way into
`nested`, down to `max_depth` levels.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import Header, decode_header, make_header
from email.headerregistry import AddressHeader
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.policy import Compat32
from email.utils import getaddresses, parsedate_to_datetime, unquote
from types import TracebackType
from typing import TypeVar, cast

import extract_msg
import olefile
from extract_msg.enums import AttachmentType, ErrorBehavior, RecipientType
from extract_msg.msg_classes import MSGFile

from syncd.html_text import html_to_text
from syncd.mail import Address, ParsedMail
from syncd.tnef import TnefMessage, read_tnef

log = logging.getLogger("syncd.parse")

DEFAULT_MAX_DEPTH = 8
DEFAULT_MAX_HTML_CHARS = 5_000_000

#: Header values longer than this many characters are cut before the email
#: package parses them, because its header parsers take quadratic time in
#: the length of a value. RFC 5322 limits a line to 998 characters, and
#: folded headers of real mail stay far below this.
MAX_HEADER_CHARS = 16_384

#: Maximum number of MIME parts (and Outlook attachments) read from one mail,
#: nested messages included. Each part costs a header parse and often an
#: HTML conversion, so a crafted mail with tens of thousands of tiny parts
#: would otherwise take tens of seconds. The parts after the limit are
#: skipped, and a defect note gives their count.
MAX_PARTS = 1000

#: Maximum number of addresses read from the From, To or Cc headers of one
#: message. The rest are skipped with a defect note. It also bounds the store lookups
#: that the resolve stage makes for one mail.
MAX_ADDRESSES = 1000

#: An address (display name, comments and addr-spec) longer than this many
#: characters is skipped, because the email package's address parser takes
#: quadratic time on long ones.
MAX_ADDRESS_CHARS = 1000

#: Maximum length of an addr-spec that is kept. RFC 5321 section 4.5.3.1
#: allows a 64-character local part and a 255-character domain.
MAX_ADDR_SPEC_CHARS = 320

#: Display names are cut to this many characters. Real ones are far
#: shorter, and the store keeps a sender's name in 255 characters.
MAX_DISPLAY_NAME_CHARS = 255

#: Maximum length of a Message-ID that is kept: the line limit of RFC 5322 section 2.1.1.
MAX_MESSAGE_ID_CHARS = 998

#: References kept from one References header: the first, which names the
#: start of the thread, and the most recent ones.
MAX_REFERENCES = 100

MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
OUTLOOK_TYPES = frozenset({"application/vnd.ms-outlook", "application/x-msg"})
TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})

_T = TypeVar("_T")

_BRACKETED_ID = re.compile(r"<([^<>]*)>")
# RFC 2047 encoded words, which may contain a ":" or "," in broken mail,
# and the characters that open, close or separate the pieces of an address list.
_ADDRESS_LIST_SPECIAL = re.compile(r'=\?[^?\s"\\()]*\?[bBqQ]\?[^?\s"\\()]*\?=|[\\",;:()<>]')
# An address in the forms that _simple_address reads: an optional display
# name, either atoms separated by blanks or one quoted string without
# escapes, then an addr-spec of dot-atoms in angle brackets, or an addr-spec
# alone. The atom characters are those of RFC 5322 section 3.2.3, with
# non-ASCII letters allowed as RFC 6532 does.
_ATOM = r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]+"
_DOT_ATOM_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_ADDRESS = re.compile(
    rf'[ \t]*(?:(?:(?P<phrase>{_ATOM}(?:[ \t]+{_ATOM})*)|"(?P<quoted>[^"\\]*)")[ \t]*)?'
    rf"<(?P<angle>{_DOT_ATOM_ADDR_SPEC})>[ \t]*"
    rf"|[ \t]*(?P<bare>{_DOT_ATOM_ADDR_SPEC})[ \t]*"
)
_BLANKS = re.compile(r"[ \t]+")
# A Content-Type value with a media type and parameters that are all
# "name=token" or 'name="text"', without RFC 2231 names, escapes or
# comments, such as 'text/plain; charset="utf-8"; format=flowed'.
# _declared_charset reads these with _SIMPLE_PARAMETER. The quantifiers are
# possessive, so that a value which does not match fails in linear time.
_SIMPLE_CONTENT_TYPE = re.compile(
    r'[^;"\\=/]*+/[^;"\\=]*+'
    r'(?:;[ \t]*+[A-Za-z0-9_.-]++[ \t]*+=[ \t]*+(?:"[^"\\]*+"|[^;"\\\s]*+)[ \t]*+)*+;?[ \t]*+'
)
_SIMPLE_PARAMETER = re.compile(r';[ \t]*([A-Za-z0-9_.-]+)[ \t]*=[ \t]*("[^"\\]*"|[^;"\\\s]*)')
_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAK = re.compile(r"\r\n?|\n")
# The ASCII characters at which str.splitlines breaks a line.
_ASCII_LINE_BOUNDARY = re.compile(r"[\n\r\v\f\x1c-\x1e]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# The endings of the defect notes that _add_nested, _html_text, _fill_bodies,
# _add_outlook_attachments, _addresses and _bounded write when a limit stops them.
_LIMIT_NOTE = re.compile(
    r"not parsed: max_depth is \d+$|max_html_chars is \d+$|parts of one mail are read$"
    r"|addresses, the rest not read$|characters cut at \d+$|attributes of one TNEF stream are read$"
)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)

class _StructurePolicy(Compat32):
    """The email package's compat32 policy, with long header values cut when a Message method reads them.

    The MIME structure is parsed with compat32 because policy.default parses
    every header that the parser or a Message method reads through its
    header registry. On a mail with thousands of parts that takes ten times
    as long as the parse itself. The headers that syncd uses are read raw
    and decoded by the functions below, with policy.default's header
    factory where a header needs more than a regular expression.
    Message methods that read parameters (boundary, charset, filename) use
    string slicing that takes quadratic time on long values, so they see at
    most MAX_HEADER_CHARS characters. They also see the value unfolded, as
    policy.default shows it, because compat32 would keep the line break of
    a boundary folded onto the next line.
    """

    # Compat32 returns a Header for a value with raw 8-bit bytes, which
    # typeshed's Policy does not allow for, so its own stub ignores this too.
    def header_fetch_parse(self, name: str, value: str) -> str | Header:  # type: ignore[override]
        # The parser itself reads Content-Type several times per part. An
        # ASCII value that is short and on one line is returned as compat32
        # returns it, without the copies.
        if isinstance(value, str) and len(value) <= MAX_HEADER_CHARS and value.isascii():
            if not _ASCII_LINE_BOUNDARY.search(value):
                return value
        return super().header_fetch_parse(name, "".join(value[:MAX_HEADER_CHARS].splitlines()))


_STRUCTURE_POLICY = _StructurePolicy()

# Outlook stores the transport headers of a received mail with this line
# in front, which is not a header.
_OUTLOOK_HEADER_PREFIX = "Microsoft Mail Internet Headers Version 2.0"


@dataclass
class _Limits:
    """The limits of one parse call; `parts_left` counts down over the whole mail."""

    max_depth: int
    max_html_chars: int
    parts_left: int = MAX_PARTS
    #: The last HTML body converted in this parse call and its text. Mail
    #: that repeats one HTML part, such as a list digest or a mail with a
    #: thousand copies of one part, has it converted once.
    last_html: tuple[str, str] | None = None


def parse_item(raw: bytes, format: str, **limits: int) -> ParsedMail:
    """Parse `raw` as format "eml" (RFC 5322) or "msg" (Outlook); `limits` go to that parser."""
    if format == "eml":
        return parse_message(raw, **limits)
    if format == "msg":
        return parse_msg(raw, **limits)
    raise ValueError(f"unknown mail format {format!r}: use 'eml' for RFC 5322 bytes or 'msg' for Outlook files")


def parse_message(
    raw: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_html_chars: int = DEFAULT_MAX_HTML_CHARS,
) -> ParsedMail:
    """Parse the bytes of an RFC 5322 message.

    `max_depth` is how many levels of nested messages are parsed, and
    `max_html_chars` caps the HTML read from each text/html part.
    """
    return _parse_rfc5322(raw, _Limits(max_depth, max_html_chars), depth=0)


def parse_msg(
    raw: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_html_chars: int = DEFAULT_MAX_HTML_CHARS,
) -> ParsedMail:
    """Parse the bytes of an Outlook .msg file, with the limits of `parse_message`."""
    return _parse_outlook(raw, _Limits(max_depth, max_html_chars), depth=0)


def limit_notes(mail: ParsedMail) -> list[str]:
    """Return the defect notes of `mail` and its nested messages that report a limit that left part unread.

    A tracking code in the unread part is not found, so the pipeline shows
    these notes with a mail that ends unmatched.
    """
    notes: dict[str, None] = {}
    pending = [mail]
    while pending:
        current = pending.pop()
        notes.update(dict.fromkeys(note for note in current.defects if _LIMIT_NOTE.search(note)))
        pending.extend(current.nested)
    return list(notes)


def is_unreadable(mail: ParsedMail) -> bool:
    """Return whether parsing got nothing out of its input, so that `mail` has only defects.

    The parsers do not raise for bad input; this tells a caller that wants
    to treat, say, a corrupt .msg file as a parse failure.
    """
    found = (mail.message_id, mail.subject, mail.sender, mail.to, mail.cc, mail.date, mail.nested)
    return not any(found) and not mail.text.strip() and not mail.html_text.strip()


# --- RFC 5322 -----------------------------------------------------------


def _parse_rfc5322(raw: bytes, limits: _Limits, depth: int) -> ParsedMail:
    mail = ParsedMail()
    try:
        _fill_from_rfc5322(mail, raw, limits, depth)
    except Exception as exc:
        # Last resort: every field is already read on its own, so reaching
        # this is a bug here, and the fields read so far are still worth having.
        log.exception("Parsing a message failed, keeping what was read; Message-ID %s", mail.message_id)
        mail.defects.append(f"parse stopped early: {_describe(exc)}")
    if is_unreadable(mail) and not mail.defects:
        mail.defects.append(f"no header or text found in {len(raw)} bytes")
    return mail


def _fill_from_rfc5322(mail: ParsedMail, raw: bytes, limits: _Limits, depth: int) -> None:
    try:
        message = BytesParser(policy=_STRUCTURE_POLICY).parsebytes(raw)
    except Exception as exc:
        # The email package records most problems as defects, but some
        # input still escapes it, e.g. RecursionError on MIME parts nested
        # a thousand deep. Headers and the raw body text are still worth having.
        mail.defects.append(f"MIME structure unreadable ({_describe(exc)}); body kept as raw text")
        _fill_from_unparsed(mail, raw)
        return

    _fill_from_message(mail, message, limits, depth)


def _fill_from_message(mail: ParsedMail, message: Message, limits: _Limits, depth: int) -> None:
    _fill_headers(mail, message)
    try:
        _fill_bodies(mail, message, limits, depth)
    except Exception as exc:
        # Every part is already read on its own, so this catches a failure in
        # walking the structure itself and keeps the headers read above.
        log.warning("Reading the MIME parts of %s failed: %s", mail.message_id, _describe(exc))
        mail.defects.append(f"MIME parts unreadable: {_describe(exc)}")


def _fill_from_unparsed(mail: ParsedMail, raw: bytes) -> None:
    try:
        message = BytesHeaderParser(policy=policy.default).parsebytes(raw)
    except Exception as exc:
        # Without headers, the raw bytes as text are all there is to keep.
        mail.defects.append(f"headers unreadable: {_describe(exc)}")
        mail.text = _clean_body(_decode_bytes(raw, None))
        return

    _fill_headers(mail, message)
    # Message.get_payload turns undeclared 8-bit bytes into U+FFFD, so the
    # body is cut from the raw bytes after the first empty line.
    header_end = _HEADER_END.search(raw)
    body = raw[header_end.end() :] if header_end else raw
    mail.text = _clean_body(_decode_bytes(body, None))


# --- headers ------------------------------------------------------------


# Lower-cased names of the headers that ParsedMail keeps.
_KEPT_HEADERS = frozenset(
    {"message-id", "subject", "from", "sender", "to", "cc", "date", "in-reply-to", "references", "thread-index"}
)

# Unfolded raw values of the kept headers of one message, by lower-cased name, in message order.
_HeaderValues = dict[str, list[str]]


def _fill_headers(mail: ParsedMail, message: Message) -> None:
    no_headers: _HeaderValues = {}
    headers = _read_field(mail, "header list", lambda: _kept_header_values(message), no_headers)
    mail.message_id = _read_field(mail, "Message-ID header", lambda: _message_id(mail, headers, "message-id"), None)
    mail.subject = _read_field(mail, "Subject header", lambda: _subject(mail, headers), "")
    mail.sender = _read_field(mail, "From header", lambda: _sender(mail, headers), None)
    mail.to = _read_field(mail, "To header", lambda: _addresses(mail, headers, "to"), [])
    mail.cc = _read_field(mail, "Cc header", lambda: _addresses(mail, headers, "cc"), [])
    mail.date = _read_field(mail, "Date header", lambda: _date(mail, headers), None)
    mail.in_reply_to = _read_field(
        mail, "In-Reply-To header", lambda: _message_id(mail, headers, "in-reply-to"), None
    )
    mail.references = _read_field(mail, "References header", lambda: _references(mail, headers), [])
    mail.thread_index = _read_field(mail, "Thread-Index header", lambda: _thread_index(headers), None)


def _kept_header_values(message: Message) -> _HeaderValues:
    """Return the raw values of the headers in _KEPT_HEADERS, read in one pass over the header list."""
    values: _HeaderValues = {}
    for key, value in message.raw_items():
        name = key.lower()
        if name in _KEPT_HEADERS:
            values.setdefault(name, []).append(_LINE_BREAK.sub("", value))
    return values


def _read_field(mail: ParsedMail, what: str, reader: Callable[[], _T], fallback: _T) -> _T:
    """Return `reader()`, or `fallback` with a defect note when it raises."""
    try:
        return reader()
    except Exception as exc:
        # A header or property that the library cannot read costs only
        # that one field.
        mail.defects.append(f"{what} unreadable: {_describe(exc)}")
        return fallback


def _raw_headers(message: Message, name: str) -> list[str]:
    """Return the unparsed values of every header called `name`, unfolded."""
    wanted = name.lower()
    return [_LINE_BREAK.sub("", value) for key, value in message.raw_items() if key.lower() == wanted]


def _bounded(mail: ParsedMail, name: str, value: str) -> str:
    """Return `value` cut at MAX_HEADER_CHARS, with a defect note when it was longer."""
    if len(value) <= MAX_HEADER_CHARS:
        return value
    mail.defects.append(f"{name} header of {len(value)} characters cut at {MAX_HEADER_CHARS}")
    return value[:MAX_HEADER_CHARS]


def _subject(mail: ParsedMail, headers: _HeaderValues) -> str:
    values = headers.get("subject")
    if not values:
        return ""
    value = _bounded(mail, "Subject", values[0])
    if "=?" not in value:
        # Without an encoded word, the header parser returns the value as
        # it is, so the parse is skipped.
        return _clean(value)
    try:
        return _clean(str(policy.default.header_factory("subject", _repair_8bit(value))))
    except Exception:
        # The header parser raises IndexError and the like on some malformed
        # encoded words, which email.header still decodes in part.
        return _decode_words_best_effort(value)


def _decode_words_best_effort(raw: str) -> str:
    """Decode RFC 2047 encoded words with email.header, for headers the parser rejects."""
    text = _repair_8bit(raw)
    # make_header raises for an unknown charset, and decode_header for
    # broken base64, so each step falls back to a rawer one.
    try:
        return _clean(str(make_header(decode_header(text))))
    except Exception:
        pass
    try:
        chunks = decode_header(text)
    except Exception:
        return _clean(text)
    return _clean(
        "".join(chunk if isinstance(chunk, str) else _decode_bytes(chunk, charset) for chunk, charset in chunks)
    )


def _sender(mail: ParsedMail, headers: _HeaderValues) -> Address | None:
    for name in ("from", "sender"):
        addresses = _addresses(mail, headers, name)
        if addresses:
            return addresses[0]
    return None


def _addresses(mail: ParsedMail, headers: _HeaderValues, name: str) -> list[Address]:
    """Read the addresses of every header called `name`, reading raw 8-bit bytes as UTF-8 or Latin-1.

    Each address is parsed on its own, so that one broken address costs
    only itself and the parse time grows linearly with the header. The
    email package turns undeclared 8-bit bytes into U+FFFD, which would
    lose the æøå of a client that sends raw UTF-8 or Latin-1 headers.
    """
    title = name.title()
    pieces: list[str] = []
    for value in headers.get(name, []):
        room = MAX_ADDRESSES - len(pieces)
        found, complete = _split_address_list(_repair_8bit(value), room)
        pieces.extend(found)
        if not complete:
            mail.defects.append(f"{title} header: more than {MAX_ADDRESSES} addresses, the rest not read")
            break

    result = []
    for piece in pieces:
        if len(piece) > MAX_ADDRESS_CHARS:
            mail.defects.append(f"{title} header: address of {len(piece)} characters skipped")
            continue
        for display_name, addr_spec, domain in _parse_address(mail, name, piece):
            address = mailbox_address(_clean(addr_spec), _clean(display_name)) if domain else None
            if address is None:
                mail.defects.append(f"{title} header: invalid address {_shorten(addr_spec or display_name)!r} skipped")
                continue
            result.append(address)
    return result


def mailbox_address(email: str, name: str = "") -> Address | None:
    """Return the Address of `email` and display name `name`, or None when `email` is no address.

    `email` is lower-cased, and must contain "@" and be no longer than
    MAX_ADDR_SPEC_CHARS. A display name longer than MAX_DISPLAY_NAME_CHARS is cut.
    """
    email = email.strip().lower()
    if "@" not in email or len(email) > MAX_ADDR_SPEC_CHARS:
        return None
    return Address(email=email, name=name.strip()[:MAX_DISPLAY_NAME_CHARS])


def _split_address_list(value: str, limit: int) -> tuple[list[str], bool]:
    """Split an address-list header value into its addresses, at most `limit` of them.

    Commas inside quoted strings, comments (which nest) and angle brackets
    do not separate addresses. The group syntax of RFC 5322 section 3.4
    ("Team: a@example.no, b@example.no;") is dropped, so that each member
    is an address of its own. Returns the addresses and whether the value
    ended within the limit.
    """
    pieces: list[str] = []
    start = 0
    escaped_until = -1
    in_quote = in_angle = False
    comment_depth = 0

    for match in _ADDRESS_LIST_SPECIAL.finditer(value):
        index, char = match.start(), match.group()
        if index < escaped_until or len(char) > 1:
            continue
        if char == "\\":
            escaped_until = index + 2
        elif in_quote:
            in_quote = char != '"'
        elif comment_depth:
            if char == "(":
                comment_depth += 1
            elif char == ")":
                comment_depth -= 1
        elif char == '"':
            in_quote = True
        elif char == "(":
            comment_depth = 1
        elif in_angle:
            in_angle = char != ">"
        elif char == "<":
            in_angle = True
        elif char == ":":
            # The text before is the name of a group, not an address.
            start = index + 1
        elif char in ",;":
            piece = value[start:index].strip()
            start = index + 1
            if piece:
                if len(pieces) == limit:
                    return pieces, False
                pieces.append(piece)

    piece = value[start:].strip()
    if piece:
        if len(pieces) == limit:
            return pieces, False
        pieces.append(piece)
    return pieces, True


def _parse_address(mail: ParsedMail, name: str, piece: str) -> list[tuple[str, str, str]]:
    """Return (display name, addr-spec, domain) of the address in `piece`, parsed loosely if need be."""
    simple = _simple_address(piece)
    if simple is not None:
        return [simple]
    try:
        header = cast(AddressHeader, policy.default.header_factory(name, piece))
        return [(item.display_name, item.addr_spec, item.domain) for item in header.addresses]
    except Exception as exc:
        mail.defects.append(f"{name.title()} header parsed loosely: {_describe(exc)}")
    decoded = _decode_words_best_effort(piece)
    return [(display, spec, spec.rpartition("@")[2]) for display, spec in getaddresses([decoded])]


def _simple_address(piece: str) -> tuple[str, str, str] | None:
    """Return (display name, addr-spec, domain) of an address in one of the common simple forms, else None.

    The forms are `user@example.no`, `<user@example.no>`, `Kari Nordmann
    <user@example.no>` and `"Nordmann, Kari" <user@example.no>`, without
    encoded words, comments, escapes or unusual white space. For these the
    result is the one the email package's address parser returns, and
    reading them with a regular expression is many times faster. Any other
    piece returns None and goes to that parser.
    """
    if "=?" in piece or not piece.replace("\t", " ").isprintable():
        return None
    match = _SIMPLE_ADDRESS.fullmatch(piece)
    if match is None:
        return None
    addr_spec = match["angle"] or match["bare"]
    if match["quoted"] is not None:
        display_name = match["quoted"]
    elif match["phrase"] is not None:
        display_name = _BLANKS.sub(" ", match["phrase"])
    else:
        display_name = ""
    return display_name, addr_spec, addr_spec.rpartition("@")[2]


def _date(mail: ParsedMail, headers: _HeaderValues) -> datetime | None:
    values = headers.get("date")
    if not values:
        return None
    # The same call and the same ValueError as policy.default's Date header,
    # without the header object around it.
    try:
        value = parsedate_to_datetime(_repair_8bit(_bounded(mail, "Date", values[0])))
    except ValueError:
        value = None
    if value is None:
        mail.defects.append(f"Date header invalid: {_shorten(values[0].strip())!r}")
        return None
    return _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    # By RFC 5322 section 3.3 the zone "-0000" means the time is in UTC and the
    # sender's local zone is unknown. Python returns such times without tzinfo.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _message_id(mail: ParsedMail, headers: _HeaderValues, name: str) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    return _fit_id(mail, _HEADER_TITLES[name] + " header", _normalise_id(values[0]))


_HEADER_TITLES = {"message-id": "Message-ID", "in-reply-to": "In-Reply-To"}


def _fit_id(mail: ParsedMail, what: str, identifier: str | None) -> str | None:
    """Return `identifier`, or None with a defect note when it is longer than a real one can be."""
    if identifier is not None and len(identifier) > MAX_MESSAGE_ID_CHARS:
        mail.defects.append(f"{what} of {len(identifier)} characters ignored")
        return None
    return identifier


def _normalise_id(raw: str) -> str | None:
    """Return the first `<id>` in `raw` (or all of `raw`) without brackets and white space."""
    text = _clean(raw)
    match = _BRACKETED_ID.search(text)
    value = match.group(1) if match else text
    value = "".join(value.split()).strip("<>")
    return value or None


def _references(mail: ParsedMail, headers: _HeaderValues) -> list[str]:
    return _reference_ids(mail, _clean(" ".join(headers.get("references", []))))


def _reference_ids(mail: ParsedMail, text: str) -> list[str]:
    """Return the ids of a References value, at most MAX_REFERENCES of them."""
    ids = _BRACKETED_ID.findall(text) or text.split()
    references = [
        identifier
        for identifier in ("".join(item.split()) for item in ids)
        if identifier and len(identifier) <= MAX_MESSAGE_ID_CHARS
    ]
    if len(references) > MAX_REFERENCES:
        mail.defects.append(f"References header: {len(references) - MAX_REFERENCES} of {len(references)} ids dropped")
        references = references[:1] + references[1 - MAX_REFERENCES :]
    return references


def _thread_index(headers: _HeaderValues) -> str | None:
    values = headers.get("thread-index")
    if not values:
        return None
    return "".join(values[0].split()) or None


# --- MIME parts ---------------------------------------------------------


def _fill_bodies(mail: ParsedMail, message: Message, limits: _Limits, depth: int) -> None:
    texts: list[str] = []
    html_texts: list[str] = []
    # A dict keeps the first-seen order and drops repeats.
    structure_defects: dict[str, None] = {}
    skipped = 0
    for part, is_container in _walk_parts(message):
        if limits.parts_left <= 0:
            skipped += 1
            continue
        limits.parts_left -= 1
        for defect in part.defects:
            structure_defects[f"{_content_type(part)} part: {type(defect).__name__}"] = None
        if is_container:
            continue
        try:
            _read_part(mail, part, texts, html_texts, limits, depth)
        except Exception as exc:
            # One unreadable part must not cost the others.
            mail.defects.append(f"{_content_type(part)} part unreadable: {_describe(exc)}")

    mail.defects.extend(structure_defects)
    if skipped:
        mail.defects.append(_parts_skipped(skipped))
    mail.text = "\n\n".join(text.strip("\n") for text in texts if text.strip())
    mail.html_text = "\n\n".join(text.strip("\n") for text in html_texts if text.strip())


def _walk_parts(message: Message) -> Iterator[tuple[Message, bool]]:
    """Yield (part, is multipart container) for every part, depth first in document order.

    The parts of a carried message belong to that message, so a
    message/rfc822 part is yielded as one part. The walk uses a stack
    rather than recursion.
    """
    stack = [message]
    while stack:
        part = stack.pop()
        is_container = part.is_multipart() and _content_type(part) not in MESSAGE_TYPES
        yield part, is_container
        if is_container:
            stack.extend(reversed(cast(list[Message], part.get_payload())))


def _read_part(
    mail: ParsedMail,
    part: Message,
    texts: list[str],
    html_texts: list[str],
    limits: _Limits,
    depth: int,
) -> None:
    content_type = _content_type(part)
    maintype = content_type.partition("/")[0]
    filename = _filename(part)
    is_attachment = _disposition(part) == "attachment"

    if content_type in MESSAGE_TYPES:
        _add_nested(mail, limits, depth, lambda: _carried_message(part, limits, depth + 1))
    elif content_type in OUTLOOK_TYPES or (filename.endswith(".msg") and maintype != "text"):
        data = _payload_bytes(part)
        _add_nested(mail, limits, depth, lambda: _parse_outlook(data, limits, depth + 1))
    elif filename.endswith(".eml") and maintype == "application":
        data = _payload_bytes(part)
        _add_nested(mail, limits, depth, lambda: _parse_rfc5322(data, limits, depth + 1))
    elif content_type in TNEF_TYPES or filename == "winmail.dat":
        text, html_text = _read_tnef(mail, _payload_bytes(part), limits, depth)
        texts.append(text)
        html_texts.append(html_text)
    elif is_attachment:
        return
    elif content_type == "text/plain":
        texts.append(_part_text(part))
    elif content_type == "text/html":
        html_texts.append(_html_text(mail, _part_html(part), limits))
    elif maintype == "multipart":
        # A multipart part without a usable boundary arrives as one string,
        # which still contains whatever the sender wrote.
        mail.defects.append(f"{content_type} part without parts read as plain text")
        texts.append(_part_text(part))


def _parts_skipped(count: int, what: str = "MIME parts") -> str:
    return f"{count} {what} not read: at most {MAX_PARTS} parts of one mail are read"


def _add_nested(mail: ParsedMail, limits: _Limits, depth: int, parse: Callable[[], ParsedMail]) -> None:
    if depth + 1 > limits.max_depth:
        mail.defects.append(f"nested message at depth {depth + 1} not parsed: max_depth is {limits.max_depth}")
        return
    mail.nested.append(parse())


def _html_text(mail: ParsedMail, html: str, limits: _Limits) -> str:
    """Return the text of one HTML body, noting a defect when it is longer than max_html_chars."""
    if len(html) > limits.max_html_chars:
        mail.defects.append(
            f"HTML body of {len(html)} characters read up to {limits.max_html_chars}: "
            f"max_html_chars is {limits.max_html_chars}"
        )
    if limits.last_html is not None and limits.last_html[0] == html:
        return limits.last_html[1]
    text = html_to_text(html, max_chars=limits.max_html_chars)
    limits.last_html = (html, text)
    return text


def _carried_message(part: Message, limits: _Limits, depth: int) -> ParsedMail:
    payload = part.get_payload()
    if not isinstance(payload, list) or not payload:
        return _parse_rfc5322(_payload_bytes(part), limits, depth)

    inner = payload[0]
    if not isinstance(inner, Message):
        return _parse_rfc5322(_payload_bytes(part), limits, depth)
    # RFC 2046 section 5.2.1 allows only 7bit, 8bit or binary here, but some
    # senders base64-encode the carried message anyway. The parser then
    # returns a message without headers whose body is the base64 text.
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64" and not inner.keys():
        encoded = inner.get_payload()
        if isinstance(encoded, str):
            return _parse_rfc5322(_decode_base64_leniently(encoded), limits, depth)

    mail = ParsedMail()
    _fill_from_message(mail, inner, limits, depth)
    return mail


def _decode_base64_leniently(text: str) -> bytes:
    """Decode base64, dropping characters outside the alphabet and fixing the padding."""
    kept = re.sub(r"[^A-Za-z0-9+/]", "", text)
    if len(kept) % 4 == 1:
        kept = kept[:-1]
    return base64.b64decode(kept + "=" * (-len(kept) % 4))


# An "=" next to another "=", except the last "=" of a run when it starts an
# escaped byte. Valid quoted-printable never has "==", because each "=" starts
# an escaped byte ("=3D") or a soft line break.
_UNENCODED_EQUALS = re.compile(rb"=(?==)|(?<==)=(?![0-9A-Fa-f]{2})")


def _payload_bytes(part: Message) -> bytes:
    unencoded = _decode_unencoded_equals(part)
    if unencoded is not None:
        return unencoded
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def _decode_unencoded_equals(part: Message) -> bytes | None:
    """Decode a quoted-printable payload that contains "==", keeping each of those "=" signs.

    Senders who paste a tracking code into a quoted-printable body without
    encoding it leave its padding as "==", which binascii.a2b_qp (used by the
    email package) decodes to a single "=". Returns None for any other payload,
    which the email package then decodes as usual.
    """
    # The same test of the header as Message.get_payload(decode=True).
    if str(part.get("content-transfer-encoding", "")).lower() != "quoted-printable":
        return None
    raw = part.get_payload()
    if not isinstance(raw, str) or "==" not in raw:
        return None
    try:
        data = raw.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return binascii.a2b_qp(_UNENCODED_EQUALS.sub(b"=3D", data))


def _part_text(part: Message) -> str:
    return _clean_body(_decode_bytes(_payload_bytes(part), _declared_charset(part)))


def _part_html(part: Message) -> str:
    data = _payload_bytes(part)
    charset = _declared_charset(part) or _html_meta_charset(data)
    return _clean_body(_decode_bytes(data, charset))


def _content_type(part: Message) -> str:
    """Return the lower-cased media type, with the defaults of RFC 2045 section 5.2.

    The type is cut from the raw header because asking the email package
    parses the whole header again on every call, which is most of the
    time spent on a message with thousands of parts.
    """
    values = _raw_headers(part, "content-type")
    if not values:
        return part.get_default_type()
    media_type = values[0].split(";", 1)[0].strip().lower()
    maintype, _, subtype = media_type.partition("/")
    if not maintype or not subtype or "/" in subtype or " " in media_type:
        return "text/plain"
    return media_type


# The email package parses these headers on request and can raise on
# malformed parameters; a part without them is read as inline and unnamed.


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _filename(part: Message) -> str:
    # get_filename reads only the filename parameter of Content-Disposition
    # and the name parameter of Content-Type, RFC 2231 forms such as
    # "filename*0*" included. Every one of them contains "name", so a part
    # whose two headers lack that word has no file name, and the costly
    # parameter parse is skipped.
    for header in ("content-disposition", "content-type"):
        value = part.get(header)
        if value is not None and (not isinstance(value, str) or "name" in value.lower()):
            break
    else:
        return ""
    try:
        return _clean(part.get_filename() or "").strip().lower()
    except Exception:
        return ""


def _declared_charset(part: Message) -> str | None:
    value = part.get("content-type")
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and _SIMPLE_CONTENT_TYPE.fullmatch(value):
        # The value that get_content_charset returns for these headers,
        # without its general parameter parse.
        for name, parameter in _SIMPLE_PARAMETER.findall(value):
            if name.lower() == "charset":
                return unquote(parameter).lower()
        return None
    try:
        return part.get_content_charset()
    except Exception:
        return None


# --- TNEF (winmail.dat) -------------------------------------------------


def _read_tnef(mail: ParsedMail, data: bytes, limits: _Limits, depth: int) -> tuple[str, str]:
    """Read a TNEF stream into `mail` and return its plain text and HTML text.

    The stream's defects and attached messages go into `mail`, and so does
    its subject when `mail` has none.
    """
    tnef = read_tnef(data)
    mail.defects.extend(f"TNEF part: {defect}" for defect in tnef.defects)
    if not mail.subject:
        mail.subject = _clean(tnef.subject[:MAX_HEADER_CHARS])
    text, html = _tnef_bodies(tnef)
    html_text = _html_text(mail, _clean_body(html), limits) if html else ""

    for index, attachment in enumerate(tnef.attachments):
        if limits.parts_left <= 0:
            mail.defects.append(_parts_skipped(len(tnef.attachments) - index, "TNEF attachments"))
            break
        limits.parts_left -= 1
        name = _clean(attachment.name).strip().lower()
        content, embedded = attachment.data, attachment.embedded
        if embedded is not None:
            _add_nested(mail, limits, depth, lambda: _parse_tnef(embedded, limits, depth + 1))
        elif name.endswith(".msg") or attachment.mime_type in OUTLOOK_TYPES:
            _add_nested(mail, limits, depth, lambda: _parse_outlook(content, limits, depth + 1))
        elif name.endswith(".eml") or attachment.mime_type in MESSAGE_TYPES:
            _add_nested(mail, limits, depth, lambda: _parse_rfc5322(content, limits, depth + 1))
    return _clean_body(text), html_text


def _tnef_bodies(tnef: TnefMessage) -> tuple[str, str]:
    """Return the plain body and the HTML body, reading the RTF body for a missing one as `_outlook_bodies` does."""
    text = tnef.text
    html = _decode_bytes(tnef.html, tnef.html_charset or _html_meta_charset(tnef.html)) if tnef.html else ""
    if tnef.rtf and not (text and html):
        is_html, content = rtf_body_content(tnef.rtf)
        if is_html and not html:
            html = content
        elif not is_html and not text:
            text = content
    return text, html


def _parse_tnef(raw: bytes, limits: _Limits, depth: int) -> ParsedMail:
    """Parse a message attached inside a TNEF stream, which is a TNEF stream of its own."""
    # NOTE: its sender, recipients and date are not read, so only its
    # subject, bodies and attached messages reach the later stages.
    mail = ParsedMail()
    try:
        mail.text, mail.html_text = _read_tnef(mail, raw, limits, depth)
    except Exception as exc:
        # read_tnef does not raise, so this is a bug here; the fields read so far are kept.
        log.exception("Parsing a message attached in TNEF failed, keeping what was read")
        mail.defects.append(f"parse stopped early: {_describe(exc)}")
    return mail


# --- Outlook .msg -------------------------------------------------------


def _parse_outlook(raw: bytes, limits: _Limits, depth: int) -> ParsedMail:
    mail = ParsedMail()
    # olefile takes bytes shorter than MINIMAL_OLEFILE_SIZE as a file name,
    # so a short attachment must never reach it.
    if len(raw) < olefile.MINIMAL_OLEFILE_SIZE or not raw.startswith(olefile.MAGIC):
        mail.defects.append("not an Outlook .msg file: no OLE2 signature")
        return mail

    with _QUIET_EXTRACT_MSG:
        try:
            outlook = _open_outlook(raw)
        except Exception as exc:
            # extract-msg and olefile raise many kinds of errors for corrupt
            # files, and all of them mean the same here.
            mail.defects.append(f"Outlook .msg file unreadable: {_describe(exc)}")
            return mail
        try:
            _fill_from_outlook(mail, outlook, limits, depth)
        except Exception as exc:
            # Last resort, as in _parse_rfc5322.
            log.exception("Parsing a .msg file failed, keeping what was read; Message-ID %s", mail.message_id)
            mail.defects.append(f"parse stopped early: {_describe(exc)}")
        finally:
            outlook.close()
    if is_unreadable(mail) and not mail.defects:
        # extract-msg skips what it cannot read, so a truncated file opens
        # and yields nothing.
        mail.defects.append(f"Outlook .msg file of {len(raw)} bytes holds no readable message: truncated or corrupt")
    return mail


def _open_outlook(raw: bytes) -> MSGFile:
    """Open an Outlook file, reopening an ANSI file in the code page of its RTF body.

    ANSI (non-Unicode) files should name the code page of their strings in
    PR_MESSAGE_CODEPAGE. Without it extract-msg assumes ISO-8859-15, which
    garbles, say, Japanese. The RTF body that Outlook writes next to the
    strings names the same Windows code page in its \\ansicpg word.
    """
    options = {"strict": False, "delayAttachments": True, "errorBehavior": ErrorBehavior.SUPPRESS_ALL}
    outlook = extract_msg.openMsg(raw, **options)
    try:
        encoding = _ansi_encoding(outlook)
    except Exception:
        outlook.close()
        raise
    if encoding is None:
        return outlook

    outlook.close()
    return extract_msg.openMsg(raw, overrideEncoding=encoding, **options)


def _ansi_encoding(outlook: MSGFile) -> str | None:
    """Return the codec for the strings of an ANSI file that does not name one, else None."""
    if outlook.areStringsUnicode or "3FFD0003" in outlook.props:
        return None
    match = _RTF_CODE_PAGE.search((getattr(outlook, "rtfBody", None) or b"")[:1024])
    return _rtf_codec(int(match.group(1))) if match else None


def _fill_from_outlook(mail: ParsedMail, outlook: MSGFile, limits: _Limits, depth: int) -> None:
    headers = _read_field(mail, "transport headers", lambda: _transport_headers(outlook), None)
    if headers is not None:
        _fill_headers(mail, headers)
    _fill_from_properties(mail, outlook)

    no_bodies: tuple[str | None, str | None] = (None, None)
    text, html = _read_field(mail, "message body", lambda: _outlook_bodies(outlook), no_bodies)
    mail.text = _clean_body(text or "").strip("\n")
    if html:
        mail.html_text = _html_text(mail, _clean_body(html), limits)
    _read_field(mail, "attachment list", lambda: _add_outlook_attachments(mail, outlook, limits, depth), None)


def _transport_headers(outlook: MSGFile) -> Message | None:
    """Parse the stored Internet headers, which only received mail has."""
    text = outlook.getStringStream("__substg1.0_007D")
    if not text:
        return None
    if text.startswith(_OUTLOOK_HEADER_PREFIX):
        text = text[len(_OUTLOOK_HEADER_PREFIX) :].lstrip()
    return HeaderParser(policy=policy.default).parsestr(text, headersonly=True)


def _fill_from_properties(mail: ParsedMail, outlook: MSGFile) -> None:
    """Fill the fields the transport headers did not provide from MAPI properties."""
    if not mail.subject:
        mail.subject = _read_field(mail, "subject property", lambda: _string_property(outlook, "0037"), "")
    if mail.sender is None:
        mail.sender = _read_field(mail, "sender property", lambda: _outlook_sender(outlook), None)
    if not mail.to and not mail.cc:
        mail.to = _read_field(mail, "To recipients", lambda: _outlook_recipients(outlook, RecipientType.TO), [])
        mail.cc = _read_field(mail, "Cc recipients", lambda: _outlook_recipients(outlook, RecipientType.CC), [])
    if mail.date is None:
        mail.date = _read_field(mail, "date property", lambda: _outlook_date(outlook), None)
    if mail.message_id is None:
        mail.message_id = _read_field(mail, "Message-ID property", lambda: _id_property(mail, outlook, "1035"), None)
    if mail.in_reply_to is None:
        mail.in_reply_to = _read_field(
            mail, "In-Reply-To property", lambda: _id_property(mail, outlook, "1042"), None
        )
    if not mail.references:
        mail.references = _read_field(
            mail, "References property", lambda: _reference_ids(mail, _string_property(outlook, "1039")), []
        )
    if mail.thread_index is None:
        mail.thread_index = _read_field(mail, "conversation index", lambda: _conversation_index(outlook), None)


def _string_property(outlook: MSGFile, property_id: str) -> str:
    """Return the string MAPI property with this 4-digit hex tag, or ""."""
    return _clean(outlook.getStringStream(f"__substg1.0_{property_id}") or "")


def _id_property(mail: ParsedMail, outlook: MSGFile, property_id: str) -> str | None:
    return _fit_id(mail, f"property {property_id}", _normalise_id(_string_property(outlook, property_id)))


def _outlook_sender(outlook: MSGFile) -> Address | None:
    # PR_SENDER_SMTP_ADDRESS comes first, because PR_SENDER_EMAIL_ADDRESS
    # contains an Exchange X.500 name instead of an address for internal
    # senders. The "sent representing" pair names the mailbox a delegate sent for.
    name = _string_property(outlook, "0C1A") or _string_property(outlook, "0042")
    for property_id in ("5D01", "0C1F", "5D02", "0065"):
        address = mailbox_address(_string_property(outlook, property_id), name)
        if address is not None:
            return address
    return None


def _outlook_recipients(outlook: MSGFile, kind: RecipientType) -> list[Address]:
    result = []
    for recipient in getattr(outlook, "recipients", None) or []:
        if recipient.type != kind:
            continue
        address = mailbox_address(_clean(recipient.email or ""), _clean(recipient.name or ""))
        if address is not None:
            result.append(address)
    return result


def _outlook_date(outlook: MSGFile) -> datetime | None:
    value = getattr(outlook, "date", None) or getattr(outlook, "receivedTime", None)
    if not isinstance(value, datetime):
        return None
    return _as_utc(value)


def _conversation_index(outlook: MSGFile) -> str | None:
    data = outlook.getStream("__substg1.0_00710102")
    return base64.b64encode(data).decode("ascii") if data else None


def _outlook_bodies(outlook: MSGFile) -> tuple[str | None, str | None]:
    """Return the plain body and the HTML body, each None when the file has none.

    Outlook often stores the HTML only inside the compressed RTF body, and
    some files carry nothing but RTF. The RTF body is read when one of the
    other two is missing.
    """
    text = outlook.getStringStream("__substg1.0_1000")
    data = outlook.getStream("__substg1.0_10130102")
    html = _decode_bytes(data, _html_meta_charset(data)) if data else None
    if text is not None and html is not None:
        return text, html

    rtf = getattr(outlook, "rtfBody", None)
    if rtf:
        is_html, content = rtf_body_content(rtf)
        if is_html and html is None:
            html = content
        elif not is_html and text is None:
            text = content
    return text, html


def _add_outlook_attachments(mail: ParsedMail, outlook: MSGFile, limits: _Limits, depth: int) -> None:
    attachments = getattr(outlook, "attachments", None) or []
    for index, attachment in enumerate(attachments):
        if limits.parts_left <= 0:
            mail.defects.append(_parts_skipped(len(attachments) - index, "attachments"))
            return
        limits.parts_left -= 1
        try:
            _read_outlook_attachment(mail, attachment, limits, depth)
        except Exception as exc:
            # One broken attachment must not cost the others.
            mail.defects.append(f"attachment unreadable: {_describe(exc)}")


def _read_outlook_attachment(mail: ParsedMail, attachment: object, limits: _Limits, depth: int) -> None:
    data = getattr(attachment, "data", None)
    if getattr(attachment, "type", None) == AttachmentType.MSG and isinstance(data, MSGFile):
        # An embedded message shares its parent's OLE file, which the
        # parent closes.
        embedded = data
        _add_nested(mail, limits, depth, lambda: _mail_from_embedded(embedded, limits, depth + 1))
        return
    if not isinstance(data, bytes):
        return

    name = _clean(getattr(attachment, "longFilename", None) or getattr(attachment, "name", None) or "").lower()
    mimetype = (getattr(attachment, "mimetype", None) or "").lower()
    if name.endswith(".msg") or mimetype in OUTLOOK_TYPES:
        _add_nested(mail, limits, depth, lambda: _parse_outlook(data, limits, depth + 1))
    elif name.endswith(".eml") or mimetype in MESSAGE_TYPES:
        _add_nested(mail, limits, depth, lambda: _parse_rfc5322(data, limits, depth + 1))


def _mail_from_embedded(outlook: MSGFile, limits: _Limits, depth: int) -> ParsedMail:
    mail = ParsedMail()
    try:
        _fill_from_outlook(mail, outlook, limits, depth)
    except Exception as exc:
        mail.defects.append(f"embedded Outlook message unreadable: {_describe(exc)}")
    return mail


class _QuietExtractMsg:
    """Quiet extract-msg's logging while at least one parse runs.

    extract-msg and its helpers log every property they miss at INFO, so
    their loggers go up to WARNING. The warnings about a missing code page
    and about overriding it are dropped as well, because `_open_outlook`
    supplies the code page. A count shared by all threads restores the
    old levels when the last parse leaves.
    """

    LOGGER_NAMES = ("extract_msg", "RTFDE", "olefile")
    CODE_PAGE_LOGGER = "extract_msg.msg_classes.msg"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved_levels: dict[str, int] = {}

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                for name in self.LOGGER_NAMES:
                    logger = logging.getLogger(name)
                    self._saved_levels[name] = logger.level
                    if logger.getEffectiveLevel() < logging.WARNING:
                        logger.setLevel(logging.WARNING)
                logging.getLogger(self.CODE_PAGE_LOGGER).addFilter(_drop_code_page_warnings)
            self._users += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name, level in self._saved_levels.items():
                    logging.getLogger(name).setLevel(level)
                logging.getLogger(self.CODE_PAGE_LOGGER).removeFilter(_drop_code_page_warnings)


def _drop_code_page_warnings(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(("Encoding property not found", "You have chosen to override the string encoding"))


_QUIET_EXTRACT_MSG = _QuietExtractMsg()


# --- RTF bodies ---------------------------------------------------------

# Groups whose text is never shown: tables, pictures, document properties.
# Groups that start with "\*" are skipped too unless they are "htmltag".
_RTF_HIDDEN_DESTINATIONS = frozenset(
    {
        b"fonttbl", b"colortbl", b"stylesheet", b"info", b"pict", b"object",
        b"objdata", b"listtable", b"listoverridetable", b"revtbl", b"rsidtbl",
        b"filetbl", b"header", b"headerl", b"headerr", b"headerf", b"footer",
        b"footerl", b"footerr", b"footerf", b"fldinst", b"xmlnstbl",
        b"pgdsctbl", b"themedata", b"colorschememapping", b"latentstyles",
        b"datastore", b"nonshppict", b"shpinst",
    }
)  # fmt: skip

_RTF_WORD_TEXT = {b"par": "\n", b"line": "\n", b"tab": "\t", b"emdash": "\u2014", b"endash": "\u2013",
                  b"bullet": "\u2022", b"lquote": "\u2018", b"rquote": "\u2019",
                  b"ldblquote": "\u201c", b"rdblquote": "\u201d"}  # fmt: skip
_RTF_SYMBOL_TEXT = {b"\\": "\\", b"{": "{", b"}": "}", b"~": "\xa0", b"_": "-", b"\n": "\n", b"\r": "\n"}

# Windows code page of each \fcharset value in the RTF 1.9.1 specification.
# The values 0 (ANSI) and 1 (default) mean the document's \ansicpg.
_RTF_CHARSET_CODE_PAGES = {
    77: 10000, 128: 932, 129: 949, 130: 1361, 134: 936, 136: 950, 161: 1253, 162: 1254,
    163: 1258, 177: 1255, 178: 1256, 186: 1257, 204: 1251, 222: 874, 238: 1250, 255: 437,
}  # fmt: skip

_RTF_CODE_PAGE = re.compile(rb"\\ansicpg(\d{1,5})")

_RTF_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?"  # control word with its parameter and delimiter
    rb"|\\'([0-9a-fA-F]{2})"  # one byte in the document's code page
    rb"|\\([^a-zA-Z'])"  # control symbol
    rb"|([{}])"
    rb"|([^\\{}\r\n]+)"  # text
    rb"|[\r\n]+",  # line breaks in RTF source carry no meaning
    re.DOTALL,
)


def rtf_body_content(rtf: bytes) -> tuple[bool, str]:
    """Return (is_html, content) for an RTF message body, in one linear pass.

    Outlook wraps an HTML body in RTF (marked "\\fromhtml1") as described in
    Microsoft's [MS-OXRTFEX]: the HTML markup sits in "{\\*\\htmltag ...}"
    groups, and text between "\\htmlrtf" and "\\htmlrtf0" exists only for
    RTF readers. The same rules give the visible text of a plain RTF body.
    extract-msg's own de-encapsulation (RTFDE, a full grammar parser) was
    more than 100 times slower on the Outlook sample files.
    """
    reader = _RtfReader()
    position = 0
    while position < len(rtf):
        token = _RTF_TOKEN.match(rtf, position)
        if token is None:
            position += 1
            continue
        position = reader.feed(token, token.end())
    return reader.result()


class _RtfReader:
    """State of `rtf_body_content`: one RTF token at a time, group state on a stack."""

    def __init__(self) -> None:
        self.document_codec = "cp1252"
        self.is_html = False
        self.pieces: list[str] = []
        # \'hh bytes are decoded together, because a character of a
        # multi-byte code page such as Shift-JIS spans two of them.
        self.pending = bytearray()
        self.font_codecs: dict[int, str] = {}
        self.font_being_defined: int | None = None
        self.stack: list[_RtfGroup] = []
        self.group = _RtfGroup()
        self.group_start = False
        self.starred = False
        self.skip_next = 0  # fallback characters still to drop after \uN

    def result(self) -> tuple[bool, str]:
        self.flush()
        # \uN gives UTF-16 code units, and this joins their surrogate pairs.
        content = "".join(self.pieces).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return self.is_html, content

    def flush(self) -> None:
        if self.pending:
            self.pieces.append(self.pending.decode(self.group.codec or self.document_codec, "replace"))
            self.pending.clear()

    def feed(self, token: re.Match[bytes], position: int) -> int:
        """Handle one token and return where the next token starts."""
        word, parameter, hex_byte, symbol, brace, text = token.groups()
        if hex_byte is None:
            self.flush()

        if brace is not None:
            self._brace(brace)
        elif symbol == b"*" and self.group_start:
            self.starred = True
        elif word is not None:
            value = int(parameter) if parameter else None
            if word == b"bin" and value is not None and value > 0:
                # Raw binary data follows, which may contain any byte.
                return position + value
            self._control_word(word, value)
        else:
            self.group_start = False
            if self.group.shows_text():
                self._text(hex_byte, symbol, text)
        return position

    def _brace(self, brace: bytes) -> None:
        if brace == b"{":
            self.stack.append(self.group)
            self.group = self.group.copy()
            self.group_start, self.starred = True, False
        else:
            if self.stack:
                self.group = self.stack.pop()
            self.group_start = self.starred = False

    def _control_word(self, word: bytes, value: int | None) -> None:
        group = self.group
        if self.group_start:
            self.group_start = False
            if self.starred and word == b"htmltag":
                group.in_htmltag = True
            elif self.starred or word in _RTF_HIDDEN_DESTINATIONS:
                group.hidden = True
                group.in_font_table = word == b"fonttbl"

        if group.in_font_table:
            self._font_table_word(word, value)
            return
        if group.hidden:
            return

        if word == b"htmlrtf":
            group.htmlrtf = value != 0
        elif word == b"fromhtml" and value != 0:
            self.is_html = True
        elif word == b"ansicpg" and value is not None:
            self.document_codec = _rtf_codec(value) or self.document_codec
        elif word == b"f" and value is not None:
            group.codec = self.font_codecs.get(value)
        elif word == b"uc" and value is not None:
            group.unicode_skip = max(0, value)
        elif word == b"u" and value is not None and group.shows_text():
            self.pieces.append(chr(value % 0x10000))
            self.skip_next = group.unicode_skip
        elif word in _RTF_WORD_TEXT and group.shows_text():
            self.pieces.append(_RTF_WORD_TEXT[word])

    def _font_table_word(self, word: bytes, value: int | None) -> None:
        if word == b"f":
            self.font_being_defined = value
        elif word == b"fcharset" and value is not None and self.font_being_defined is not None:
            codec = _rtf_codec(_RTF_CHARSET_CODE_PAGES.get(value, 0))
            if codec is not None:
                self.font_codecs[self.font_being_defined] = codec

    def _text(self, hex_byte: bytes | None, symbol: bytes | None, text: bytes | None) -> None:
        if hex_byte is not None:
            if self.skip_next:
                self.skip_next -= 1
            else:
                self.pending.append(int(hex_byte, 16))
        elif symbol is not None:
            if symbol in _RTF_SYMBOL_TEXT:
                self.pieces.append(_RTF_SYMBOL_TEXT[symbol])
        elif text is not None:
            if self.skip_next:
                dropped = min(self.skip_next, len(text))
                text = text[dropped:]
                self.skip_next -= dropped
            if text:
                self.pieces.append(text.decode(self.group.codec or self.document_codec, "replace"))


@dataclass
class _RtfGroup:
    """Properties that an RTF group inherits from its parent and loses at its "}"."""

    hidden: bool = False
    in_font_table: bool = False
    htmlrtf: bool = False
    in_htmltag: bool = False
    unicode_skip: int = 1
    #: Code page of the current font, when its \fcharset names one.
    codec: str | None = None

    def copy(self) -> _RtfGroup:
        return dataclasses.replace(self)

    def shows_text(self) -> bool:
        return not self.hidden and (self.in_htmltag or not self.htmlrtf)


def _rtf_codec(code_page: int) -> str | None:
    if code_page <= 0:
        return None
    name = f"cp{code_page}"
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


# --- text decoding ------------------------------------------------------


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode `data` by its declared charset, else as UTF-8, else as Latin-1; never raise.

    A declared US-ASCII is often wrong about 8-bit text, so it counts as no
    declaration. A declared charset that does not fit the bytes is tried
    after UTF-8, with undecodable bytes replaced.
    """
    declared = (charset or "").strip().strip("\"'").lower()
    if declared in ("us-ascii", "ascii", "ansi_x3.4-1968"):
        declared = ""

    if declared:
        decoded = _try_decode(data, declared, "strict")
        if decoded is not None:
            return decoded
    decoded = _try_decode(data, "utf-8", "strict")
    if decoded is not None:
        return decoded
    if declared:
        decoded = _try_decode(data, declared, "replace")
        if decoded is not None:
            return decoded
    return data.decode("latin-1")


def _try_decode(data: bytes, charset: str, errors: str) -> str | None:
    try:
        if codecs.lookup(charset).name in _NOT_MAIL_CODECS:
            return None
        return data.decode(charset, errors)
    except (LookupError, ValueError, TypeError):
        # LookupError: unknown charset, or a bytes-to-bytes codec such as
        # "base64". ValueError covers UnicodeDecodeError and odd names.
        return None


# Python codecs that no mail charset names, so a mail that declares one is
# treated as declaring none. punycode decodes in quadratic time, and the
# escape codecs turn the text "\\ud800" into a lone surrogate.
_NOT_MAIL_CODECS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})


def _html_meta_charset(data: bytes) -> str | None:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


def _repair_8bit(text: str) -> str:
    """Re-decode raw 8-bit bytes that the email package kept as surrogate escapes."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
    return _decode_bytes(data, None)


def _clean(text: str) -> str:
    # PostgreSQL text columns reject NUL, and no mail means one.
    return _repair_8bit(text).replace("\x00", "")


def _clean_body(text: str) -> str:
    text = _clean(text)
    # Most bodies have only "\n" line breaks, which need no substitution.
    return _LINE_BREAK.sub("\n", text) if "\r" in text else text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _shorten(text: str, length: int = 100) -> str:
    """Return `text`, cut to about `length` characters for a defect note."""
    return text if len(text) <= length else text[:length] + "…"
