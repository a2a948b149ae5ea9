"""Tests for the detect stage: tracking codes as mail clients and users leave them."""

from __future__ import annotations

import base64
import os
from urllib.parse import quote

import pytest

from crmstore.codes import new_code
from syncd.detect import (
    MAX_CANDIDATES,
    TRACKING_CODE_LABELS,
    find_codes,
    find_codes_in_text,
)
from syncd.mail import Address, CodeCandidate, Location, ParsedMail

CODE = "nXmrgOguRZt63tpjM5sSpA=="
OTHER_CODE = "87gnV/VSKQga80stcfDvpw=="
# Contains "3D", which quoted-printable decoding can take for an escaped "=".
CODE_WITH_3D = "q3D+fE0kT9wYb2LmZr6uHg=="

# Input sizes for the linear-time tests. A quadratic scan of two million
# characters takes hours, so the suite's timeout catches one.
HUGE = 2_000_000


def labelled(code: str, location: Location = Location.TEXT) -> CodeCandidate:
    return CodeCandidate(code=code, labelled=True, location=location)


def unlabelled(code: str, location: Location = Location.TEXT) -> CodeCandidate:
    return CodeCandidate(code=code, labelled=False, location=location)


def in_text(text: str) -> list[CodeCandidate]:
    return find_codes_in_text(text, Location.TEXT)


def parsed_mail(**fields: object) -> ParsedMail:
    defaults: dict[str, object] = {
        "message_id": "tilbud-1@salg.example",
        "subject": "Tilbud på vinterlagring for M/S Havbris",
        "sender": Address("kari.nordmann@fjordmarine.example", "Kari Nordmann"),
        "to": [Address("asmund.odegard@salg.example", "Åsmund Ødegård")],
        "text": "Hei Åsmund,\n\nTakk for sist. Vi gleder oss til å høre fra dere.\n\nHilsen Kari",
    }
    defaults.update(fields)
    return ParsedMail(**defaults)  # type: ignore[arg-type]


# --- The code as the CRM prints it ----------------------------------------------


def test_labelled_code_found() -> None:
    assert in_text(f"Hei Kari,\nTracking code: {CODE}.\nHilsen Åsmund") == [labelled(CODE)]


def test_code_without_label_unlabelled() -> None:
    assert in_text(f"Referansen vår er {CODE}, ta vare på den.") == [unlabelled(CODE)]


@pytest.mark.parametrize("after", [".", ",", ";", ")", "!", "?", '"', ".\n", "…", "</p>"])
def test_punctuation_after_code_ignored(after: str) -> None:
    assert in_text(f"Sporingskode: {CODE}{after}") == [labelled(CODE)]


def test_text_without_code_empty() -> None:
    assert in_text("Hei Kari,\nvi ser på saken == i morgen.\nHilsen Åsmund") == []


def test_base64_shorter_than_code_ignored() -> None:
    assert in_text("Tracking code: q3D+fE0kT9wYb2LmZr6u==.") == []


# --- Labels -------------------------------------------------------------------------


@pytest.mark.parametrize("label", TRACKING_CODE_LABELS)
def test_every_listed_label_recognised(label: str) -> None:
    assert in_text(f"{label}: {CODE}") == [labelled(CODE)]


@pytest.mark.parametrize(
    "label",
    [
        "TRACKING CODE:",
        "tracking code:",
        "Tracking code",
        "Tracking-Code:",
        "Trackingcode:",
        "SPORINGSKODE:",
        "sporingskode",
        "Spårningskod:",
        "SPÅRNINGSKOD",
        "Verfolgungscode:",
        "Tracking\ncode:",
        "Tracking code :",
        "Tracking code -",
        "Sporingskode: (",
        "Sporingskode: «",
    ],
)
def test_label_variant_recognised(label: str) -> None:
    assert in_text(f"Hei,\n{label} {CODE}\nHilsen Åse") == [labelled(CODE)]


