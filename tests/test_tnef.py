"""TNEF (winmail.dat) parts: bodies, attachments and attached messages reach the parse and detect stages."""

from __future__ import annotations

import signal
import struct
from pathlib import Path
from types import FrameType

import compressed_rtf
import pytest
from factories import make_mail
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.detect import find_codes
from syncd.mail import CodeCandidate, Location, ParsedMail
from syncd.parse import MAX_PARTS, limit_notes, parse_message
from syncd.tnef import MAX_TNEF_ATTRIBUTES, TNEF_SIGNATURE, read_tnef

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"

CODE = "nXmrgOguRZt63tpjM5sSpA=="
OUTER_TEXT = "Hei Kari,\n\nOutlook la ved winmail.dat.\n\nHilsen Åsmund"

# TNEF attribute levels, ids and types ([MS-OXTNEF] section 2.1.3).
MESSAGE, ATTACHMENT = 1, 2
ATT_SUBJECT, ATT_BODY, ATT_MSG_PROPS = 0x8004, 0x800C, 0x9003
ATT_ATTACH_REND_DATA, ATT_ATTACH_TITLE, ATT_ATTACH_DATA, ATT_ATTACHMENT = 0x9002, 0x8010, 0x800F, 0x9005
ATT_TNEF_VERSION, ATT_OEM_CODEPAGE = 0x9006, 0x9007
TYPE_STRING, TYPE_BYTE, TYPE_DWORD = 0x0001, 0x0006, 0x0008

# MAPI property types and ids.
PT_LONG, PT_UNICODE, PT_OBJECT, PT_BINARY = 0x0003, 0x001F, 0x000D, 0x0102
PR_SUBJECT, PR_BODY, PR_RTF_COMPRESSED, PR_HTML = 0x0037, 0x1000, 0x1009, 0x1013
PR_ATTACH_DATA_OBJ, PR_ATTACH_METHOD, PR_ATTACH_LONG_FILENAME = 0x3701, 0x3705, 0x3707
# IID_IMessage, which comes before an attached message's own TNEF stream.
IID_IMESSAGE = bytes.fromhex("0703020000000000c000000000000046")


# --- a TNEF writer ------------------------------------------------------


