"""Mail headers: the Message-ID, subject, addresses, date, references and thread index of one message.

Each header is read on its own, so a broken one costs only itself and
adds one note to `ParsedMail.defects`. Addresses are split and parsed one
at a time, and the limits below bound the time a hostile header can take.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import TypeVar, cast

from syncd.charset import _LINE_BREAK, _clean, _decode_bytes, _describe, _repair_8bit, _shorten
from syncd.mail import Address, ParsedMail

#: Header values longer than this many characters are cut before the email
#: package parses them, because its header parsers take quadratic time in
#: the length of a value. RFC 5322 limits a line to 998 characters, and
#: folded headers of real mail stay far below this.
MAX_HEADER_CHARS = 16_384

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
