"""Charset decoding of mail bytes to clean text, and the formatting of exceptions in defect notes.

Mail bodies and headers name a charset that is often missing or wrong, so
`_decode_bytes` tries the declared one, then UTF-8, then Latin-1, and never
raises. Raw 8-bit header bytes that the email package kept as surrogate
escapes are decoded the same way.
"""

from __future__ import annotations

import codecs
import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAK = re.compile(r"\r\n?|\n")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


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
