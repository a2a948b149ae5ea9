"""Where a reply's new text ends and its quoted history begins, in the layouts of common mail clients."""

from __future__ import annotations

import pytest

from syncd.mail import ParsedMail
from syncd.quoting import codes_in_new_text, split_history

NEW = "Hei Ingrid,\n\nTakk, vi går videre med skroget.\n\nHilsen Kari\n"


@pytest.mark.parametrize(
    ("history", "client"),
    [
        ("> Hei Kari,\n> her er tilbudet.\n", "quote markers"),
        ("  >> nested quote\n", "indented nested quote markers"),
        ("-----Original Message-----\nFrom: Ingrid\nSent: 14 January 2025\n\nHei\n", "Outlook English"),
        ("-----Opprinnelig melding-----\nFra: Ingrid\nSendt: 14. januar 2025\n\nHei\n", "Outlook Norwegian"),
        ("-----Oprindelig meddelelse-----\nFra: Lars\nSendt: 14. januar 2025\n\nHej\n", "Outlook Danish"),
        (
            "________________________________\nFra: Ingrid Berg <ingrid.berg@salg.example>\n"
            "Sendt: tirsdag 14. januar 2025 13:10\nTil: Kari\nEmne: Tilbud\n\nHei\n",
            "Outlook separator, Norwegian block",
        ),
        (
            "From: Ingrid Berg <ingrid.berg@salg.example>\nSent: 14 January 2025 13:10\n"
            "To: John Smith\nSubject: Quote\n\nDear John\n",
            "Outlook block without separator",
        ),
        (
            "*Fra:* Lars Øvrebø <lars.ovrebo@salg.example>\n*Sendt:* 20. januar 2025 10:15\n\nHej\n",
            "bold fields of an HTML block as text",
        ),
        ("On Tue, 14 Jan 2025 at 09:42, Ingrid Berg <ingrid.berg@salg.example> wrote:\n\n> Hei\n", "Gmail"),
        (
            "On Wed, Feb 5, 2025 at 10:14 AM John Smith <john.smith@northwind.example>\nwrote:\n\n> Thanks\n",
            "Gmail, attribution wrapped",
        ),
        ("man. 13. jan. 2025 kl. 15:05 skrev Ingrid Berg <ingrid.berg@salg.example>:\n\n> Hei\n", "Gmail Norwegian"),
        ("Den 21. jan. 2025 kl. 09.30 skrev Lars Øvrebø <lars.ovrebo@salg.example>:\n\nHej\n", "Apple Mail Danish"),
        ("---------- Forwarded message ---------\nFrom: Kari\nDate: 14 Jan\n\nHei\n", "Gmail forward"),
        ("Begin forwarded message:\n\nFrom: Kari\n", "Apple Mail forward"),
    ],
)
def test_split_history_finds_start(history: str, client: str) -> None:
    new, found = split_history(NEW + history)

    assert new == NEW, client
    assert found == history, client


def test_split_history_without_history() -> None:
    assert split_history(NEW) == (NEW, "")


@pytest.mark.parametrize(
    "text",
    [
        "From: the workshop we got the hull measurements.\n",
        "Original message size was too large, so I split it.\n",
        "Kari skrev: vi trenger mer tid.\n",
        "Tracking code:\nnXmrgOguRZt63tpjM5sSpA==.\n",
        "________________________________\nHilsen Kari\n",
    ],
)
def test_split_history_keeps_running_text(text: str) -> None:
    assert split_history(NEW + text) == (NEW + text, "")


def test_split_history_keeps_line_before_attribution() -> None:
    text = "Hilsen Kari\nOn Tue, 14 Jan 2025 at 09:42, Ingrid <ingrid.berg@salg.example> wrote:\n> Hei\n"

    new, _ = split_history(text)

    assert new == "Hilsen Kari\n"


def test_codes_in_new_text_skips_quoted_code() -> None:
    mail = ParsedMail(
        subject="Sv: Tilbud",
        text="Ny kode: Tracking code: BCM+S8WGe7iC/he3CJrbEQ==.\n\n> Tracking code: 87gnV/VSKQga80stcfDvpw==.\n",
    )

    assert codes_in_new_text(mail) == {"BCM+S8WGe7iC/he3CJrbEQ=="}


def test_codes_in_new_text_reads_subject_and_html() -> None:
    mail = ParsedMail(
        subject="Levering (Sporingskode: IAVYZz7RRH1Dmq2OgDaTFA==)",
        html_text="Hei\nSporingskode: pO8OtLuw1V4kcAf/cUKJ+g==\nFra: Ola\nSendt: 3. februar 2025\n"
        "Sporingskode: 87gnV/VSKQga80stcfDvpw==\n",
    )

    assert codes_in_new_text(mail) == {"IAVYZz7RRH1Dmq2OgDaTFA==", "pO8OtLuw1V4kcAf/cUKJ+g=="}


def test_codes_in_new_text_skips_nested_messages() -> None:
    mail = ParsedMail(subject="VS: Tilbud", nested=[ParsedMail(text="Tracking code: 87gnV/VSKQga80stcfDvpw==.")])

    assert codes_in_new_text(mail) == set()