def test_decomposed_swedish_label_recognised() -> None:
    # "å" typed as "a" plus a combining ring, as some Mac clients send it.
    assert in_text(f"Spa\u030arningskod: {CODE}") == [labelled(CODE)]


@pytest.mark.parametrize(
    "gap",
    ["\n", "\n\n", "   ", "\t", "\u00a0", "\r\n", "\n> ", "\n\n>> "],
    ids=["newline", "blank-line", "spaces", "tab", "nbsp", "crlf", "quoted", "double-quoted"],
)
def test_space_between_label_and_code_allowed(gap: str) -> None:
    assert in_text(f"Sporingskode:{gap}{CODE}") == [labelled(CODE)]


@pytest.mark.parametrize(
    "text",
    [
        f"Tracking code: se vedlegg. {CODE}",
        f"Sporingskode for ordre 4711: {CODE}",
        f"Tracking code: 12{CODE}",
        f"Sporingskode? {CODE}",
    ],
    ids=["sentence-between", "words-between", "digits-before-code", "question-mark"],
)
def test_label_not_directly_before_code_unlabelled(text: str) -> None:
    assert in_text(text) == [unlabelled(CODE)]


def test_longer_base64_run_yields_last_22() -> None:
    # A joined word before the code (HTML inline text has no spaces) must not
    # hide it, but then the label is no longer directly before the code.
    assert in_text(f"Tracking code: Ref{CODE}") == [unlabelled(CODE)]


def test_labels_quoted_printable_split_recognised() -> None:
    assert in_text(f"Sporings=\nkode: {CODE}") == [labelled(CODE)]


def test_label_with_escaped_space_recognised() -> None:
    assert in_text(f"Tracking code:=20{CODE}") == [labelled(CODE)]


# --- Quoted-printable left in the text ----------------------------------------------


def test_soft_line_break_inside_code() -> None:
    assert in_text(f"Tracking code: {CODE[:9]}=\n{CODE[9:]}.") == [labelled(CODE)]


def test_soft_line_break_with_crlf() -> None:
    assert in_text(f"Tracking code: {CODE[:9]}=\r\n{CODE[9:]}.") == [labelled(CODE)]


def test_soft_line_break_with_trailing_space() -> None:
    assert in_text(f"Tracking code: {CODE[:9]}= \n{CODE[9:]}.") == [labelled(CODE)]


def test_soft_line_break_before_padding() -> None:
    assert in_text(f"Tracking code: {CODE[:22]}=\n==.") == [labelled(CODE)]


def test_soft_line_break_between_label_and_code() -> None:
    assert in_text(f"Tracking code: =\n{CODE}.") == [labelled(CODE)]


@pytest.mark.parametrize("padding", ["=3D=3D", "=3d=3d", "=3D=", "==3D", "=3D=\n=3D"])
def test_escaped_padding_decoded(padding: str) -> None:
    found = in_text(f"Tracking code: {CODE[:22]}{padding}.")

    assert labelled(CODE) in found


def test_soft_break_and_escaped_padding_together() -> None:
    text = f"Sporingskode:\n> {OTHER_CODE[:12]}=\n{OTHER_CODE[12:22]}=3D=3D."

    assert in_text(text) == [labelled(OTHER_CODE)]


def test_soft_break_before_3d_inside_code() -> None:
    # The soft break leaves "=3D" that is not an escaped "=": it is the break
    # followed by the code's own "3D".
    text = f"Tracking code: {CODE_WITH_3D[:1]}=\n{CODE_WITH_3D[1:]}."

    assert labelled(CODE_WITH_3D) in in_text(text)


def test_soft_break_before_3d_with_escaped_padding() -> None:
    text = f"Tracking code: {CODE_WITH_3D[:1]}=\n{CODE_WITH_3D[1:22]}=3D=3D."

    assert labelled(CODE_WITH_3D) in in_text(text)


