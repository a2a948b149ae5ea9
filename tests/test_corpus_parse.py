"""Every eml, msg and mbox file of the shared mail corpus goes through the parse stage."""

from __future__ import annotations

import functools
import mailbox
from pathlib import Path

import pytest

from syncd.mail import ParsedMail
from syncd.parse import parse_message, parse_msg

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"mail corpus not found: {MANIFEST} is missing")

PARSED_FORMATS = ("eml", "msg", "mbox")
BODY_TAGS = {"text-only", "html-only", "multipart-alternative"}

#: Files tagged as having a body whose text parts are in fact empty, each
#: checked by reading the file.
EMPTY_BODIES = {
    "flanker/false-multipart.eml": "multipart/alternative header over a body of blank lines",
    "mime4j/multipartdigestnestedemptyparts.eml": "the digest's only message has one empty part",
    "msgreader-net/EmailWithISO_8859_1_From.eml": "headers and an empty body",
    "php-mime-mail-parser/m0004.eml": "text/plain is blank and text/html is a lone <br>",
    "php-mime-mail-parser/m0005.eml": "text/plain is blank and text/html is a lone <br>",
    "php-mime-mail-parser/m0010.eml": "text/plain is blank and text/html is a lone <br>",
    "ruby-mail/attachment_message_rfc822_inline_image.eml": (
        "the HTML holds only an image, and the attached mail is cut off after its headers"
    ),
    "ruby-mail/must_supply_encoding.eml": "headers only",
    "ruby-mail/raw_email_with_binary_encoded.eml": "the only part under multipart/alternative is an image/jpeg",
    "stalwart-mail-parser/rfc-001.eml": "only message/external-body parts",
    "stalwart-mail-parser/thirdparty-011.eml": "text/plain is empty and the HTML holds only an image",
    "zbateson-mail-mime-parser/m3003.eml": "the text/plain part is empty; the rest is an image",
    "zbateson-mail-mime-parser/m3004.eml": "the text/plain part is empty; the text is an attachment",
}


def manifest_rows() -> list[tuple[str, str, set[str]]]:
    """Return (path, format, tags) for every file of a format the parse stage reads."""
    if not MANIFEST.is_file():
        return []
    rows = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines()[1:]:
        columns = line.split("\t")
        path, file_format, tags = columns[0], columns[5], set(columns[6].split(","))
        if file_format in PARSED_FORMATS:
            rows.append((path, file_format, tags))
    return rows


ROWS = manifest_rows()


@functools.cache
def parse_file(path: str, file_format: str) -> tuple[ParsedMail, ...]:
    """Parse one corpus file, once per test run, into its messages."""
    if file_format == "mbox":
        box = mailbox.mbox(CORPUS / path, create=False)
        try:
            return tuple(parse_message(box.get_bytes(key)) for key in box.keys())
        finally:
            box.close()
    raw = (CORPUS / path).read_bytes()
    return (parse_message(raw) if file_format == "eml" else parse_msg(raw),)


def has_body_text(mail: ParsedMail) -> bool:
    return bool(mail.text.strip() or mail.html_text.strip()) or any(has_body_text(nested) for nested in mail.nested)


def test_manifest_lists_files_to_parse() -> None:
    assert len(ROWS) > 200


@pytest.mark.parametrize(("path", "file_format"), [(path, fmt) for path, fmt, _ in ROWS], ids=[row[0] for row in ROWS])
def test_corpus_file_parses(path: str, file_format: str) -> None:
    mails = parse_file(path, file_format)

    assert mails
    assert all(isinstance(mail, ParsedMail) for mail in mails)


BODY_ROWS = [(path, fmt) for path, fmt, tags in ROWS if tags & BODY_TAGS and path not in EMPTY_BODIES]


@pytest.mark.parametrize(("path", "file_format"), BODY_ROWS, ids=[row[0] for row in BODY_ROWS])
def test_corpus_body_text_comes_out(path: str, file_format: str) -> None:
    for mail in parse_file(path, file_format):
        assert has_body_text(mail)


def test_empty_body_list_names_manifest_files() -> None:
    listed = {path for path, _, _ in ROWS}

    assert set(EMPTY_BODIES) <= listed
