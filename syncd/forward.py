"""Forward recognition: find the original mail inside a mail that someone forwarded.

A forward carries the original either as an attached message (message/rfc822
or an Outlook .msg file), which the parse stage puts in `ParsedMail.nested`,
or inline: a header block such as

    ---------- Forwarded message ---------
    From: Kari Nordmann <kari.nordmann@example.no>
    Date: Wed, Oct 27, 2021 at 9:31 AM
    Subject: Tilbud på skrog
    To: Mette Sørensen <mette@example.dk>

followed by the original body. Mail clients write these blocks in the user's
language and in their own layout, so the block is recognised through two
tables, one of field names and one of marker lines, rather than through one
pattern per client.

Replies quote the same kind of block ("-----Original Message-----", an
Outlook From/Sent block, or an "On ... wrote:" line). Only the first block
in the text counts. A block that only forwards write (a "Forwarded message"
marker) always makes the mail a forward. Any other block makes it one only
when the subject starts with a forward prefix such as "Fwd:" or "VS:".
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime

from syncd.mail import Address, ParsedMail
from syncd.parse import MAX_ADDRESSES, mailbox_address

#: Subject prefixes that forwarding clients add: English, German (WG), French
#: (TR), Spanish (RV), Dutch (Doorst), Norwegian and Danish (VS, Videresend),
#: Swedish (VB) and Finnish (VL).
FORWARD_SUBJECT_PREFIXES = ("fw", "fwd", "wg", "tr", "rv", "doorst", "vs", "videresend", "vb", "vl")

#: A covering note plus a signature fits in this many characters. A mail with
#: an attached message and no more own text than this is taken as a forward
#: even when its subject has no forward prefix.
NOTE_MAX_CHARS = 1000

#: Field names of forward header blocks, by the ParsedMail field they fill,
#: in English, Norwegian, Danish, Swedish, German, Finnish, French, Spanish
#: and Dutch. Names under "ignored" belong to the block but carry nothing
#: that the original needs.
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "sender": ("from", "fra", "från", "von", "lähettäjä", "de", "van"),
    "date": (
        "date", "sent", "dato", "sendt", "datum", "skickat", "gesendet", "päivämäärä",
        "päiväys", "lähetetty", "envoyé", "enviado", "fecha", "verzonden",
    ),
    "to": ("to", "til", "till", "an", "vastaanottaja", "à", "para", "aan"),
    "cc": ("cc", "kopi", "kopia", "kopie", "kopio", "copie"),
    "subject": ("subject", "emne", "ämne", "betreff", "aihe", "objet", "asunto", "onderwerp"),
    "ignored": (
        "bcc", "blindkopi", "dold kopia", "hemlig kopia", "bkopie", "reply-to", "svar til",
        "antwort an", "importance", "prioritet", "viktighet", "wichtigkeit", "attachments",
        "vedlegg", "vedhæftede filer", "bilagor", "anlagen", "liitteet",
    ),
}  # fmt: skip

#: Marker lines that open a forward header block, lower-cased, each with True
#: when only forwards use it and False when replies use it too.
MARKER_PHRASES: dict[str, bool] = {
    "forwarded message": True,
    "begin forwarded message": True,
    "original message": False,
    "videresendt melding": True,
    "videresendt e-post": True,
    "opprinnelig melding": False,
    "videresendt besked": True,
    "videresendt meddelelse": True,
    "start på videresendt besked": True,
    "start på videresendt meddelelse": True,
    "oprindelig meddelelse": False,
    "vidarebefordrat meddelande": True,
    "vidarebefordrat mejl": True,
    "ursprungligt meddelande": False,
    "weitergeleitete nachricht": True,
    "anfang der weitergeleiteten nachricht": True,
    "ursprüngliche nachricht": False,
    "originalnachricht": False,
    "välitetty viesti": True,
    "edelleenlähetetty viesti": True,
    "alkuperäinen viesti": False,
    "message transféré": True,
    "début du message réexpédié": True,
    "message d'origine": False,
    "mensaje reenviado": True,
    "mensaje original": False,
    "doorgestuurd bericht": True,
    "oorspronkelijk bericht": False,
}

#: Verbs of the one-line attribution "On <date>, <name> <address> wrote:".
ATTRIBUTION_VERBS = ("wrote", "skrev", "schrieb", "kirjoitti", "a écrit", "escribió", "schreef")

#: Longer lines are running text, not an attribution, even if they end in "wrote:".
ATTRIBUTION_MAX_CHARS = 200

# Words around the date in an attribution line, as in "Den <date> skrev" or
# "<name> skrev følgende den <date>:".
_ATTRIBUTION_FILLER = re.compile(
    r"^\s*(?:on|am|den|d\.|le|el|op)\s+|\b(?:følgende|följande|den|am|at)\b|[\s,:]+$", re.IGNORECASE
)

_FIELD_CANONICAL = {name: field for field, names in FIELD_NAMES.items() for name in names}
_FIELD_PATTERN = "|".join(re.escape(name) for name in sorted(_FIELD_CANONICAL, key=len, reverse=True))

# A field line, also in the bold "*From:*" form that Gmail and others write
# when they turn an HTML forward into plain text.
_FIELD_LINE = re.compile(rf"^\**\s*(?P<label>{_FIELD_PATTERN})\s*\**\s*:\s*\**(?P<value>.*)$", re.IGNORECASE)

# Field labels as clients capitalise them, for cutting apart the fields that
# Yahoo writes on one line without separators ("...>Til: ...CETEmne: ...").
_GLUED_LABEL = re.compile(
    "|".join(
        re.escape(variant) + r"\s*:"
        for name in sorted(_FIELD_CANONICAL, key=len, reverse=True)
        for variant in {name.capitalize(), name.upper()}
    )
)

_MARKER_LINE = re.compile(
    r"^(?P<lead>[-_=*\s]*)(?P<phrase>"
    + "|".join(re.escape(phrase) for phrase in sorted(MARKER_PHRASES, key=len, reverse=True))
    + r")(?P<after>.*)$",
    re.IGNORECASE,
)
_DASH_RUN = re.compile(r"[-_=]{2,}")

# Outlook separates the header block from the reply above by this line.
_OUTLOOK_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")

_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?")

_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:\[[^\]]{0,40}\]\s*)*\[?\s*(?:" + "|".join(FORWARD_SUBJECT_PREFIXES) + r")\s*(?:\[\d+\]|\(\d+\))?\s*[:：]",
    re.IGNORECASE,
)

# The lookbehind lets a match start only after a separator, which keeps
# finditer linear on long runs of text without "@".
_ADDRESS = r"(?<![^\s<>\[\]()\"',;:])[^\s<>\[\]()\"',;:@]+@[^\s<>\[\]()\"',;:]+"
# "Name <addr>", Outlook's "Name [mailto:addr]", Outlook.com's
# "addr<mailto:addr>", or a bare address.
_ADDRESS_TOKEN = re.compile(
    rf"<\s*(?:mailto:)?(?P<angle>{_ADDRESS})\s*(?:<mailto:[^<>]*>)?\s*>"
    rf"|\[\s*mailto:\s*(?P<mailto>{_ADDRESS})\s*\]"
    rf"|(?P<bare>{_ADDRESS})(?:<mailto:[^<>]*>)?",
    re.IGNORECASE,
)


def is_forward_subject(subject: str) -> bool:
    """Return whether `subject` starts with a forward prefix such as "Fwd:", "VS:" or "WG:".

    Gateway tags in brackets ("[EXTERNAL] FW: ...") may come first. A reply
    prefix before the forward prefix ("Re: Fwd: ...") makes the mail a reply.
    """
    return _SUBJECT_PREFIX.match(subject) is not None


def find_forwarded_original(mail: ParsedMail, *, assume_tz: tzinfo | None = None) -> ParsedMail | None:
    """Return the original mail that `mail` forwards, or None when it is not a forward.

    An attached message is returned as parsed. An inline header block gives
    a new ParsedMail with the block's sender, recipients, date and subject,
    the text below the block as `text`, and no Message-ID.

    Dates in header blocks often lack a time zone, because clients print
    them in the forwarding user's local time. Such a date is read in
    `assume_tz` when one is given, and otherwise the original's date is None.
    """
    if mail.nested and _looks_like_forward(mail):
        return mail.nested[0]

    body = mail.text if mail.text.strip() else mail.html_text
    if not body.strip():
        return None
    return _find_inline_original(body, is_forward_subject(mail.subject), assume_tz)


def _looks_like_forward(mail: ParsedMail) -> bool:
    own_text = mail.text if mail.text.strip() else mail.html_text
    return is_forward_subject(mail.subject) or len(own_text.strip()) <= NOTE_MAX_CHARS


# --- header blocks ------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    raw: str
    #: The line without quote markers and surrounding white space.
    text: str
    quote_depth: int


@dataclass
class _HeaderBlock:
    fields: dict[str, str]
    #: Index of the first line after the block.
    end: int
    quote_depth: int
    #: True when the block's marker is one that only forwards write.
    forward_only: bool


def _find_inline_original(body: str, forward_subject: bool, assume_tz: tzinfo | None) -> ParsedMail | None:
    lines = [_split_quote(raw.replace("\ufeff", "")) for raw in body.splitlines()]
    for index in range(len(lines)):
        block = _header_block_at(lines, index)
        if block is None:
            continue
        if not (block.forward_only or forward_subject):
            # The first block of a mail that is not a forward belongs to
            # the mail it replies to.
            return None
        return _original_from_block(block, lines, assume_tz)
    return None


def _split_quote(raw: str) -> _Line:
    prefix = _QUOTE_PREFIX.match(raw)
    if prefix is None:
        return _Line(raw, raw.strip(), 0)
    return _Line(raw, raw[prefix.end() :].strip(), prefix.group().count(">"))


def _header_block_at(lines: list[_Line], index: int) -> _HeaderBlock | None:
    line = lines[index]
    marker = _match_marker(line.text)
    if marker is not None:
        forward_only, glued = marker
        fields, end = _read_fields(lines, index + 1, line.quote_depth, _split_glued_fields(glued))
        if "sender" in fields:
            return _HeaderBlock(fields, end, line.quote_depth, forward_only)
        return None

    if _OUTLOOK_SEPARATOR.match(line.text):
        fields, end = _read_fields(lines, index + 1, line.quote_depth, [])
        if "sender" in fields:
            return _HeaderBlock(fields, end, line.quote_depth, forward_only=False)
        return None

    field = _FIELD_LINE.match(line.text)
    if field is not None and _FIELD_CANONICAL[field["label"].lower()] == "sender":
        fields, end = _read_fields(lines, index, line.quote_depth, [])
        # Without a marker, demand a full block so that a "From:" line in
        # running text does not count.
        if "sender" in fields and "date" in fields and ("to" in fields or "subject" in fields):
            return _HeaderBlock(fields, end, line.quote_depth, forward_only=False)
        return None

    return _attribution_block(lines, index)


def _match_marker(text: str) -> tuple[bool, str] | None:
    """Return (forward only, text glued after the marker) when `text` is a marker line."""
    match = _MARKER_LINE.match(text)
    if match is None:
        return None
    lead, after = match["lead"], match["after"]
    closing = _DASH_RUN.search(after)
    has_dashes = _DASH_RUN.search(lead) is not None or closing is not None
    if not has_dashes and after.strip() not in ("", ":"):
        # A sentence that merely starts with, say, "Original message".
        return None

    glued = after[closing.end() :].strip() if closing else ""
    return MARKER_PHRASES[match["phrase"].lower()], glued


def _split_glued_fields(text: str) -> list[str]:
    if not text:
        return []
    starts = [match.start() for match in _GLUED_LABEL.finditer(text)]
    if not starts or starts[0] != 0:
        return []
    return [text[start:end].strip() for start, end in zip(starts, [*starts[1:], len(text)])]


def _read_fields(lines: list[_Line], start: int, quote_depth: int, glued: list[str]) -> tuple[dict[str, str], int]:
    """Read field lines from `start` on, and return the fields and the index after them.

    A line that is not a field continues the previous To, Cc or From value
    when it contains an address or that value ends with a separator,
    because Outlook wraps long recipient lists.
    """
    values: dict[str, list[str]] = {}
    last_field: str | None = None

    for text in glued:
        match = _FIELD_LINE.match(text)
        if match is not None:
            last_field = _FIELD_CANONICAL[match["label"].lower()]
            values.setdefault(last_field, [match["value"].strip()])

    index = start
    blank_lines = 0
    while index < len(lines):
        line = lines[index]
        if line.quote_depth != quote_depth and line.text:
            break
        if not line.text:
            # Apple Mail and Thunderbird leave a blank line after the marker.
            if values or blank_lines >= 2:
                break
            blank_lines += 1
            index += 1
            continue

        match = _FIELD_LINE.match(line.text)
        if match is not None:
            field = _FIELD_CANONICAL[match["label"].lower()]
            if field in values and field != "ignored":
                break
            values[field] = [match["value"].strip()]
            last_field = field
        elif last_field in ("sender", "to", "cc") and ("@" in line.text or values[last_field][-1].endswith((",", ";"))):
            values[last_field].append(line.text)
        else:
            break
        index += 1

    return {field: " ".join(parts) for field, parts in values.items()}, index


def _attribution_block(lines: list[_Line], index: int) -> _HeaderBlock | None:
    """Read a one-line attribution such as `On 28/10/2021 12:46, "Kari" <k@x.no> wrote:`.

    Gmail wraps long attributions, so the next line is tried as well.
    """
    line = lines[index]
    candidates = [(line.text, index + 1)]
    if index + 1 < len(lines) and lines[index + 1].text:
        candidates.append((f"{line.text} {lines[index + 1].text}", index + 2))

    for text, end in candidates:
        fields = _parse_attribution(text)
        if fields is not None:
            return _HeaderBlock(fields, end, line.quote_depth, forward_only=False)
    return None


def _parse_attribution(text: str) -> dict[str, str] | None:
    if len(text) > ATTRIBUTION_MAX_CHARS or not text.endswith(":") or "@" not in text:
        return None
    lowered = text.lower()
    verb = next((verb for verb in ATTRIBUTION_VERBS if re.search(rf"\b{re.escape(verb)}\b", lowered)), None)
    addresses = list(_ADDRESS_TOKEN.finditer(text))
    if verb is None or not addresses:
        return None

    address = addresses[-1]
    verb_start = lowered.find(verb)
    verb_end = verb_start + len(verb)
    if verb_start < address.start():
        # "Den <date> skrev <name> <address> följande:"
        date_text, sender = text[:verb_start], text[verb_end : address.end()]
    else:
        # "<name> <address> skrev følgende den <date>:" or "On <date>, <name> <address> wrote:"
        date_text, sender = _ATTRIBUTION_FILLER.sub(" ", text[verb_end:]), text[: address.end()]
        if not date_text.strip():
            date_text, name = _split_date_and_name(text[: address.start()])
            sender = f"{name} {address.group()}"

    return {"sender": sender.strip(), "date": _ATTRIBUTION_FILLER.sub(" ", date_text).strip()}


def _split_date_and_name(text: str) -> tuple[str, str]:
    """Split "<date>, <name> " or "<date> <time> <name> " before an address."""
    quoted = re.search(r'"([^"]*)"\s*$', text)
    if quoted:
        return text[: quoted.start()], quoted.group(1)
    cut = max(
        (match.end() for match in re.finditer(r",|\d{1,2}[:.]\d{2}(?:\s*[ap]\.?m\.?)?", text, re.IGNORECASE)),
        default=0,
    )
    return text[:cut], text[cut:]


# --- the original mail --------------------------------------------------


def _original_from_block(block: _HeaderBlock, lines: list[_Line], assume_tz: tzinfo | None) -> ParsedMail:
    original = ParsedMail(defects=["read from an inline forward header block"])
    fields = block.fields

    senders = parse_addresses(fields.get("sender", ""))
    original.sender = senders[0] if senders else None
    if original.sender is None:
        original.defects.append(f"forwarded sender has no address: {fields.get('sender', '')!r}")
    original.to = parse_addresses(fields.get("to", ""))
    original.cc = parse_addresses(fields.get("cc", ""))
    original.subject = fields.get("subject", "").strip()

    date_text = fields.get("date", "").strip()
    original.date = parse_block_date(date_text, assume_tz)
    if date_text and original.date is None:
        original.defects.append(f"forwarded date not read: {date_text!r}")

    body = [_strip_quotes(line.raw, block.quote_depth) for line in lines[block.end :]]
    original.text = "\n".join(body).strip("\n")
    return original


def _strip_quotes(raw: str, depth: int) -> str:
    # One match of a counted repeat, rather than a match and a slice per
    # marker, keeps a line quoted thousands of levels deep linear.
    match = _quote_markers(depth).match(raw)
    return raw[match.end() :] if match else raw


@functools.lru_cache(maxsize=16)
def _quote_markers(depth: int) -> re.Pattern[str]:
    return re.compile(rf"(?:[ \t]*>[ \t]?){{0,{depth}}}")


def parse_addresses(value: str) -> list[Address]:
    """Read the addresses of a header-block value such as `Kari <k@x.no>; "Nordmann, Ola" [mailto:o@x.no]`.

    The display name of each address is the text between it and the
    previous address, so names may contain commas, as Outlook writes them.
    At most MAX_ADDRESSES are read, and strings too long to be an address
    are skipped, as the parse stage does for headers.
    """
    result: list[Address] = []
    tokens = list(itertools.islice(_ADDRESS_TOKEN.finditer(value), MAX_ADDRESSES))
    name_start = 0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name = value[name_start : token.start()]
        email = token["angle"] or token["mailto"] or token["bare"]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        # "k@x.no <k@x.no>": the bare address is the display name of the next.
        if (
            token["bare"]
            and following is not None
            and not following["bare"]
            and not value[token.end() : following.start()].strip(" \t\"'")
        ):
            name = value[name_start : following.start()]
            email = following["angle"] or following["mailto"]
            token = following
            index += 1

        display = name.strip().strip(",;").strip().strip("\"'").strip()
        if display.lower() == email.lower():
            display = ""
        address = mailbox_address(email, display)
        if address is not None:
            result.append(address)
        name_start = token.end()
        index += 1
    return result


# --- dates --------------------------------------------------------------

#: Longer text is not a date that a mail client printed.
DATE_MAX_CHARS = 200

_MONTH_NAMES = (
    ("january", "jan", "januar", "januari", "jänner", "tammikuuta", "tammikuu", "tammik",
     "janvier", "janv", "enero", "ene"),
    ("february", "feb", "februar", "februari", "helmikuuta", "helmikuu", "helmik", "février", "févr", "febrero"),
    ("march", "mar", "mars", "marts", "märz", "mär", "mrz", "maart", "maaliskuuta", "maaliskuu", "maalisk", "marzo"),
    ("april", "apr", "huhtikuuta", "huhtikuu", "huhtik", "avril", "avr", "abril", "abr"),
    ("may", "mai", "maj", "mei", "toukokuuta", "toukokuu", "toukok", "mayo"),
    ("june", "jun", "juni", "kesäkuuta", "kesäkuu", "kesäk", "juin", "junio"),
    ("july", "jul", "juli", "heinäkuuta", "heinäkuu", "heinäk", "juillet", "juil", "julio"),
    ("august", "aug", "augusti", "augustus", "elokuuta", "elokuu", "elok", "août", "agosto", "ago"),
    ("september", "sep", "sept", "syyskuuta", "syyskuu", "syysk", "septembre", "septiembre"),
    ("october", "oct", "oktober", "okt", "lokakuuta", "lokakuu", "lokak", "octobre", "octubre"),
    ("november", "nov", "marraskuuta", "marraskuu", "marrask", "novembre", "noviembre"),
    ("december", "dec", "desember", "des", "dezember", "dez", "joulukuuta", "joulukuu", "jouluk",
     "décembre", "diciembre", "dic"),
)  # fmt: skip
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, start=1) for name in names}

# Fixed offsets of the zone abbreviations that mail clients print. The US
# ones are those that RFC 822 defines.
_ZONE_HOURS = {
    "utc": 0, "gmt": 0, "wet": 0, "west": 1, "bst": 1, "cet": 1, "cest": 2, "eet": 2, "eest": 3,
    "est": -5, "edt": -4, "cst": -6, "cdt": -5, "mst": -7, "mdt": -6, "pst": -8, "pdt": -7,
}  # fmt: skip

_RFC5322_DATE = re.compile(r"^(?:[a-z]{3},\s*)?\d{1,2}\s+[a-z]{3}\s+\d{4}\s+\d{1,2}:\d{2}", re.IGNORECASE)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
# "28.10.2021", "28/10/2021" or "10/28/21". A two-digit year counts only
# after "/", so that a time such as "14.25.08" is not taken for a date.
_NUMERIC_DATE = re.compile(r"\b(\d{1,2})([./-])(\d{1,2})\2(\d{4}\b|(?<=/)\d{2}\b)")
_TIME = re.compile(r"\b(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(?:\s*([ap])\.?\s?m\b\.?)?", re.IGNORECASE)
_OFFSET = re.compile(r"(?:\b(?:utc|gmt)\s*(?P<sign1>[+-])(?P<hours1>\d{1,2})(?::?(?P<minutes1>\d{2}))?)"
                     r"|(?:(?<!\S)(?P<sign2>[+-])(?P<hours2>\d{2}):?(?P<minutes2>\d{2})\b)", re.IGNORECASE)  # fmt: skip
_ZONE_NAME = re.compile(r"\b(" + "|".join(_ZONE_HOURS) + r")\b", re.IGNORECASE)


def parse_block_date(text: str, assume_tz: tzinfo | None = None) -> datetime | None:
    """Read a date as header blocks print it, in any of the supported languages, as UTC.

    Handles RFC 5322 dates, day-month-year and month-day-year orders with
    month names or numbers, 12- and 24-hour times, and numeric or named
    zones. Returns None for text it cannot read unambiguously: a numeric
    date such as 03/04/2021, a date without a time, or a date without a
    zone when `assume_tz` is None.
    """
    text = text.strip()
    if not text or len(text) > DATE_MAX_CHARS:
        return None
    if _RFC5322_DATE.match(text):
        try:
            value = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            value = None
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)

    rest = text.lower()
    date_parts, rest = _take_date(rest)
    zone, rest = _take_zone(rest)
    time_parts, rest = _take_time(rest)
    if time_parts is None:
        return None
    if date_parts is None:
        date_parts = _date_from_words(rest)
    if date_parts is None:
        return None

    year, month, day = date_parts
    hour, minute, second = time_parts
    try:
        local = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None

    if zone is None:
        zone = assume_tz
    if zone is None:
        return None
    return local.replace(tzinfo=zone).astimezone(UTC)


def _take_date(text: str) -> tuple[tuple[int, int, int] | None, str]:
    match = _ISO_DATE.search(text)
    if match:
        parts = (int(match[1]), int(match[2]), int(match[3]))
        return parts, text[: match.start()] + " " + text[match.end() :]

    match = _NUMERIC_DATE.search(text)
    if match is None:
        return None, text
    first, separator, second, year_text = int(match[1]), match[2], int(match[3]), match[4]
    year = int(year_text) + (2000 if len(year_text) == 2 else 0)
    remaining = text[: match.start()] + " " + text[match.end() :]
    if first > 12 or (separator != "/" and second <= 12):
        # Day first: the only order with a day above 12 first, and the
        # order of every locale that writes "." or "-".
        return (year, second, first), remaining
    if second > 12:
        return (year, first, second), remaining
    # Both orders are possible, so the date stays unread rather than guessed.
    return None, remaining


def _take_zone(text: str) -> tuple[tzinfo | None, str]:
    match = _OFFSET.search(text)
    if match:
        sign = match["sign1"] or match["sign2"]
        hours = int(match["hours1"] or match["hours2"])
        minutes = int(match["minutes1"] or match["minutes2"] or 0)
        if hours > 14 or minutes > 59:
            return None, text
        offset = timedelta(hours=hours, minutes=minutes)
        return timezone(-offset if sign == "-" else offset), text[: match.start()] + " " + text[match.end() :]

    match = _ZONE_NAME.search(text)
    if match:
        zone = timezone(timedelta(hours=_ZONE_HOURS[match[1].lower()]))
        return zone, text[: match.start()] + " " + text[match.end() :]
    return None, text


def _take_time(text: str) -> tuple[tuple[int, int, int] | None, str]:
    match = _TIME.search(text)
    if match is None:
        return None, text
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    half = (match[4] or "").lower()
    if half and not 1 <= hour <= 12:
        return None, text
    if half == "a" and hour == 12:
        hour = 0
    elif half == "p" and hour != 12:
        hour += 12
    return (hour, minute, second), text[: match.start()] + " " + text[match.end() :]


def _date_from_words(text: str) -> tuple[int, int, int] | None:
    months = {_MONTHS[word] for word in re.findall(r"[^\W\d_]+", text) if word in _MONTHS}
    numbers = re.findall(r"\d+", text)
    years = [int(number) for number in numbers if len(number) == 4]
    days = [int(number) for number in numbers if len(number) <= 2]
    if len(months) != 1 or len(years) != 1 or len(days) != 1:
        return None
    return years[0], months.pop(), days[0]