def test_padding_at_line_end_kept() -> None:
    text = f"Sporingskode: {CODE}\nMvh Åse =C3=98deg=C3=A5rd"

    assert in_text(text) == [labelled(CODE)]


# --- HTML artefacts ---------------------------------------------------------------------


@pytest.mark.parametrize("equals", ["&#61;", "&#x3D;", "&#X3d;", "&equals;", "&#061;"])
def test_entity_padding_decoded(equals: str) -> None:
    assert in_text(f"Sporingskode: {CODE[:22]}{equals}{equals}.") == [labelled(CODE)]


def test_entities_inside_code_decoded() -> None:
    text = "Sporingskode: 87gnV&#47;VSKQga80stcfDvpw&#61;&#61;"

    assert in_text(text) == [labelled(OTHER_CODE)]


def test_entity_nbsp_between_label_and_code() -> None:
    assert in_text(f"Sporingskode:&nbsp;{CODE}") == [labelled(CODE)]


def test_unknown_entity_left_alone() -> None:
    assert in_text(f"Sporingskode: {CODE[:22]}&nosuchthing;") == []


@pytest.mark.parametrize("tag", ["<wbr>", "<wbr/>", "<WBR />", "</span><span>", "<b>"])
def test_tag_inside_code_ignored(tag: str) -> None:
    assert in_text(f"Sporingskode: {CODE[:11]}{tag}{CODE[11:]}") == [labelled(CODE)]


@pytest.mark.parametrize("tag", ["<SPAN style='color:#fff'>", "<o:p></o:p>", "<Font color=white>", "</TD><TD>"])
def test_tag_variants_inside_code_ignored(tag: str) -> None:
    assert in_text(f"Sporingskode: {CODE[:11]}{tag}{CODE[11:]}") == [labelled(CODE)]


@pytest.mark.parametrize("tag", ["<blink>", "<spanx>", "<strikeout>"])
def test_unlisted_tag_inside_code_kept(tag: str) -> None:
    assert in_text(f"Sporingskode: {CODE[:11]}{tag}{CODE[11:]}") == []


def test_code_in_angle_brackets_not_taken_for_tag() -> None:
    assert in_text(f"Tracking code: <{CODE}>") == [labelled(CODE)]


def test_html_text_split_spans_found() -> None:
    # The parse stage joins the text of inline elements without spaces.
    mail = parsed_mail(html_text=f"Hei Kari,\n\nSporingskode: {CODE[:8]}{CODE[8:15]}{CODE[15:]}.")

    assert find_codes(mail) == [labelled(CODE, Location.HTML)]


# --- Invisible characters ---------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    ["\u00ad", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"],
    ids=["soft-hyphen", "zwsp", "zwnj", "zwj", "word-joiner", "bom"],
)
def test_invisible_character_inside_code_ignored(char: str) -> None:
    assert in_text(f"TRACKING CODE: {CODE[:12]}{char}{CODE[12:]}") == [labelled(CODE)]


def test_invisible_characters_everywhere_ignored() -> None:
    noisy = "\u200b".join(CODE)

    assert in_text(f"Spor\u00adings\u00adkode: {noisy}") == [labelled(CODE)]


def test_soft_hyphen_entity_inside_code_ignored() -> None:
    assert in_text(f"Sporingskode: {CODE[:12]}&shy;{CODE[12:]}") == [labelled(CODE)]


# --- Line wraps and quote markers ------------------------------------------------------


@pytest.mark.parametrize("marker", ["", "> ", ">> ", "> > ", ">", "  > "])
def test_wrapped_code_found(marker: str) -> None:
    text = f"> Hei Kari,\n> Sporingskode: {CODE[:10]}\n{marker}{CODE[10:]}.\n> Hilsen Åse"

    assert in_text(text) == [labelled(CODE)]


