"""Tests of forward recognition: subject prefixes, attached originals, inline header blocks."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from factories import make_mail
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.forward import (
    find_forwarded_original,
    is_forward_subject,
    parse_addresses,
    parse_block_date,
)
from syncd.mail import Address, ParsedMail
from syncd.parse import parse_message

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FORWARD_FIXTURES = CORPUS / "email-forward-parser"

OSLO = ZoneInfo("Europe/Oslo")
KARI = Address(email="kari.nordmann@example.no", name="Kari Nordmann")
METTE = Address(email="mette.sorensen@example.dk", name="Mette Sørensen")
OLA = Address(email="ola.hansen@example.no", name="Ola Hansen")


def forward(text: str, subject: str = "Fwd: Tilbud på skrog", **fields: Any) -> ParsedMail:
    return ParsedMail(subject=subject, sender=Address(email="selger@example.no"), text=text, **fields)


# --- subjects -----------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Fwd: Tilbud på skrog",
        "FW: Tilbud på skrog",
        "Fw: Tilbud på skrog",
        "fwd:Tilbud på skrog",
        "VS: Tilbud på skrog",
        "Vs: Tilbud på skrog",
        "Videresend: Tilbud på skrog",
        "VB: Levering af stålbjælker",
        "WG: Levering af stålbjælker",
        "TR: Levering af stålbjælker",
        "RV: Levering af stålbjælker",
        "Doorst: Levering af stålbjælker",
        "Fwd: Fwd: VS: Tilbud",
        "Fwd: Re: Tilbud",
        "FW : Tilbud",
        "[EKSTERN] VS: Tilbud",
        "[Fwd: Tilbud på skrog]",
    ],
)
def test_forward_subject_is_recognised(subject: str) -> None:
    assert is_forward_subject(subject)


@pytest.mark.parametrize(
    "subject",
    ["Tilbud på skrog", "Re: Fwd: Tilbud", "SV: Tilbud", "AW: Tilbud", "Fwdx: Tilbud", "Forwarding plan", "VSB: x", ""],
)
def test_other_subject_is_not_forward(subject: str) -> None:
    assert not is_forward_subject(subject)


@pytest.mark.skipif(not FORWARD_FIXTURES.is_dir(), reason=f"forward fixtures not found at {FORWARD_FIXTURES}")
def test_corpus_forward_subjects_are_recognised() -> None:
    subjects = [path.read_text(encoding="utf-8").strip() for path in sorted(FORWARD_FIXTURES.glob("*_subject.txt"))]

    assert subjects
    assert [subject for subject in subjects if not is_forward_subject(subject)] == []


# --- attached originals -------------------------------------------------


def test_attached_original_of_forward_subject_is_returned() -> None:
    original = ParsedMail(subject="Tilbud på skrog", sender=METTE)
    mail = forward("Se under.\n" * 200, nested=[original, ParsedMail(subject="andre")])

    assert find_forwarded_original(mail) is original


def test_attached_original_with_short_note_is_returned() -> None:
    original = ParsedMail(subject="Tilbud på skrog", sender=METTE)
    mail = forward("Til arkivet.\n\nKari", subject="Tilbud på skrog", nested=[original])

    assert find_forwarded_original(mail) is original


def test_attachment_under_long_text_is_not_original() -> None:
    mail = forward("Her er mine kommentarer.\n" * 100, subject="Kommentarer", nested=[ParsedMail(sender=METTE)])

    assert find_forwarded_original(mail) is None


def test_parsed_attached_forward_gives_original_fields() -> None:
    original = make_mail(
        subject="Levering af stålbjælker",
        sender="Mette Sørensen <mette.sorensen@example.dk>",
        to="Kari Nordmann <kari.nordmann@example.no>",
        date=datetime(2024, 3, 4, 9, 15, tzinfo=OSLO),
    )
    mail = parse_message(make_mail(subject="VS: Levering af stålbjælker", text="FYI", attached_messages=[original]))

    found = find_forwarded_original(mail)

    assert found is not None
    assert found.sender == METTE
    assert found.to == [KARI]
    assert found.date == datetime(2024, 3, 4, 8, 15, tzinfo=UTC)
    assert found.subject == "Levering af stålbjælker"


# --- hand-written inline forwards ---------------------------------------

OUTLOOK_NORWEGIAN = """\
Til arkivet.