def attribute(level: int, attribute_id: int, attribute_type: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BHHI", level, attribute_id, attribute_type, len(data)) + data + struct.pack("<H", checksum)


def padded(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def mapi_value(property_type: int, property_id: int, value: bytes | str | int) -> bytes:
    head = struct.pack("<HH", property_type, property_id)
    if isinstance(value, int):
        return head + struct.pack("<i", value)
    if isinstance(value, str):
        value = (value + "\x00").encode("utf-16-le" if property_type == PT_UNICODE else "cp1252")
    return head + struct.pack("<II", 1, len(value)) + padded(value)


def mapi_properties(*values: bytes) -> bytes:
    return struct.pack("<I", len(values)) + b"".join(values)


#: The signature, the legacy key and the attributes that every stream starts with.
STREAM_START = [
    TNEF_SIGNATURE + struct.pack("<H", 0x1234),
    attribute(MESSAGE, ATT_TNEF_VERSION, TYPE_DWORD, struct.pack("<I", 0x10000)),
    attribute(MESSAGE, ATT_OEM_CODEPAGE, TYPE_BYTE, struct.pack("<II", 1252, 0)),
]


def tnef_stream(*attributes: bytes) -> bytes:
    return b"".join(STREAM_START) + b"".join(attributes)


def message_properties(*values: bytes) -> bytes:
    return attribute(MESSAGE, ATT_MSG_PROPS, TYPE_BYTE, mapi_properties(*values))


def file_attachment(name: str, data: bytes) -> bytes:
    return (
        attribute(ATTACHMENT, ATT_ATTACH_REND_DATA, TYPE_BYTE, bytes(14))
        + attribute(ATTACHMENT, ATT_ATTACH_TITLE, TYPE_STRING, name.encode("cp1252") + b"\x00")
        + attribute(ATTACHMENT, ATT_ATTACH_DATA, TYPE_BYTE, data)
        + attribute(
            ATTACHMENT,
            ATT_ATTACHMENT,
            TYPE_BYTE,
            mapi_properties(
                mapi_value(PT_LONG, PR_ATTACH_METHOD, 1), mapi_value(PT_UNICODE, PR_ATTACH_LONG_FILENAME, name)
            ),
        )
    )


def message_attachment(stream: bytes) -> bytes:
    """Return the attributes of an attached Outlook message whose own TNEF stream is `stream`."""
    return attribute(ATTACHMENT, ATT_ATTACH_REND_DATA, TYPE_BYTE, bytes(14)) + attribute(
        ATTACHMENT,
        ATT_ATTACHMENT,
        TYPE_BYTE,
        mapi_properties(
            mapi_value(PT_LONG, PR_ATTACH_METHOD, 5), mapi_value(PT_OBJECT, PR_ATTACH_DATA_OBJ, IID_IMESSAGE + stream)
        ),
    )


def mail_with_tnef(stream: bytes, *, content_type: str = "application/ms-tnef", text: str = OUTER_TEXT) -> bytes:
    return make_mail(text=text, attachments=[(stream, content_type, "winmail.dat")])


def labelled_code(location: Location) -> CodeCandidate:
    return CodeCandidate(code=CODE, labelled=True, location=location)


# --- bodies -------------------------------------------------------------

BODIES = {
    "plain": mapi_value(PT_UNICODE, PR_BODY, f"Hei,\r\nSporingskode: {CODE}.\r\n"),
    "HTML": mapi_value(
        PT_BINARY,
        PR_HTML,
        f'<html><body><p>Hei,</p><p style="color:#fff">Tracking code: {CODE}.</p></body></html>'.encode(),
    ),
    "RTF": mapi_value(
        PT_BINARY,
        PR_RTF_COMPRESSED,
        compressed_rtf.compress(
            rb"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Arial;}}\f0 Hei,\par Tracking code: " + CODE.encode() + rb".\par}"
        ),
    ),
    "HTML in RTF": mapi_value(
        PT_BINARY,
        PR_RTF_COMPRESSED,
        compressed_rtf.compress(
            rb"{\rtf1\ansi\ansicpg1252\fromhtml1 {\*\htmltag64 <p>}Sporingskode: "
            + CODE.encode()
            + rb".{\*\htmltag72 </p>}\htmlrtf {\par}\htmlrtf0}"
        ),
    ),
}


BODY_LOCATIONS = {"plain": Location.TEXT, "HTML": Location.HTML, "RTF": Location.TEXT, "HTML in RTF": Location.HTML}


@pytest.mark.parametrize("kind", list(BODIES))
def test_tnef_body_code_found(kind: str) -> None:
    raw = mail_with_tnef(tnef_stream(message_properties(BODIES[kind])))

    mail = parse_message(raw)

    assert mail.defects == []
    assert "Outlook la ved winmail.dat" in mail.text
    assert find_codes(mail) == [labelled_code(BODY_LOCATIONS[kind])]


def test_tnef_legacy_body_attribute_read() -> None:
    stream = tnef_stream(attribute(MESSAGE, ATT_BODY, TYPE_STRING, f"Sporingskode: {CODE}.\x00".encode("cp1252")))

    mail = parse_message(mail_with_tnef(stream))

    assert find_codes(mail) == [labelled_code(Location.TEXT)]


def test_tnef_vnd_type_decoded() -> None:
    raw = mail_with_tnef(tnef_stream(message_properties(BODIES["plain"])), content_type="application/vnd.ms-tnef")

    assert find_codes(parse_message(raw)) == [labelled_code(Location.TEXT)]


def test_tnef_subject_fills_empty_subject() -> None:
    stream = tnef_stream(message_properties(mapi_value(PT_UNICODE, PR_SUBJECT, f"Tilbud {CODE} – skrog")))
    raw = make_mail(subject="", attachments=[(stream, "application/ms-tnef", "winmail.dat")])

    mail = parse_message(raw)

    assert mail.subject == f"Tilbud {CODE} – skrog"


# --- attachments and attached messages ----------------------------------


def test_tnef_attachment_listed() -> None:
    stream = tnef_stream(
        message_properties(BODIES["plain"]), file_attachment("Tilbud skrog æøå.pdf", b"%PDF-1.4\x00\x01")
    )

    tnef = read_tnef(stream)

    assert [attachment.name for attachment in tnef.attachments] == ["Tilbud skrog æøå.pdf"]
    assert tnef.attachments[0].data == b"%PDF-1.4\x00\x01"
    assert tnef.attachments[0].embedded is None
    assert tnef.defects == []


def test_tnef_attached_message_nested() -> None:
    inner = tnef_stream(
        message_properties(
            mapi_value(PT_UNICODE, PR_SUBJECT, "Tilbud – skrog"),
            mapi_value(PT_UNICODE, PR_BODY, f"Sporingskode: {CODE}."),
        )
    )
    raw = mail_with_tnef(tnef_stream(message_properties(BODIES["plain"]), message_attachment(inner)))

    mail = parse_message(raw)

    assert [nested.subject for nested in mail.nested] == ["Tilbud – skrog"]
    assert mail.nested[0].text == f"Sporingskode: {CODE}."
    assert mail.defects == []


def test_tnef_attached_eml_nested() -> None:
    attached = make_mail(subject="Opprinnelig tilbud", text=f"Tracking code: {CODE}.")
    raw = mail_with_tnef(tnef_stream(file_attachment("tilbud.eml", attached)), text="Se vedlagt.")

    mail = parse_message(raw)

    assert [nested.subject for nested in mail.nested] == ["Opprinnelig tilbud"]
    assert find_codes(mail) == [labelled_code(Location.NESTED)]


def test_tnef_nesting_stops_at_max_depth() -> None:
    stream = tnef_stream(message_properties(mapi_value(PT_UNICODE, PR_BODY, "innerst")))
    for _ in range(5):
        stream = tnef_stream(message_attachment(stream))

    mail = parse_message(mail_with_tnef(stream), max_depth=3)

    depth = 0
    current = mail
    while current.nested:
        current = current.nested[0]
        depth += 1
    assert depth == 3
    assert current.defects == ["nested message at depth 4 not parsed: max_depth is 3"]
    assert limit_notes(mail) == ["nested message at depth 4 not parsed: max_depth is 3"]


def test_tnef_attachments_count_toward_max_parts() -> None:
    attachments = b"".join(file_attachment(f"vedlegg-{index}.txt", b"x") for index in range(MAX_PARTS + 10))

    mail = parse_message(mail_with_tnef(tnef_stream(attachments)))

    # The outer mail has three MIME parts: the multipart, the text and the TNEF part.
    assert mail.defects == [f"13 TNEF attachments not read: at most {MAX_PARTS} parts of one mail are read"]
    assert limit_notes(mail) == mail.defects


def test_tnef_html_limit_applies() -> None:
    html = f"<p>{'a' * 5000}</p><p>Tracking code: {CODE}.</p>".encode()
    raw = mail_with_tnef(tnef_stream(message_properties(mapi_value(PT_BINARY, PR_HTML, html))))

    mail = parse_message(raw, max_html_chars=1000)

    assert mail.defects == [f"HTML body of {len(html)} characters read up to 1000: max_html_chars is 1000"]
    assert find_codes(mail) == []


def test_tnef_attribute_count_capped() -> None:
    empty = attribute(MESSAGE, 0x8020, TYPE_BYTE, b"")
    stream = tnef_stream(empty * MAX_TNEF_ATTRIBUTES)

    tnef = read_tnef(stream)

    assert len(tnef.defects) == 1
    assert tnef.defects[0].endswith(f"at most {MAX_TNEF_ATTRIBUTES} attributes of one TNEF stream are read")


# --- broken streams -----------------------------------------------------


def test_truncated_winmail_keeps_mail() -> None:
    stream = tnef_stream(message_properties(BODIES["plain"]), file_attachment("tilbud.pdf", bytes(400)))
    cut = stream[: len(stream) - 200]

    mail = parse_message(mail_with_tnef(cut))

    assert "Outlook la ved winmail.dat" in mail.text
    assert find_codes(mail) == [labelled_code(Location.TEXT)]
    assert len(mail.defects) == 1
    assert mail.defects[0].startswith("TNEF part: TNEF stream truncated: attribute at byte ")


def test_winmail_cut_at_every_byte_parses() -> None:
    stream = tnef_stream(
        message_properties(BODIES["plain"], mapi_value(PT_UNICODE, PR_SUBJECT, "Tilbud")),
        file_attachment("a.txt", b"abc"),
        message_attachment(tnef_stream(message_properties(BODIES["HTML"]))),
    )
    # A stream cut between two attributes is complete as far as it goes.
    boundaries = set()
    offset = len(STREAM_START[0])
    while offset < len(stream):
        boundaries.add(offset)
        offset += 11 + struct.unpack_from("<I", stream, offset + 5)[0]

    for length in range(len(stream)):
        mail = parse_message(mail_with_tnef(stream[:length]))

        assert "Outlook la ved winmail.dat" in mail.text, length
        if length not in boundaries:
            assert mail.defects, length


def test_winmail_without_signature_noted() -> None:
    mail = parse_message(mail_with_tnef(b"not TNEF at all"))

    assert mail.defects == ["TNEF part: no TNEF signature in 15 bytes"]
    assert "Outlook la ved winmail.dat" in mail.text


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so the parser's broad handlers cannot keep it."""


def raise_hang(signum: int, frame: FrameType | None) -> None:
    raise Hang("TNEF parse still running after 30 s: a MAPI count is not bounded by the data")


def test_huge_mapi_counts_read_quickly() -> None:
    # A property list that claims 2**32 - 1 properties, and a multi-valued
    # property that claims as many values, in a few bytes.
    many_properties = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HH", PT_LONG, 0x0E07)
    many_values = struct.pack("<I", 1) + struct.pack("<HHI", 0x1002, 0x6000, 0xFFFFFFFF) + b"\x01\x00"
    stream = tnef_stream(
        attribute(MESSAGE, ATT_MSG_PROPS, TYPE_BYTE, many_properties),
        attribute(MESSAGE, ATT_MSG_PROPS, TYPE_BYTE, many_values),
        message_properties(BODIES["plain"]),
    )

    # Unguarded, tnefparse's decode_mapi loops 2**32 times on either list.
    previous = signal.signal(signal.SIGALRM, raise_hang)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        mail = parse_message(mail_with_tnef(stream))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert find_codes(mail) == [labelled_code(Location.TEXT)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), signed=st.booleans())
def test_random_winmail_never_raises(data: bytes, signed: bool) -> None:
    stream = TNEF_SIGNATURE + data if signed else data

    mail = parse_message(mail_with_tnef(stream))

    assert isinstance(mail, ParsedMail)
    assert "Outlook la ved winmail.dat" in mail.text
    find_codes(mail)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 10_000), replacement=st.binary(min_size=1, max_size=8))