def test_wrapped_code_with_crlf_and_quote_markers_found() -> None:
    text = f"> Sporingskode: {CODE[:10]}\r\n> {CODE[10:]}\r\n"

    assert in_text(text) == [labelled(CODE)]


def test_quote_marker_inside_line_kept() -> None:
    assert in_text(f"Sporingskode: {CODE[:10]} > {CODE[10:]}") == []


def test_wrap_between_label_and_code_in_quote() -> None:
    assert in_text(f"> > Sporingskode:\n> > {CODE}.") == [labelled(CODE)]


def test_code_wrapped_over_three_lines() -> None:
    text = f"Tracking code: {CODE[:8]}\n> {CODE[8:16]}\n> {CODE[16:]}"

    assert in_text(text) == [labelled(CODE)]


# --- Deduplication, order and the cap ---------------------------------------------------


def test_repeated_code_reported_once() -> None:
    assert in_text(f"Tracking code: {CODE}.\n> Tracking code: {CODE}.") == [labelled(CODE)]


def test_labelled_occurrence_wins() -> None:
    mail = parsed_mail(subject=f"Sv: Tilbud {CODE}", text=f"Sporingskode: {CODE}")

    assert find_codes(mail) == [labelled(CODE, Location.SUBJECT)]


def test_codes_in_order_first_seen() -> None:
    text = f"Sporingskode: {OTHER_CODE}\n{CODE}\n{CODE_WITH_3D}"

    assert [c.code for c in in_text(text)] == [OTHER_CODE, CODE, CODE_WITH_3D]


def test_candidates_capped() -> None:
    text = "\n".join(new_code() for _ in range(MAX_CANDIDATES * 3))

    assert len(in_text(text)) == MAX_CANDIDATES


def test_cap_keeps_labelled_first() -> None:
    noise = "\n".join(new_code() for _ in range(MAX_CANDIDATES * 2))

    found = in_text(f"{noise}\nSporingskode: {CODE}")

    assert labelled(CODE) in found


def test_cap_applies_per_mail() -> None:
    codes = [new_code() for _ in range(MAX_CANDIDATES)]
    mail = parsed_mail(text="\n".join(codes), html_text="\n".join(new_code() for _ in range(50)))

    assert len(find_codes(mail)) == MAX_CANDIDATES


def test_cap_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    mail = parsed_mail(text="\n".join(new_code() for _ in range(MAX_CANDIDATES + 1)))

    find_codes(mail)

    assert "tilbud-1@salg.example" in caplog.text


# --- Locations in a mail -----------------------------------------------------------------


def test_code_in_subject() -> None:
    mail = parsed_mail(subject=f"Sv: Tilbud på båtpuss [Sporingskode: {CODE}]")

    assert find_codes(mail) == [labelled(CODE, Location.SUBJECT)]


def test_code_in_text() -> None:
    mail = parsed_mail(text=f"Hei Åsmund,\nTracking code: {CODE}.")

    assert find_codes(mail) == [labelled(CODE, Location.TEXT)]


def test_code_in_nested_message() -> None:
    original = parsed_mail(subject="Tilbud", text=f"Tracking code: {CODE}.")
    forward = parsed_mail(subject="Vs: Tilbud", text="Se vedlagt e-post.", nested=[original])

    assert find_codes(forward) == [labelled(CODE, Location.NESTED)]


def test_code_in_nested_html_and_subject() -> None:
    original = parsed_mail(subject=f"Ordre {OTHER_CODE}", html_text=f"Sporingskode: {CODE}")
    forward = parsed_mail(nested=[parsed_mail(text="Videresendt", nested=[original])])

    expected = [unlabelled(OTHER_CODE, Location.NESTED), labelled(CODE, Location.NESTED)]
    assert find_codes(forward) == expected


def test_outer_location_kept_when_also_nested() -> None:
    original = parsed_mail(text=f"Sporingskode: {CODE}")
    forward = parsed_mail(text=f"Sporingskode: {CODE}", nested=[original])

    assert find_codes(forward) == [labelled(CODE, Location.TEXT)]