Hilsen Ola

________________________________
Fra: Nordmann, Kari [mailto:kari.nordmann@example.no]
Sendt: tirsdag 5. mars 2024 14:30
Til: Sørensen, Mette <mette.sorensen@example.dk>; Ola Hansen
 <ola.hansen@example.no>
Kopi: salg@example.no
Emne: Tilbud på skrog

Hei Mette,

Her er tilbudet på skrog.
Tracking code: nXmrgOguRZt63tpjM5sSpA==.
"""


def test_outlook_norwegian_forward_fields() -> None:
    found = find_forwarded_original(forward(OUTLOOK_NORWEGIAN, subject="VS: Tilbud på skrog"), assume_tz=OSLO)

    assert found is not None
    assert found.sender == Address(email="kari.nordmann@example.no", name="Nordmann, Kari")
    assert found.to == [Address(email="mette.sorensen@example.dk", name="Sørensen, Mette"), OLA]
    assert found.cc == [Address(email="salg@example.no")]
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.subject == "Tilbud på skrog"
    assert found.text == "Hei Mette,\n\nHer er tilbudet på skrog.\nTracking code: nXmrgOguRZt63tpjM5sSpA==."
    assert found.message_id is None


GMAIL_DANISH = """\
Kan du se på den her?

---------- Forwarded message ---------
Fra: Mette Sørensen <mette.sorensen@example.dk>
Date: tir. 5. mar. 2024 kl. 14.30
Subject: Levering af stålbjælker
To: Kari Nordmann <kari.nordmann@example.no>
Cc: <ola.hansen@example.no>


Hej Kari

Stålbjælkerne kan leveres i uge 12.
"""


def test_gmail_danish_forward_fields() -> None:
    found = find_forwarded_original(forward(GMAIL_DANISH, subject="Fwd: Levering af stålbjælker"), assume_tz=OSLO)

    assert found is not None
    assert found.sender == METTE
    assert found.to == [KARI]
    assert found.cc == [Address(email="ola.hansen@example.no")]
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.subject == "Levering af stålbjælker"
    assert found.text == "Hej Kari\n\nStålbjælkerne kan leveres i uge 12."


APPLE_MAIL_SWEDISH = """\
Se nedan.

> Vidarebefordrat mejl:
>
> Från: Mette Sørensen <mette.sorensen@example.dk>
> Ämne: Levering af stålbjælker
> Datum: 5 mars 2024 14:30:00 CET
> Till: Kari Nordmann <kari.nordmann@example.no>
> Kopia: "Hansen, Ola" <ola.hansen@example.no>
>
> Hej Kari
>
> > Tidigare citat
"""


def test_apple_mail_swedish_forward_fields() -> None:
    found = find_forwarded_original(forward(APPLE_MAIL_SWEDISH, subject="VB: Levering af stålbjælker"))

    assert found is not None
    assert found.sender == METTE
    assert found.to == [KARI]
    assert found.cc == [Address(email="ola.hansen@example.no", name="Hansen, Ola")]
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.subject == "Levering af stålbjælker"
    assert found.text == "Hej Kari\n\n> Tidigare citat"


THUNDERBIRD_GERMAN = """\
-------- Weitergeleitete Nachricht --------
Betreff: \tTilbud på skrog
Datum: \tTue, 5 Mar 2024 14:30:00 +0100
Von: \tKari Nordmann <kari.nordmann@example.no>
An: \tMette Sørensen <mette.sorensen@example.dk>, Ola Hansen <ola.hansen@example.no>