def test_corrupted_winmail_never_raises(position: int, replacement: bytes) -> None:
    stream = tnef_stream(
        message_properties(BODIES["plain"], BODIES["RTF"]),
        file_attachment("a.txt", b"abc"),
        message_attachment(tnef_stream(message_properties(BODIES["HTML"]))),
    )
    position %= len(stream)
    corrupted = stream[:position] + replacement + stream[position + len(replacement) :]

    mail = parse_message(mail_with_tnef(corrupted))

    assert "Outlook la ved winmail.dat" in mail.text
    find_codes(mail)


# --- the real-world corpus ----------------------------------------------


def corpus_tnef_files() -> list[str]:
    if not MANIFEST.is_file():
        return []
    rows = [line.split("\t") for line in MANIFEST.read_text(encoding="utf-8").splitlines()[1:]]
    return [columns[0] for columns in rows if columns[5] == "tnef"]


#: Corpus files with stray bytes after the last attribute, checked by reading them.
TRUNCATED_CORPUS_FILES = {
    "tnefparse/garbage-at-end.tnef": "one stray byte after the last attribute",
    "tnefparse/minimal_attachment.tnef": "two stray bytes after the last attribute",
}


@pytest.mark.skipif(not MANIFEST.is_file(), reason=f"mail corpus not found: {MANIFEST} is missing")
@pytest.mark.parametrize("path", corpus_tnef_files())
def test_corpus_winmail_parses(path: str) -> None:
    stream = (CORPUS / path).read_bytes()

    mail = parse_message(mail_with_tnef(stream))

    assert "Outlook la ved winmail.dat" in mail.text
    tnef_defects = [defect for defect in mail.defects if defect.startswith("TNEF part:")]
    if path in TRUNCATED_CORPUS_FILES:
        assert len(tnef_defects) == 1
    else:
        assert tnef_defects == []


@pytest.mark.skipif(not MANIFEST.is_file(), reason=f"mail corpus not found: {MANIFEST} is missing")
def test_corpus_winmail_bodies_read() -> None:
    expected = {
        "tnefparse/body.tnef": "THE BILL OF RIGHTS",
        "tnefparse/MAPI_OBJECT.tnef": "October Discounted Price List",
        "tnefparse/missing-filenames.tnef": "Date problem",
        "tnefparse/multi-value-attribute.tnef": "You received a voice mail",
        "tnefparse/unicode-mapi-attr.tnef": "hello world",
    }
    for path, phrase in expected.items():
        mail = parse_message(mail_with_tnef((CORPUS / path).read_bytes()))

        assert phrase in mail.text + mail.html_text, path