def test_deep_nesting_handled() -> None:
    mail = parsed_mail(text=f"Sporingskode: {CODE}")
    for _ in range(5_000):
        mail = parsed_mail(nested=[mail])

    assert find_codes(mail) == [labelled(CODE, Location.NESTED)]


def test_empty_mail_has_no_candidates() -> None:
    assert find_codes(ParsedMail()) == []


# --- Percent-encoded codes in links --------------------------------------------------------
# Mail templates and link trackers percent-encode the code in a query
# parameter or path segment, as urllib.parse.quote and most web frameworks do.


def test_percent_encoded_padding_found() -> None:
    text = f"Se tilbudet: https://crm.example/track?code={CODE[:22]}%3D%3D"

    assert in_text(text) == [unlabelled(CODE)]


@pytest.mark.parametrize("padding", ["%3d%3d", "%3D=", "=%3D", "%253D%253D"])
def test_percent_encoded_padding_variants_found(padding: str) -> None:
    assert in_text(f"https://crm.example/track?code={CODE[:22]}{padding}&lang=no") == [unlabelled(CODE)]


@pytest.mark.parametrize("code", [OTHER_CODE, CODE_WITH_3D])
def test_percent_encoded_slash_and_plus_found(code: str) -> None:
    # quote() with safe="" encodes "/" as %2F, "+" as %2B and "=" as %3D.
    text = f"https://crm.example/track?code={quote(code, safe='')}"

    assert in_text(text) == [unlabelled(code)]


def test_percent_encoded_base64_letters_found() -> None:
    encoded = "".join(f"%{ord(char):02X}" for char in CODE)

    assert in_text(f"https://crm.example/track?code={encoded}") == [unlabelled(CODE)]


def test_percent_encoded_code_in_path_found() -> None:
    text = f"https://crm.example/track/{quote(OTHER_CODE, safe='')}/open"

    assert in_text(text) == [unlabelled(OTHER_CODE)]


def test_percent_encoded_code_after_label_labelled() -> None:
    assert in_text(f"Tracking code: {CODE[:22]}%3D%3D.") == [labelled(CODE)]


def test_percent_encoded_url_wrapped_over_lines_found() -> None:
    text = f"<https://crm.example/track?code={CODE[:10]}\n{CODE[10:22]}%3D%3D>"

    assert in_text(text) == [unlabelled(CODE)]


def test_safelinks_wrapping_code_url_found() -> None:
    # Outlook safelinks encode the whole tracked URL again, so the code's
    # "=" arrives as "%253D".
    tracked = f"https://crm.example/track?code={quote(CODE_WITH_3D, safe='')}"
    text = (
        f"https://eur02.safelinks.protection.outlook.com/?url={quote(tracked, safe='')}"
        "&data=05%7C02%7Case.odegard%40salg.example%7C8c1f4e2a9b7d4f6e0a3b08dd3a1c5e7f%7C0%7C0"
        "&sdata=Zm9ZkT3x1qLr8yB0nHc2pV7sWd4eQa6uJ5iXoK9gMbE%3D&reserved=0"
    )

    assert in_text(text) == [unlabelled(CODE_WITH_3D)]


