"""Detect stage: find every string shaped like a tracking code in a parsed mail.

A tracking code is 22 standard base64 characters followed by "==". Detect does
not know which codes exist. It returns candidates, and the resolve stage keeps
those found in the store. A candidate is `labelled` when one of
TRACKING_CODE_LABELS stands directly before it, because resolve reports a
labelled code that the store lacks as an unknown code.

Codes reach detect damaged by mail clients and users, so each text is scanned
in a detect view rather than as written. The view decodes HTML entities and
drops the HTML tags that can split a code (span, wbr, b, td and the like),
zero-width characters, soft hyphens and the quote markers ("> ", "> > ") that
start a line. Then it removes all white space, so a code wrapped over lines or
split by a client reads as one string. A text that still carries
quoted-printable (soft line breaks, "=3D") is also scanned in a second view
that decodes it first. A text with percent-encoded characters, as in links
("code=nXmr…%3D%3D"), is also scanned in a URL view that decodes them. In
that view a code must be a whole URL component, so the end of a longer
base64 value in a link is not taken for a code.

The 22nd character of a real code is one of A, Q, g or w, because its last
four bits are padding. Detect does not filter on that, so a mistyped code
still reaches resolve and, when labelled, is reported as unknown.
"""

from __future__ import annotations

import binascii
import html.entities
import logging
import re
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

from syncd.mail import CodeCandidate, Location, ParsedMail

log = logging.getLogger("syncd.detect")

#: Labels that mark the string after them as a tracking code. Matching ignores
#: letter case, white space, hyphens and a colon after the label, so this list
#: also covers "TRACKING CODE:", "Tracking-Code" (German) and "trackingcode".
TRACKING_CODE_LABELS: tuple[str, ...] = (
    "Tracking code",  # English, and the German loanword
    "Sporingskode",  # Norwegian and Danish
    "Spårningskod",  # Swedish
    "Verfolgungscode",  # German
)

#: Maximum number of candidates returned for one mail. Each candidate costs a
#: store lookup, so a hostile mail full of code-shaped strings must not get
#: thousands of them. Labelled candidates are kept before unlabelled ones.
MAX_CANDIDATES = 200

#: Base64 characters before the "==" padding of a code.
CODE_BODY_LENGTH = 22

_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")

# The "==" padding of a code: two equals signs straight after a base64
# character. The pattern starts with "=" rather than the lookbehind, so that
# the regex engine skips ahead to each "=" instead of trying every position.
_PADDING = re.compile(r"=(?<=[A-Za-z0-9+/]=)=")

# Numeric character references and named entities. The digit counts are bounded
# because html.unescape converts any number of digits with int(), which raises
# ValueError beyond 4,300 digits on Python 3.11.
# Named entities need their semicolon, so a code right after "&" stays intact.
_ENTITY = re.compile(
    r"&#([0-9]{1,7});?|&#[xX]([0-9A-Fa-f]{1,6});?|&([A-Za-z][A-Za-z0-9]{1,31});"
)

# Inline and table tags that can split a code in raw HTML pasted into text.
# The names are listed so that a code in angle brackets ("<nXmr…==>") is not
# taken for a tag.
_SPLITTING_TAGS = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "big", "br", "cite", "code", "del", "dfn",
        "div", "em", "font", "i", "ins", "kbd", "mark", "o:p", "p", "q", "s",
        "samp", "small", "span", "strike", "strong", "sub", "sup", "td", "th",
        "tr", "tt", "u", "var", "wbr",
    }
)  # fmt: skip

# Any tag with a name of up to 7 letters (and colons). The name is looked up
# in _SPLITTING_TAGS by _drop_splitting_tag, which costs far less than an
# alternation of the names on text full of "<". [^<>]* stops at the next
# "<", which keeps the match linear.
_SHORT_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z:]{0,6})(?:\s[^<>]*)?/?>")

# Soft hyphen, zero-width space, non-joiner and joiner, left-to-right and
# right-to-left marks, word joiner and zero-width no-break space (BOM).
_INVISIBLE_CHARS = "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE_CHARS))

# Quote markers at the start of the text and after a line break. The second
# pattern starts with "\n" rather than "^" in MULTILINE mode, so that the
# regex engine skips ahead to each line break instead of trying every position.
_LEADING_QUOTE_MARKERS = re.compile(r"[ \t]*>[ \t>]*")
_QUOTE_MARKERS_AFTER_BREAK = re.compile(r"\n[ \t]*>[ \t>]*")

# Signs that a text was not quoted-printable decoded: a soft line break or an
# escaped byte such as "=3D".
_QUOTED_PRINTABLE = re.compile(r"=(?:[ \t]*\n|[0-9A-Fa-f]{2})")

