"""Removing one email address from stored mail: its text fields and its raw MIME.

Every mention of the address becomes PLACEHOLDER, an address in the
reserved .invalid domain (RFC 2606), so that headers stay valid.

Raw MIME is cleaned in up to two steps. The first replaces the address in
the bytes as stored, which covers headers and bodies sent as 7bit, 8bit or
quoted-printable. When the address is still there after decoding, for
example in a base64 body, an encoded header or an attached message, the
second step rewrites the decoded parts one by one. A raw copy that still
mentions the address after both steps, or that syncd cannot rewrite (an
Outlook .msg, whose streams have fixed sizes), is dropped.
"""

from __future__ import annotations

import base64
import enum
import quopri
import re
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

from syncd.mail import ParsedMail
from syncd.parse import parse_item

PLACEHOLDER = "removed@address.invalid"

# An address ends where the characters that may belong to it end, so that
# removing ola@fjord.example leaves ola@fjord.example.com and kari.ola@fjord.example alone.
_BEFORE = r"(?<![A-Za-z0-9._%+-])"
_AFTER = r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"

#: Policy for writing a rewritten mail back: compat32 as parsed, with long headers left unfolded.
_GENERATOR_POLICY = policy.compat32.clone(max_line_length=0)


class RawOutcome(enum.StrEnum):
    """Result of cleaning a raw copy."""

    UNCHANGED = "unchanged"
    REWRITTEN = "rewritten"
    DROPPED = "dropped"


def text_pattern(email: str) -> re.Pattern[str]:
    """Return a case-insensitive pattern that finds `email` as a whole address in text."""
    return re.compile(_BEFORE + re.escape(email) + _AFTER, re.IGNORECASE)


def scrub_text(text: str, email: str) -> str:
    """Return `text` with every mention of `email` replaced by PLACEHOLDER."""
    return text_pattern(email).sub(PLACEHOLDER, text)


def scrub_raw(raw: bytes, raw_format: str, email: str) -> tuple[bytes | None, RawOutcome]:
    """Return the raw copy without `email`, or None when it cannot be cleaned, and what was done."""
    patterns = _byte_patterns(email)
    if raw_format != "eml":
        if _mentions_in_bytes(raw, patterns) or _mentions_in_parsed(parse_item(raw, raw_format), email):
            return None, RawOutcome.DROPPED
        return raw, RawOutcome.UNCHANGED

    cleaned = _replace_in_bytes(raw, patterns)
    if _mentions_in_eml(cleaned, email):
        try:
            cleaned = _rewrite_parts(cleaned, email)
        except Exception:  # noqa: BLE001 - the email package documents no error set for broken mail
            # A mail the email package cannot write back loses its raw copy,
            # which keeps the address out of the store.
            return None, RawOutcome.DROPPED
        if _mentions_in_eml(cleaned, email):
            return None, RawOutcome.DROPPED
    if cleaned == raw:
        return raw, RawOutcome.UNCHANGED
    return cleaned, RawOutcome.REWRITTEN


def mentions_in_raw(raw: bytes, email: str) -> bool:
    """Return whether `email` appears in the bytes as stored, as ASCII or UTF-16 text.

    This is a quick look, without decoding the mail's parts.
    """
    return _mentions_in_bytes(raw, _byte_patterns(email))


def _byte_patterns(email: str) -> tuple[tuple[re.Pattern[bytes], bytes], ...]:
    # Outlook .msg files and UTF-16 text parts hold the address as UTF-16LE,
    # where each ASCII character is followed by a zero byte. IGNORECASE
    # folds the ASCII letters in either form.
    utf8 = re.compile(_BEFORE.encode() + re.escape(email.encode()) + _AFTER.encode(), re.IGNORECASE)
    utf16 = re.compile(
        rb"(?<![A-Za-z0-9._%+-]\x00)" + re.escape(email.encode("utf-16-le"))
        + rb"(?![A-Za-z0-9-]\x00|\.\x00[A-Za-z0-9]\x00)",
        re.IGNORECASE,
    )
    return ((utf8, PLACEHOLDER.encode()), (utf16, PLACEHOLDER.encode("utf-16-le")))


def _replace_in_bytes(data: bytes, patterns: tuple[tuple[re.Pattern[bytes], bytes], ...]) -> bytes:
    for pattern, replacement in patterns:
        data = pattern.sub(replacement, data)
    return data


def _mentions_in_bytes(data: bytes, patterns: tuple[tuple[re.Pattern[bytes], bytes], ...]) -> bool:
    return any(pattern.search(data) for pattern, _ in patterns)


def _mentions_in_eml(raw: bytes, email: str) -> bool:
    """Return whether `email` appears anywhere in the mail, its headers and parts decoded."""
    patterns = _byte_patterns(email)
    if _mentions_in_bytes(raw, patterns):
        return True
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    for part in message.walk():
        if any(text_pattern(email).search(_decoded_header(value)) for value in part.values()):
            return True
        payload = _leaf_payload(part)
        if payload is not None and _mentions_in_bytes(payload, patterns):
            return True
    # syncd's parser also reads HTML entities and attached .msg files.
    return _mentions_in_parsed(parse_item(raw, "eml"), email)


def _mentions_in_parsed(mail: ParsedMail, email: str) -> bool:
    pattern = text_pattern(email)
    fields = [mail.subject, mail.text, mail.html_text, *(address.email for address in mail.addresses())]
    if any(pattern.search(field) for field in fields):
        return True
    return any(_mentions_in_parsed(nested, email) for nested in mail.nested)


def _rewrite_parts(raw: bytes, email: str) -> bytes:
    """Replace `email` in every decoded header and leaf part, and write the mail back."""
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    for part in message.walk():
        _rewrite_headers(part, email)
        _rewrite_payload(part, email)
    return message.as_bytes(policy=_GENERATOR_POLICY)


def _rewrite_headers(part: Message, email: str) -> None:
    pattern = text_pattern(email)
    items = part.items()
    changed = {name.lower() for name, value in items if pattern.search(_decoded_header(value))}
    if not changed:
        return
    # Message has no way to replace the n-th header of a name, so every
    # header of a changed name is set again, in its original order.
    for name in changed:
        del part[name]
    for name, value in items:
        if name.lower() in changed:
            part[name] = pattern.sub(PLACEHOLDER, _decoded_header(value))


def _rewrite_payload(part: Message, email: str) -> None:
    payload = _leaf_payload(part)
    if payload is None:
        return
    cleaned = _replace_in_bytes(payload, _byte_patterns(email))
    if cleaned == payload:
        return

    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        part.set_payload(base64.encodebytes(cleaned).decode("ascii"))
    elif encoding == "quoted-printable":
        part.set_payload(quopri.encodestring(cleaned).decode("ascii"))
    else:
        part.set_payload(cleaned.decode("ascii", "surrogateescape"))


def _leaf_payload(part: Message) -> bytes | None:
    """Return the decoded bytes of a part that carries content, or None for a container."""
    if part.is_multipart():
        return None
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else None


def _decoded_header(value: object) -> str:
    text = str(value)
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        # A broken encoded word is kept as written, and the caller searches that text.
        return text