Hei Mette,
her er tilbudet.
"""


def test_thunderbird_german_forward_fields() -> None:
    found = find_forwarded_original(forward(THUNDERBIRD_GERMAN, subject="WG: Tilbud på skrog"))

    assert found is not None
    assert found.sender == KARI
    assert found.to == [METTE, OLA]
    assert found.cc == []
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.subject == "Tilbud på skrog"
    assert found.text == "Hei Mette,\nher er tilbudet."


BOLD_OUTLOOK_PLAIN_TEXT = """\
FYI

*From:* Kari Nordmann <kari.nordmann@example.no>
*Sent:* Tuesday, March 5, 2024 2:30 PM
*To:* Mette Sørensen <mette.sorensen@example.dk>
*Subject:* Tilbud på skrog

Hei Mette
"""


def test_bold_outlook_block_in_plain_text_fields() -> None:
    found = find_forwarded_original(forward(BOLD_OUTLOOK_PLAIN_TEXT, subject="FW: Tilbud på skrog"), assume_tz=OSLO)

    assert found is not None
    assert found.sender == KARI
    assert found.to == [METTE]
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.subject == "Tilbud på skrog"
    assert found.text == "Hei Mette"


def test_forward_marker_works_without_forward_subject() -> None:
    found = find_forwarded_original(forward(GMAIL_DANISH, subject="Levering af stålbjælker"))

    assert found is not None
    assert found.sender == METTE


def test_html_text_is_used_when_text_is_empty() -> None:
    html_text = (
        "Til arkivet.\n\n"
        "Fra: Kari Nordmann <kari.nordmann@example.no>\n"
        "Sendt: 5. mars 2024 14:30\n"
        "Til: Mette Sørensen <mette.sorensen@example.dk>\n"
        "Emne: Tilbud på skrog\n\n"
        "Hei Mette"
    )
    found = find_forwarded_original(forward("", subject="VS: Tilbud på skrog", html_text=html_text))

    assert found is not None
    assert found.sender == KARI
    assert found.text == "Hei Mette"


def test_outlook_forward_from_parsed_html_mail() -> None:
    html = (
        "<p>Til arkivet.</p><div style='border-top:solid #E1E1E1 1.0pt'>"
        "<p><b>Fra:</b> Kari Nordmann &lt;"
        "<a href='mailto:kari.nordmann@example.no'>kari.nordmann@example.no</a>&gt;<br>"
        "<b>Sendt:</b> tirsdag 5. mars 2024 14:30<br><b>Til:</b> Mette Sørensen &lt;mette.sorensen@example.dk&gt;<br>"
        "<b>Emne:</b> Tilbud på skrog</p></div><p>Hei Mette,</p>"
    )
    mail = parse_message(make_mail(subject="VS: Tilbud på skrog", text=None, html=html))

    found = find_forwarded_original(mail, assume_tz=OSLO)

    assert found is not None
    assert found.sender == KARI
    assert found.to == [METTE]
    assert found.date == datetime(2024, 3, 5, 13, 30, tzinfo=UTC)
    assert found.text == "Hei Mette,"


def test_zoneless_date_without_assumed_zone_is_none() -> None:
    found = find_forwarded_original(forward(OUTLOOK_NORWEGIAN, subject="VS: Tilbud på skrog"))

    assert found is not None
    assert found.date is None
    assert "forwarded date not read: 'tirsdag 5. mars 2024 14:30'" in found.defects


def test_sender_without_address_is_none() -> None:
    text = (
        "-----Original Message-----\n"
        "From: Kari Nordmann\n"
        "Sent: 5 March 2024 14:30\n"
        "To: mette.sorensen@example.dk\n"
        "Subject: Tilbud\n\n"
        "Hei"
    )
    found = find_forwarded_original(forward(text, subject="FW: Tilbud"))

    assert found is not None
    assert found.sender is None
    assert found.to == [Address(email="mette.sorensen@example.dk")]


# --- not forwards -------------------------------------------------------


def test_reply_with_original_message_block_is_not_forward() -> None:
    text = OUTLOOK_NORWEGIAN.replace("________________________________", "-----Opprinnelig melding-----")

    assert find_forwarded_original(forward(text, subject="SV: Tilbud på skrog")) is None


def test_reply_with_attribution_line_is_not_forward() -> None:
    text = "Takk!\n\nOn Tue, Mar 5, 2024 at 2:30 PM Kari Nordmann <kari.nordmann@example.no> wrote:\n> Hei Mette\n"

    assert find_forwarded_original(forward(text, subject="Re: Tilbud på skrog")) is None


def test_reply_quoting_a_forward_is_not_forward() -> None:
    text = "Takk!\n\nOn Tue, Mar 5, 2024 at 2:30 PM Kari <kari.nordmann@example.no> wrote:\n> " + GMAIL_DANISH.replace(
        "\n", "\n> "
    )

    assert find_forwarded_original(forward(text, subject="Re: Fwd: Levering")) is None


def test_mail_without_block_is_not_forward() -> None:
    text = "Hei Mette,\nFrom: kontoret vårt sender vi i morgen.\nHilsen Kari"

    assert find_forwarded_original(forward(text, subject="Fwd: Tilbud")) is None


def test_lone_from_line_is_not_a_block() -> None:
    text = "From: Kari Nordmann <kari.nordmann@example.no>\nHei Mette, her er tilbudet."

    assert find_forwarded_original(forward(text, subject="Fwd: Tilbud")) is None


def test_empty_mail_is_not_forward() -> None:
    assert find_forwarded_original(ParsedMail()) is None


@pytest.mark.parametrize(
    "text",
    [
        "From: " + "a" * 200_000 + "\nDate: x\nTo: y",
        "From: " + " " * 200_000 + "x",
        "-----Original Message-----\nFrom: a@example.no\nTo: b@example.no,\n" + "c@example.no,\n" * 50_000,
        "From: a@example.no\n" * 50_000,
        "---- Forwarded message ----\n" * 50_000,
        "On x, a@example.no wrote:\n" * 50_000,
    ],
    ids=[
        "long-token",
        "long-blank-value",
        "long-recipient-list",
        "repeated-from",
        "repeated-marker",
        "repeated-attribution",
    ],
)
def test_hostile_text_is_read_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    find_forwarded_original(forward(text))

    assert time.perf_counter() - started < 5


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('-_>:<@.* \nFraSendtTiEmneDato2024wrote,"[]mailto')), max_size=400))
def test_arbitrary_text_does_not_raise(text: str) -> None:
    find_forwarded_original(forward(text))


# --- addresses and dates ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Kari Nordmann <kari.nordmann@example.no>", [KARI]),
        ('"Nordmann, Kari" <Kari.Nordmann@Example.no>', [Address("kari.nordmann@example.no", "Nordmann, Kari")]),
        ("Kari Nordmann [mailto:kari.nordmann@example.no]", [KARI]),
        ("kari.nordmann@example.no", [Address("kari.nordmann@example.no")]),
        ("kari.nordmann@example.no <kari.nordmann@example.no>", [Address("kari.nordmann@example.no")]),
        ("Kari Nordmann <kari.nordmann@example.no<mailto:kari.nordmann@example.no>>", [KARI]),
        ("Nordmann, Kari <kari.nordmann@example.no>; Sørensen, Mette <mette.sorensen@example.dk>",
         [Address("kari.nordmann@example.no", "Nordmann, Kari"),
          Address("mette.sorensen@example.dk", "Sørensen, Mette")]),
        ("Kari Nordmann <kari.nordmann@example.no>, ola.hansen@example.no",
         [KARI, Address("ola.hansen@example.no")]),
        ("Kari Nordmann", []),
    ],
)  # fmt: skip
def test_parse_addresses_reads_block_forms(value: str, expected: list[Address]) -> None:
    assert parse_addresses(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wed, 3 Nov 2021 15:51:30 +0100", datetime(2021, 11, 3, 14, 51, 30)),
        ("Monday, September 19, 2022, 5:55:44 PM -0400", datetime(2022, 9, 19, 21, 55, 44)),
        ("26. oktober 2021 kl. 14.25.08 EEST", datetime(2021, 10, 26, 11, 25, 8)),
        ("tirsdag den 2. november 2021 09.26.50 CET", datetime(2021, 11, 2, 8, 26, 50)),
        ("Mi., 27. Okt. 2021 um 09:31 Uhr UTC+2", datetime(2021, 10, 27, 7, 31)),
        ("2024-03-05 14:30 GMT", datetime(2024, 3, 5, 14, 30)),
        ("5. März 2024 12:00 (GMT+01:00)", datetime(2024, 3, 5, 11, 0)),
        ("5.3.2024 14:30 +0100", datetime(2024, 3, 5, 13, 30)),
        ("12/25/2023 11:00 PM -0500", datetime(2023, 12, 26, 4, 0)),
    ],
)
def test_block_date_with_zone_is_read(text: str, expected: datetime) -> None:
    assert parse_block_date(text) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tirsdag 5. mars 2024 14:30", datetime(2024, 3, 5, 13, 30)),
        ("torsdag, 28. oktober 2021 kl. 12.06", datetime(2021, 10, 28, 10, 6)),
        ("Wed, Oct 27, 2021 at 9:31 AM", datetime(2021, 10, 27, 7, 31)),
        ("ons 27 okt. 2021 kl 09:31", datetime(2021, 10, 27, 7, 31)),
        ("Donnerstag, 28. Oktober 2021 um 12:46", datetime(2021, 10, 28, 10, 46)),
        ("28/10/2021 12:46", datetime(2021, 10, 28, 10, 46)),
        ("July 19, 2022 at 3:09 PM", datetime(2022, 7, 19, 13, 9)),
    ],
)
def test_block_date_without_zone_uses_assumed_zone(text: str, expected: datetime) -> None:
    assert parse_block_date(text, OSLO) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "tirsdag 5. mars 2024 14:30",
        "03/04/2021 10:00 +0100",
        "5. mars 2024",
        "i går ettermiddag",
        "31. februar 2024 10:00 +0100",
        "5 mars mai 2024 10:00 +0100",
        "",
    ],
    ids=["no-zone", "ambiguous-order", "no-time", "words", "invalid-day", "two-months", "empty"],
)
def test_block_date_that_cannot_be_read_is_none(text: str) -> None:
    assert parse_block_date(text) is None


# --- corpus fixtures ----------------------------------------------------

FIXTURE_LANGUAGES = ("en", "no", "da", "sv", "de")


def forward_fixtures() -> list[Path]:
    if not FORWARD_FIXTURES.is_dir():
        return []
    pattern = re.compile(rf"_({'|'.join(FIXTURE_LANGUAGES)})_body(_variant_\d+)?\.txt$")
    return [path for path in sorted(FORWARD_FIXTURES.glob("*_body*.txt")) if pattern.search(path.name)]


@pytest.mark.skipif(not FORWARD_FIXTURES.is_dir(), reason=f"forward fixtures not found at {FORWARD_FIXTURES}")
@pytest.mark.parametrize("path", forward_fixtures(), ids=lambda path: path.name)
def test_corpus_forward_gives_original_sender(path: Path) -> None:
    mail = forward(path.read_text(encoding="utf-8"), subject="Fwd: x")

    found = find_forwarded_original(mail)

    assert found is not None
    assert found.sender is not None
    assert "@" in found.sender.email