# RFC 2045 lets a transport add white space after the "=" of a soft line break.
_SOFT_BREAK_PADDING = re.compile(r"=[ \t]+(?=\n)")

# Leftovers of raw quoted-printable between a label and its code: a soft line
# break (a lone "=" once white space is gone) or an escaped space or tab.
_QUOTED_PRINTABLE_GAP = re.compile(r"=(?:20|09)?")

# A percent-encoded byte, also when a link wrapper encoded the URL again
# ("%253D" for "="). Only "%" starts a match, so a run of "25" is backtracked
# over once at most, and the pattern runs in linear time.
_PERCENT_ENCODED = re.compile(r"%(?:25)*([0-9A-Fa-f]{2})")

# Characters that a URL view decodes: the base64 alphabet and "=". Other
# escapes stay as written, so that a decoded "&", "?" or "%" cannot join or
# split URL components.
_PERCENT_DECODED_CHARS = _BASE64_CHARS | {"="}

_HYPHENS = dict.fromkeys(map(ord, "-\u2010\u2011\u2012\u2013\u2014"))

# Characters allowed between a label and its code besides white space.
_LABEL_SEPARATORS = ":\"'([<«“„‘"


def _label_key(text: str) -> str:
    return unicodedata.normalize("NFC", "".join(text.split()).translate(_HYPHENS)).casefold()


_LABEL_KEYS = tuple(_label_key(label) for label in TRACKING_CODE_LABELS)

# Enough room before a code for the longest label plus separators and
# quoted-printable leftovers.
_LABEL_WINDOW = max(map(len, _LABEL_KEYS)) + 24


def find_codes(mail: ParsedMail) -> list[CodeCandidate]:
    """Find tracking-code candidates in the subject, text and HTML text of `mail`.

    Messages nested in `mail`, at any depth, are searched too, and their
    candidates have location NESTED. Each code appears once, with the location
    where it was first seen, and is labelled if any occurrence was labelled.
    At most MAX_CANDIDATES are returned, in the order first seen.
    """
    found = _Candidates(MAX_CANDIDATES)
    found.add_text(mail.subject, Location.SUBJECT)
    found.add_text(mail.text, Location.TEXT)
    found.add_text(mail.html_text, Location.HTML)

    # Breadth first and without recursion, so deep nesting cannot exhaust the stack.
    pending = deque(mail.nested)
    while pending:
        nested = pending.popleft()
        for text in (nested.subject, nested.text, nested.html_text):
            found.add_text(text, Location.NESTED)
        pending.extend(nested.nested)

    candidates = found.result()
    if found.overflowed:
        log.warning(
            "message %s has more than %d tracking-code candidates, so only %d are looked up, "
            "labelled ones first",
            mail.message_id or "(no Message-ID)", MAX_CANDIDATES, MAX_CANDIDATES,
        )
    return candidates


def find_codes_in_text(text: str, location: Location) -> list[CodeCandidate]:
    """Find tracking-code candidates in one text, each reported at `location`.

    The rules of find_codes apply: one candidate per code, labelled if any
    occurrence was, at most MAX_CANDIDATES.
    """
    found = _Candidates(MAX_CANDIDATES)
    found.add_text(text, location)
    return found.result()