# Links that carry no tracking code but long base64 values, several with
# percent-encoded "==" padding.
ORDINARY_LINKS = {
    "tracking pixel": (
        "https://px.mailtrack.example/open.gif?d=eyJ1IjoiaHR0cHM6Ly93d3cuZmpvcmRtYXJpbmUuZXhhbXBsZS90aWxidWQiLCJp"
        "IjoxNzM2ODQ2NTM3fQ%3D%3D&t=1736846537"
    ),
    "tracking pixel in path": (
        "https://px.mailtrack.example/o/eyJ1IjoiaHR0cHM6Ly93d3cuZmpvcmRtYXJpbmUuZXhhbXBsZS90aWxidWQiLCJp"
        "IjoxNzM2ODQ2NTM3fQ%3D%3D.gif"
    ),
    "outlook safelinks": (
        "https://eur02.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.fjordmarine.example%2Fvinterlagring"
        "%3Futm_source%3Dnyhetsbrev&data=05%7C02%7Case.odegard%40salg.example%7C8c1f4e2a9b7d4f6e0a3b08dd3a1c5e7f"
        "%7C72f988bf86f141af91ab2d7cd011db47%7C0%7C0%7C638724312345678901%7CUnknown%7CeyJFbXB0eU1hcGkiOnRydWUsIlYi"
        "OiIwLjAuMDAwMCIsIlAiOiJXaW4zMiIsIkFOIjoiTWFpbCIsIldUIjoyfQ%3D%3D%7C0%7C%7C%7C"
        "&sdata=Zm9ZkT3x1qLr8yB0nHc2pV7sWd4eQa6uJ5iXoK9gMbE%3D&reserved=0"
    ),
    "google redirect": (
        "https://www.google.com/url?q=https://www.fjordmarine.example/tilbud%3Fref%3Dnyhetsbrev&sa=D"
        "&source=editors&ust=1736933000000000&usg=AOvVaw3kQ9xZp2Lr7yVt0mBcD5eF"
    ),
    "google search result": (
        "https://www.google.com/url?sa=t&rct=j&q=&esrc=s&source=web&cd=&ved=2ahUKEwjX9a7b8c3dAhVQ1uAKHfZ7BqsQFnoECAgQAQ"
        "&url=https%3A%2F%2Fwww.fjordmarine.example%2F&usg=AOvVaw0Yp4mZr8sKt2LwQx6NcB3d&opi=89978449"
    ),
    "newsletter click": (
        "https://u1234567.ct.sendgrid.example/ls/click?upn=u001.Xk3QzP9wLm2Rt7Yv5Nb8Cd4Fg6Hj1Kl0Qw3Er5Ty7Ui9Op2As"
        "4Df6Gh8Jk0Lz%2BXc%2FVb1Nm3%3D%3D-2Bc4De"
    ),
}


@pytest.mark.parametrize("link", list(ORDINARY_LINKS.values()), ids=list(ORDINARY_LINKS))
def test_ordinary_link_has_no_candidates(link: str) -> None:
    assert in_text(f"Les mer her: {link}\n") == []


# --- Linear time on hostile input ---------------------------------------------------------
# No timing asserts: each input is large enough that a quadratic scan would
# not finish before the suite's timeout.


def test_many_equals_signs_linear() -> None:
    assert in_text("=" * HUGE) == []


