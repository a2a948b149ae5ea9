"""Removing one address from mail text and raw MIME, in every form a mail can carry it."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from factories import OutlookMail, make_mail, make_outlook_msg

from syncd.parse import parse_item
from syncd.scrub import PLACEHOLDER, RawOutcome, mentions_in_raw, scrub_raw, scrub_text

KARI = "kari.nordmann@fjordmarine.example"
INGRID = "ingrid.berg@salg.example"


def _parsed_text(raw: bytes) -> str:
    mail = parse_item(raw, "eml")
    return " ".join([mail.subject, mail.text, mail.html_text, *(a.email for a in mail.addresses())])


def test_text_replaces_any_case() -> None:
    assert scrub_text(f"Skriv til {KARI.upper()}.", KARI) == f"Skriv til {PLACEHOLDER}."


def test_text_keeps_longer_addresses() -> None:
    text = f"ola.{KARI} og {KARI}.no"

    assert scrub_text(text, KARI) == text


def test_raw_without_address_unchanged() -> None:
    raw = make_mail(sender=f"Ingrid Berg <{INGRID}>", to="Ola Hansen <ola.hansen@fjordmarine.example>")

    assert scrub_raw(raw, "eml", KARI) == (raw, RawOutcome.UNCHANGED)


def test_raw_header_and_plain_body_replaced() -> None:
    raw = make_mail(sender=f"Kari Nordmann <{KARI}>", text=f"Hilsen Kari, {KARI}\n")

    cleaned, outcome = scrub_raw(raw, "eml", KARI)

    assert outcome is RawOutcome.REWRITTEN
    assert cleaned is not None
    assert KARI.encode() not in cleaned
    assert message_from_bytes(cleaned, policy=policy.default)["From"].addresses[0].addr_spec == PLACEHOLDER
    assert f"Hilsen Kari, {PLACEHOLDER}" in _parsed_text(cleaned)


def test_raw_base64_body_and_encoded_subject_rewritten() -> None:
    message = EmailMessage()
    message["From"] = f"Ingrid Berg <{INGRID}>"
    message["To"] = "John Smith <john.smith@northwind.example>"
    message["Subject"] = f"Spørsmål fra {KARI} – æøå"
    message.set_content(f"Kontakt {KARI} for detaljer om skroget på Tromsø-båten.\n", cte="base64")
    raw = message.as_bytes()

    cleaned, outcome = scrub_raw(raw, "eml", KARI)

    assert outcome is RawOutcome.REWRITTEN
    assert cleaned is not None
    assert KARI not in _parsed_text(cleaned)
    assert f"Spørsmål fra {PLACEHOLDER} – æøå" in _parsed_text(cleaned)
    assert "Tromsø-båten" in _parsed_text(cleaned)


def test_raw_attached_message_rewritten() -> None:
    original = make_mail(sender=f"Kari Nordmann <{KARI}>", subject="Skrog – æøå", text="Ring meg.\n")
    raw = make_mail(sender=f"Ingrid Berg <{INGRID}>", text="Se vedlagt.\n", attached_messages=[original])

    cleaned, outcome = scrub_raw(raw, "eml", KARI)

    assert outcome is RawOutcome.REWRITTEN
    assert cleaned is not None
    assert not mentions_in_raw(cleaned, KARI)
    assert [nested.sender.email for nested in parse_item(cleaned, "eml").nested if nested.sender] == [PLACEHOLDER]


def test_raw_soft_line_break_rewritten() -> None:
    # Quoted-printable may break a line inside the address; only decoding finds it.
    body = f"Har du spørsmål om skroget og riggen, kan du skrive til {KARI}\n"
    message = EmailMessage()
    message["From"] = f"Ingrid Berg <{INGRID}>"
    message["To"] = "John Smith <john.smith@northwind.example>"
    message["Subject"] = "Skrog"
    message.set_content(body, cte="quoted-printable")
    raw = message.as_bytes()
    assert KARI.encode() not in raw

    cleaned, outcome = scrub_raw(raw, "eml", KARI)

    assert outcome is RawOutcome.REWRITTEN
    assert cleaned is not None
    assert KARI not in _parsed_text(cleaned)


def test_raw_html_entity_dropped() -> None:
    # An address written with an HTML entity survives byte and part rewrites,
    # so the raw copy goes.
    raw = make_mail(
        sender=f"Ingrid Berg <{INGRID}>",
        text=None,
        html="<p>Kontakt kari.nordmann&#64;fjordmarine.example – æøå</p>",
    )

    assert scrub_raw(raw, "eml", KARI) == (None, RawOutcome.DROPPED)


def test_outlook_msg_mentioning_address_dropped() -> None:
    raw = make_outlook_msg(OutlookMail(sender_name="Kari Nordmann", sender_email=KARI))

    assert scrub_raw(raw, "msg", KARI) == (None, RawOutcome.DROPPED)


def test_outlook_msg_without_address_kept() -> None:
    raw = make_outlook_msg(OutlookMail(sender_name="Ingrid Berg", sender_email=INGRID))

    assert scrub_raw(raw, "msg", KARI) == (raw, RawOutcome.UNCHANGED)
