"""The new text of a mail and the quoted history below it.

A reply carries the mails it replies to below the sender's own text. A code in
that history names the record of an earlier mail, which is weaker evidence
than a code the sender wrote or kept in the new text. History starts at the
first line that is one of these:

- a quoted line, starting with ">";
- a marker line such as "-----Original Message-----", "Videresendt melding:"
  or "Begin forwarded message:";
- Outlook's line of underscores followed by a From line;
- a header block without a marker: a From line ("Fra:", "Von:") followed
  within three lines by a date line ("Sent:", "Sendt:", "Date:");
- an attribution such as "On 14 Jan 2025, at 09:42, Kari <k@x.no> wrote:",
  "Den 14. jan. 2025 kl. 09.42 skrev Mette <m@y.dk>:" or Gmail's attribution
  wrapped over two lines.

The field names, marker phrases and attribution verbs are those of
`syncd.forward`, so replies and forwards are recognised in the same
languages.

NOTE: the text of an HTML body has no quote markers, so history there is
found only by its marker, header block or attribution line. A <blockquote>
without one counts as new text.
"""

from __future__ import annotations

import re

from syncd.detect import find_codes_in_text
from syncd.forward import (
    ATTRIBUTION_MAX_CHARS,
    ATTRIBUTION_VERBS,
    FIELD_NAMES,
    MARKER_PHRASES,
)
from syncd.mail import Location, ParsedMail

#: Lines after a From line within which a header block must have its date line.
HEADER_BLOCK_WINDOW = 3

_QUOTED_LINE = re.compile(r"^[ \t]*>")

_MARKER_LINE = re.compile(
    r"^[-_=*\s]*(?P<phrase>"
    + "|".join(re.escape(phrase) for phrase in sorted(MARKER_PHRASES, key=len, reverse=True))
    + r")(?P<after>.*)$",
    re.IGNORECASE,
)

_UNDERSCORE_RULE = re.compile(r"^\s*_{10,}\s*$")


def _field_line(names: tuple[str, ...]) -> re.Pattern[str]:
    # Also the bold "*From:*" form that clients write when they turn HTML into text.
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"^\**\s*(?:{alternatives})\s*\**\s*:", re.IGNORECASE)


_SENDER_LINE = _field_line(FIELD_NAMES["sender"])
_DATE_LINE = _field_line(FIELD_NAMES["date"])

_ATTRIBUTION_VERB = re.compile(
    r"\b(?:" + "|".join(re.escape(verb) for verb in ATTRIBUTION_VERBS) + r")\b", re.IGNORECASE
)


def split_history(text: str) -> tuple[str, str]:
    """Split `text` into the sender's new text and the quoted history, at the first history line."""
    lines = text.splitlines(keepends=True)
    stripped = [line.strip() for line in lines]
    for index in range(len(lines)):
        if _starts_history(stripped, index):
            return "".join(lines[:index]), "".join(lines[index:])
    return text, ""


def codes_in_new_text(mail: ParsedMail) -> set[str]:
    """Return the tracking-code candidates in the subject and the new text of `mail`.

    The subject counts as new text, because the sender chose to keep or
    write it. Nested messages count as history and are not searched.
    """
    parts = [
        (mail.subject, Location.SUBJECT),
        (split_history(mail.text)[0], Location.TEXT),
        (split_history(mail.html_text)[0], Location.HTML),
    ]
    return {candidate.code for text, location in parts for candidate in find_codes_in_text(text, location)}


def _starts_history(lines: list[str], index: int) -> bool:
    line = lines[index]
    if _QUOTED_LINE.match(line):
        return True
    if _is_marker(line):
        return True
    if _UNDERSCORE_RULE.match(line):
        following = _next_nonblank(lines, index + 1)
        return following is not None and _SENDER_LINE.match(following) is not None
    if _SENDER_LINE.match(line):
        window = lines[index + 1 : index + 1 + HEADER_BLOCK_WINDOW]
        return any(_DATE_LINE.match(other) for other in window)
    if _is_attribution(line):
        return True
    return _is_wrapped_attribution(line, lines[index + 1] if index + 1 < len(lines) else "")


def _is_marker(line: str) -> bool:
    match = _MARKER_LINE.match(line)
    if match is None:
        return False
    # "Original message" at the start of a sentence is text. The marker is
    # alone on its line or between dashes.
    dashed = line.startswith(("-", "_", "=", "*")) or "--" in match["after"]
    return dashed or match["after"].strip() in ("", ":")


def _is_attribution(line: str) -> bool:
    if not line.endswith(":") or len(line) > ATTRIBUTION_MAX_CHARS:
        return False
    if _ATTRIBUTION_VERB.search(line) is None:
        return False
    # A date or an address distinguishes an attribution from a sentence like "Kari skrev:".
    return "@" in line or _has_digit(line)


def _is_wrapped_attribution(line: str, following: str) -> bool:
    """Return whether `line` starts an attribution that Gmail wrapped onto `following`."""
    if not (line and following) or line.endswith(":"):
        return False
    # The first half carries the date and the second half none, which
    # distinguishes a wrapped attribution from a line of text above a whole one.
    if not _has_digit(line) or _has_digit(following):
        return False
    return _is_attribution(f"{line} {following}")


def _has_digit(text: str) -> bool:
    return any(character.isdigit() for character in text)


def _next_nonblank(lines: list[str], start: int) -> str | None:
    return next((line for line in lines[start:] if line), None)