class _Candidates:
    """Candidates of one mail, deduplicated by code and capped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._by_code: dict[str, CodeCandidate] = {}
        self._labelled = 0
        #: True once a candidate was dropped because of the limit.
        self.overflowed = False

    def add_text(self, text: str, location: Location) -> None:
        for view, is_url_view in _detect_views(text):
            for code, labelled in _scan(view, is_url_view):
                self._add(code, labelled, location)

    def _add(self, code: str, labelled: bool, location: Location) -> None:
        seen = self._by_code.get(code)
        if seen is not None:
            if labelled and not seen.labelled:
                self._by_code[code] = replace(seen, labelled=True)
                self._labelled += 1
            return

        # Up to `limit` of each kind are kept while scanning, so that codes
        # seen later still win the final selection when they are labelled.
        unlabelled = len(self._by_code) - self._labelled
        if (self._labelled if labelled else unlabelled) >= self._limit:
            self.overflowed = True
            return

        self._by_code[code] = CodeCandidate(code=code, labelled=labelled, location=location)
        self._labelled += labelled

    def result(self) -> list[CodeCandidate]:
        candidates = list(self._by_code.values())
        if len(candidates) <= self._limit:
            return candidates

        self.overflowed = True
        labelled = [c.code for c in candidates if c.labelled][: self._limit]
        room = self._limit - len(labelled)
        unlabelled = [c.code for c in candidates if not c.labelled][:room]
        kept = set(labelled) | set(unlabelled)
        return [c for c in candidates if c.code in kept]


def _detect_views(text: str) -> Iterator[tuple[str, bool]]:
    """Yield (view, is_url_view) for each detect view of `text`.

    The views are: as written, then quoted-printable decoded if it applies,
    each followed by its URL view if it contains percent-encoded characters.
    """
    if not text:
        return
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    views = [_squeeze(text)]

    # Decoding quoted-printable breaks a code whose "==" ends a line, because
    # the second "=" then reads as a soft line break. That is why the view as
    # written is always scanned as well.
    if _QUOTED_PRINTABLE.search(text):
        unquoted = _drop_quote_markers(text)
        views.append(_squeeze(_decode_quoted_printable(unquoted)))

    for view in views:
        yield view, False
        if "%" in view:
            decoded = _PERCENT_ENCODED.sub(_decode_percent, view)
            if decoded != view:
                yield decoded, True


def _squeeze(text: str) -> str:
    # Each step runs only when the text contains the character that it
    # acts on. The checks are substring searches, which cost far less than
    # a pattern that finds nothing, and most texts need only some of the steps.
    if "&" in text:
        text = _ENTITY.sub(_decode_entity, text)
    if "<" in text:
        text = _SHORT_TAG.sub(_drop_splitting_tag, text)
    if not text.isascii() and any(char in text for char in _INVISIBLE_CHARS):
        text = text.translate(_INVISIBLE)
    if ">" in text:
        text = _drop_quote_markers(text)
    return "".join(text.split())


def _drop_splitting_tag(match: re.Match[str]) -> str:
    return "" if match.group(1).lower() in _SPLITTING_TAGS else match.group()


def _drop_quote_markers(text: str) -> str:
    """Remove the quote markers ("> ", "> > ") that start a line."""
    leading = _LEADING_QUOTE_MARKERS.match(text)
    if leading is not None:
        text = text[leading.end() :]
    return _QUOTE_MARKERS_AFTER_BREAK.sub("\n", text)


def _decode_entity(match: re.Match[str]) -> str:
    decimal, hexadecimal, name = match.groups()
    if name is not None:
        return html.entities.html5.get(name + ";", match.group())

    number = int(decimal) if decimal is not None else int(hexadecimal, 16)
    if number == 0 or number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
        return match.group()
    return chr(number)


def _decode_percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _PERCENT_DECODED_CHARS else match.group()


def _decode_quoted_printable(text: str) -> str:
    text = _SOFT_BREAK_PADDING.sub("=", text)
    raw = binascii.a2b_qp(text.encode("utf-8", "replace"))
    # NOTE: escaped bytes are read as UTF-8. A raw Latin-1 "=E5" becomes U+FFFD,
    # which only matters for a Swedish label written that way.
    return raw.decode("utf-8", "replace")


def _scan(view: str, is_url_view: bool) -> Iterator[tuple[str, bool]]:
    """Yield (code, labelled) for each "==" in `view` that ends a code-shaped string."""
    for padding in _PADDING.finditer(view):
        found = _code_body_before(view, padding.start(), is_url_view)
        if found is None:
            continue
        start, body = found
        yield body + "==", _has_label(view, start)


def _code_body_before(view: str, end: int, is_url_view: bool) -> tuple[int, str] | None:
    """Return the start and text of the 22 base64 characters before `end`, or None.

    Outside a URL view, a lone "=" between base64 characters is skipped,
    because it is what remains of a quoted-printable soft line break once
    white space is gone. There a longer base64 run yields its last 22
    characters, since removing white space joins a code to the word before it.
    In a URL view, where "=" separates a parameter from its value, the 22
    characters must follow a character outside the base64 alphabet or a "/".
    """
    body: list[str] = []
    index = end - 1
    while index >= 0 and len(body) < CODE_BODY_LENGTH:
        char = view[index]
        if char in _BASE64_CHARS:
            body.append(char)
        elif not is_url_view and char == "=" and body and index > 0 and view[index - 1] in _BASE64_CHARS:
            pass
        else:
            break
        index -= 1

    if len(body) < CODE_BODY_LENGTH:
        return None
    # NOTE: "/" counts as a path separator, so a longer base64 value with "/"
    # as its 23rd character from the end still yields its last 22.
    if is_url_view and index >= 0 and view[index] in _BASE64_CHARS and view[index] != "/":
        return None
    return index + 1, "".join(reversed(body))


def _has_label(view: str, start: int) -> bool:
    """Return whether a tracking-code label ends right before `start` in `view`."""
    window = view[max(0, start - _LABEL_WINDOW) : start]
    window = _QUOTED_PRINTABLE_GAP.sub("", window).translate(_HYPHENS)
    window = window.rstrip(_LABEL_SEPARATORS)
    window = unicodedata.normalize("NFC", window).casefold()
    return window.endswith(_LABEL_KEYS)