def test_many_escaped_equals_linear() -> None:
    assert in_text("=3D" * (HUGE // 3)) == []


def test_many_soft_breaks_linear() -> None:
    assert in_text("A=\n" * (HUGE // 3)) == []


def test_alternating_base64_and_equals_linear() -> None:
    assert in_text("A=" * (HUGE // 2)) == []


def test_base64_without_padding_linear() -> None:
    blob = base64.b64encode(os.urandom(HUGE * 3 // 4)).decode("ascii")

    assert in_text(blob) == []


def test_base64_with_padding_at_end_linear() -> None:
    blob = base64.b64encode(os.urandom(HUGE * 3 // 4)).decode("ascii")

    assert in_text(f"{blob}{CODE}") == [unlabelled(CODE)]


def test_many_short_paddings_linear() -> None:
    assert in_text("AB==" * (HUGE // 4)) == []


def test_many_labels_linear() -> None:
    text = "Sporingskode: " * (HUGE // 14)

    assert in_text(f"{text}{CODE}") == [labelled(CODE)]


def test_many_labelled_codes_capped() -> None:
    text = "".join(f"Tracking code: {new_code()}.\n" for _ in range(50_000))

    assert len(in_text(text)) == MAX_CANDIDATES


def test_long_numeric_entity_handled() -> None:
    assert in_text("&#" + "9" * HUGE + ";") == []


def test_many_entity_starts_linear() -> None:
    assert in_text("&#x" * (HUGE // 3)) == []


def test_many_unclosed_tags_linear() -> None:
    assert in_text("<span " * (HUGE // 6)) == []


def test_many_quote_markers_linear() -> None:
    assert in_text("\n> >" * (HUGE // 4)) == []


def test_many_zero_width_characters_linear() -> None:
    assert in_text("\u200b" * HUGE) == []


def test_many_percent_encoded_equals_linear() -> None:
    assert in_text("A%3D" * (HUGE // 4)) == []


def test_long_percent_25_chain_linear() -> None:
    assert in_text("%" + "25" * (HUGE // 2) + "Z") == []


def test_many_percent_signs_linear() -> None:
    assert in_text("%25%2" * (HUGE // 5)) == []


def test_percent_encoded_base64_without_padding_linear() -> None:
    blob = quote(base64.b64encode(os.urandom(HUGE * 3 // 8)).decode("ascii"), safe="")

    assert in_text(f"{blob}&code={CODE[:22]}%3D%3D") == [unlabelled(CODE)]


# --- Whole messages through the parse stage ------------------------------------------------


def parse(raw: bytes) -> ParsedMail:
    # Imported here so that the text-level tests above run without the parse stage.
    from syncd.parse import parse_message

    return parse_message(raw)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def test_mime_quoted_printable_soft_break_and_escaped_padding() -> None:
    raw = crlf(
        "From: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        "To: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "Subject: Sv: Tilbud =?UTF-8?Q?p=C3=A5_b=C3=A5tpuss?=\n"
        "Message-ID: <qp-1@fjordmarine.example>\n"
        "Date: Tue, 14 Jan 2025 09:42:17 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Hei =C3=85se,\n"
        "\n"
        "Vi tar gjerne imot tilbudet p=C3=A5 b=C3=A5tpuss. Referansen deres st=C3=A5r =\n"
        "her: Tracking code: nXmrgOguRZt63=\n"
        "tpjM5sSpA=3D=3D.\n"
        "\n"
        "Hilsen Kari\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE)]


def test_mime_subject_split_over_encoded_words() -> None:
    second_half = base64.b64encode(f"{CODE[11:]}]".encode()).decode("ascii")
    raw = crlf(
        "From: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "To: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        f"Subject: =?UTF-8?Q?Tilbud_p=C3=A5_b=C3=A5tpuss_[Sporingskode:_{CODE[:11]}?=\n"
        f" =?UTF-8?B?{second_half}?=\n"
        "Message-ID: <subject-1@salg.example>\n"
        "Date: Tue, 14 Jan 2025 09:42:17 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Hei Kari, se tilbudet i emnefeltet.\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE, Location.SUBJECT)]


def test_mime_hidden_html_spans_with_wbr_and_entities() -> None:
    raw = crlf(
        "From: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "To: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        "Subject: =?UTF-8?Q?Tilbud_p=C3=A5_vinterlagring?=\n"
        "Message-ID: <html-1@salg.example>\n"
        "Date: Mon, 13 Jan 2025 15:05:31 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/html; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "<html><body>\n"
        "<p>Hei Kari,</p>\n"
        "<p>Her er tilbudet p=C3=A5 vinterlagring av M/S Havbris.</p>\n"
        '<p><span style=3D"color:#ffffff;font-size:1px">Sporingskode: <span>nXmrgOg=\n'
        "u</span><span>RZt63tp</span><wbr><span>jM5sSpA&#61;&#61;</span>.</span></p>\n"
        "</body></html>\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE, Location.HTML)]


def test_mime_forwarded_attachment_carries_code() -> None:
    raw = crlf(
        "From: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "To: crm@salg.example\n"
        "Subject: VS: Ordre\n"
        "Message-ID: <fwd-1@salg.example>\n"
        "Date: Wed, 15 Jan 2025 08:10:00 +0100\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="ytre"\n'
        "\n"
        "--ytre\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Videresender ordren fra Kari, se vedlegg.\n"
        "--ytre\n"
        "Content-Type: message/rfc822\n"
        'Content-Disposition: attachment; filename="Ordre.eml"\n'
        "\n"
        "From: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        "To: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "Subject: Ordre\n"
        "Message-ID: <ordre-1@fjordmarine.example>\n"
        "Date: Tue, 14 Jan 2025 16:00:00 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Vi bestiller båtpuss som avtalt.\n"
        f"Tracking code: {CODE}.\n"
        "--ytre--\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE, Location.NESTED)]


def test_mime_reply_with_code_wrapped_in_quote() -> None:
    raw = crlf(
        "From: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        "To: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "Subject: =?UTF-8?Q?Sv:_Tilbud_p=C3=A5_b=C3=A5tpuss?=\n"
        "Message-ID: <reply-1@fjordmarine.example>\n"
        "In-Reply-To: <tilbud-1@salg.example>\n"
        "Date: Tue, 14 Jan 2025 09:42:17 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Hei Åse,\n"
        "\n"
        "Det passer fint, vi kommer med båten på mandag.\n"
        "\n"
        "man. 13. jan. 2025 kl. 15:05 skrev Åse Ødegård <ase.odegard@salg.example>:\n"
        "> Hei Kari,\n"
        "> Her er tilbudet på båtpuss. Sporingskode: nXmrgOguRZt6\n"
        "> 3tpjM5sSpA==.\n"
        "> Hilsen Åse\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE)]


def test_mime_zero_width_space_in_quoted_printable() -> None:
    raw = crlf(
        "From: John Smith <john.smith@northwind.example>\n"
        "To: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "Subject: Order accepted\n"
        "Message-ID: <zwsp-1@northwind.example>\n"
        "Date: Tue, 21 Jan 2025 17:03:29 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "TRACKING CODE: nXmrgOguRZt6=E2=80=8B3tpjM5sSpA=3D=3D\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE)]


def test_mime_quoted_printable_link_with_percent_encoded_code() -> None:
    raw = crlf(
        "From: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "To: Kari Nordmann <kari.nordmann@fjordmarine.example>\n"
        "Subject: Tilbud =?UTF-8?Q?p=C3=A5_vinterlagring?=\n"
        "Message-ID: <url-1@salg.example>\n"
        "Date: Wed, 15 Jan 2025 08:12:40 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Hei Kari,\n"
        "\n"
        "Se tilbudet her: https://crm.example/track?code=3D87gnV%2FVSKQga80stcf=\n"
        "Dvpw%3D%3D\n"
        "\n"
        "Hilsen =C3=85se\n"
    )

    assert find_codes(parse(raw)) == [unlabelled(OTHER_CODE)]


def test_mime_quoted_printable_unencoded_padding() -> None:
    # The sender's template put the code into the quoted-printable body
    # without encoding its "==" as "=3D=3D".
    raw = crlf(
        "From: John Smith <john.smith@northwind.example>\n"
        "To: =?UTF-8?Q?=C3=85se_=C3=98deg=C3=A5rd?= <ase.odegard@salg.example>\n"
        "Subject: Order accepted\n"
        "Message-ID: <qp-padding-1@northwind.example>\n"
        "Date: Tue, 21 Jan 2025 17:03:29 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Thank you for your order. We will deliver on =\n"
        "Monday.\n"
        "Tracking code: nXmrgOguRZt63tpjM5sSpA==.\n"
    )

    assert find_codes(parse(raw)) == [labelled(CODE)]
