"""Parse stage: turn the bytes of one mail (RFC 5322 or Outlook .msg) into a ParsedMail.

parse_message and parse_msg return a ParsedMail for any input and raise
no Exception subclass. Each header and each MIME part is read on its own,
so a broken one loses only itself, and `ParsedMail.defects` gets one note
for it. Messages carried inside the mail (message/rfc822 parts, attached
.msg files and messages inside TNEF parts) are parsed the same way into
`nested`, down to `max_depth` levels.

This module reads the MIME structure and parses the nested messages. The
headers are read by syncd.headers, the properties and bodies of Outlook
files by syncd.outlook, RTF bodies by syncd.rtf, TNEF streams by
syncd.tnef, and charsets are decoded by syncd.charset.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.header import Header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import Compat32
from email.utils import unquote
from typing import cast

import olefile
from extract_msg.enums import AttachmentType
from extract_msg.msg_classes import MSGFile

from syncd.charset import _clean, _clean_body, _decode_bytes, _describe, _html_meta_charset
from syncd.headers import MAX_ADDRESSES as MAX_ADDRESSES
from syncd.headers import MAX_HEADER_CHARS, _fill_headers, _raw_headers, _read_field
from syncd.headers import mailbox_address as mailbox_address
from syncd.html_text import html_to_text
from syncd.mail import ParsedMail
from syncd.outlook import (
    _QUIET_EXTRACT_MSG,
    _fill_from_properties,
    _open_outlook,
    _outlook_bodies,
    _transport_headers,
)
from syncd.rtf import rtf_body_content as rtf_body_content
from syncd.tnef import TnefMessage, read_tnef

log = logging.getLogger("syncd.parse")

DEFAULT_MAX_DEPTH = 8
DEFAULT_MAX_HTML_CHARS = 5_000_000

#: Maximum number of MIME parts (and Outlook attachments) read from one mail,
#: nested messages included. Each part costs a header parse and often an
#: HTML conversion, so a crafted mail with tens of thousands of tiny parts
#: would otherwise take tens of seconds. The parts after the limit are
#: skipped, and a defect note gives their count.
MAX_PARTS = 1000

MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
OUTLOOK_TYPES = frozenset({"application/vnd.ms-outlook", "application/x-msg"})
TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})

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
# The ASCII characters at which str.splitlines breaks a line.
_ASCII_LINE_BOUNDARY = re.compile(r"[\n\r\v\f\x1c-\x1e]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# The endings of the defect notes that _add_nested, _html_text, _fill_bodies,
# _add_outlook_attachments, _addresses and _bounded write when a limit stops them.
_LIMIT_NOTE = re.compile(
    r"not parsed: max_depth is \d+$|max_html_chars is \d+$|parts of one mail are read$"
    r"|addresses, the rest not read$|characters cut at \d+$|attributes of one TNEF stream are read$"
)


class _StructurePolicy(Compat32):
    """The email package's compat32 policy, with long header values cut when a Message method reads them.

    The MIME structure is parsed with compat32 because policy.default parses
    every header that the parser or a Message method reads through its
    header registry. On a mail with thousands of parts that takes ten times
    as long as the parse itself. The headers that syncd uses are read raw
    and decoded by syncd.headers, with policy.default's header
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
