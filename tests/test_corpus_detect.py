"""Detect stage against real mails published as test data by open-source mail projects.

None of the corpus files contains one of our tracking codes, so every labelled
candidate in them is a false positive. For the insertion tests a code is put
into a copy of each mail the way the CRM and users put it there, and the part
is encoded again with its own Content-Transfer-Encoding.
"""

from __future__ import annotations

import base64
import codecs
import csv
import mailbox
import quopri
import re
from collections.abc import Iterator
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from crmstore.codes import new_code
from syncd.detect import MAX_CANDIDATES, find_codes, find_codes_in_text
from syncd.mail import Location, ParsedMail
from syncd.parse import DEFAULT_MAX_DEPTH, parse_message, parse_msg

CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MANIFEST = CORPUS_DIR / "MANIFEST.tsv"
NO_CORPUS = f"mail corpus not found: {MANIFEST} is missing, so the corpus tests cannot run"

RANDOM_CODES = 1_000

# Insertion stays inside what the pipeline reads: the detect stage keeps
# MAX_CANDIDATES codes per mail, and the parse stage reads nested messages
# DEFAULT_MAX_DEPTH levels deep.
MAX_INSERTED_CODES = MAX_CANDIDATES // 4

# Content-Transfer-Encodings that a part can be encoded with again after the
# code is inserted. Parts with others (x-uuencode, misspelt names) are left alone.
IDENTITY = frozenset({"7bit", "8bit", "binary"})
REENCODABLE = IDENTITY | {"quoted-printable", "base64"}

# The plain-text line starts with a sentence so that the code straddles column
# 76, where quoted-printable encoding breaks the line with a soft line break.
PLAIN_PREFIX = "Hei, her er referansen til saken vi avtalte. "

BODY_START = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)


def corpus_files(*formats: str) -> list[Any]:
    """Return one pytest parameter (path, format) per manifest row of `formats`."""
    if not MANIFEST.is_file():
        return [pytest.param(None, None, id="no-corpus", marks=pytest.mark.skip(reason=NO_CORPUS))]

    with MANIFEST.open(encoding="utf-8", newline="") as manifest:
        rows = list(csv.DictReader(manifest, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [
        pytest.param(row["path"], row["format"], id=row["path"])
        for row in rows
        if row["format"] in formats
    ]


@pytest.fixture(scope="module")
def random_codes() -> set[str]:
    return {new_code() for _ in range(RANDOM_CODES)}


def parsed_mails(path: str, file_format: str) -> Iterator[ParsedMail]:
    file = CORPUS_DIR / path
    if file_format == "msg":
        yield parse_msg(file.read_bytes())
    elif file_format == "mbox":
        box = mailbox.mbox(file, create=False)
        for key in box.keys():
            yield parse_message(box.get_bytes(key))
    else:
        yield parse_message(file.read_bytes())


# --- No false positives -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "file_format"), corpus_files("eml", "msg", "mbox"))
def test_corpus_mail_has_no_labelled_candidates(
    path: str, file_format: str, random_codes: set[str]
) -> None:
    for mail in parsed_mails(path, file_format):
        candidates = find_codes(mail)

        assert [c for c in candidates if c.labelled] == []
        assert {c.code for c in candidates} & random_codes == set()


@pytest.mark.parametrize(("path", "file_format"), corpus_files("body-text", "html-fragment"))
def test_corpus_text_has_no_labelled_candidates(
    path: str, file_format: str, random_codes: set[str]
) -> None:
    text = (CORPUS_DIR / path).read_bytes().decode("utf-8", "replace")
    location = Location.HTML if file_format == "html-fragment" else Location.TEXT

    candidates = find_codes_in_text(text, location)

    assert [c for c in candidates if c.labelled] == []
    assert {c.code for c in candidates} & random_codes == set()


# --- Codes inserted into real mails ------------------------------------------------------


@pytest.mark.parametrize(("path", "file_format"), corpus_files("eml"))
def test_corpus_inserted_code_found(path: str, file_format: str) -> None:
    raw = (CORPUS_DIR / path).read_bytes()
    copy, inserted, skipped = insert_codes(raw)
    if not inserted:
        pytest.skip("no text part to insert a code into: " + "; ".join(skipped))

    found = {candidate.code: candidate for candidate in find_codes(parse_message(copy))}

    for code, part in inserted.items():
        assert code in found, f"code {code} inserted into the {part} was not found"
        assert found[code].labelled, f"code {code} in the {part} was found without its label"


def insert_codes(raw: bytes) -> tuple[bytes, dict[str, str], list[str]]:
    """Insert a new code into each inline text part of a copy of `raw`.

    At most MAX_INSERTED_CODES parts get one. Returns the copy, the inserted
    codes with the part each went into, and a note for each text part that
    could not take one.
    """
    message = BytesParser(policy=compat32).parsebytes(raw)
    inserted: dict[str, str] = {}
    skipped: list[str] = []

    for number, (part, depth) in enumerate(text_parts(message)):
        content_type = part.get_content_type()
        description = f"{content_type} part #{number}"
        if content_type == "message/rfc822":
            skipped.append(f"{description} is encoded as a whole, so its text parts are left alone")
            continue
        if part.get_content_disposition() == "attachment":
            skipped.append(f"{description} is an attachment")
            continue
        if depth > DEFAULT_MAX_DEPTH:
            skipped.append(f"{description} is nested {depth} messages deep")
            continue
        if len(inserted) == MAX_INSERTED_CODES:
            skipped.append(f"{description} is past the first {MAX_INSERTED_CODES} text parts")
            continue

        code = new_code()
        problem = insert_code(part, code)
        if problem:
            skipped.append(f"{description}: {problem}")
        else:
            inserted[code] = description

    if not inserted and not skipped:
        defects = ", ".join(type(defect).__name__ for defect in message.defects)
        skipped.append(
            f"the email package finds no text/plain or text/html part under the top-level "
            f"{message.get_content_type()}" + (f" ({defects})" if defects else "")
        )

    linesep = "\r\n" if b"\r\n" in raw else "\n"
    policy = compat32.clone(linesep=linesep, max_line_length=0)
    buffer = BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=policy).flatten(message)
    return buffer.getvalue(), inserted, skipped


def text_parts(message: Message) -> Iterator[tuple[Message, int]]:
    """Yield each text/plain and text/html leaf with its message/rfc822 depth.

    Only multipart and message/rfc822 containers are entered: the header
    blocks of a message/delivery-status part look like text parts to the
    email package, but no client shows them as text. A message/rfc822 part
    with a base64 or quoted-printable Content-Transfer-Encoding is yielded
    itself, because editing a part inside it would need the whole carried
    message encoded again.
    """
    pending = [(message, 0)]
    while pending:
        part, depth = pending.pop()
        content_type = part.get_content_type()
        children = part.get_payload() if part.is_multipart() else []
        if part.get_content_maintype() == "multipart":
            pending.extend((child, depth) for child in reversed(children))
        elif content_type == "message/rfc822" and content_transfer_encoding(part) in IDENTITY:
            pending.extend((child, depth + 1) for child in reversed(children))
        elif content_type == "message/rfc822":
            yield part, depth
        elif content_type in ("text/plain", "text/html") and not children:
            yield part, depth


def content_transfer_encoding(part: Message) -> str:
    return str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()


def insert_code(part: Message, code: str) -> str | None:
    """Insert `code` into one text part, or return why it could not."""
    encoding = content_transfer_encoding(part)
    if encoding not in REENCODABLE:
        return f"cannot encode Content-Transfer-Encoding {encoding!r} again"

    body = part.get_payload(decode=True)
    if not isinstance(body, bytes):
        return "the payload cannot be decoded"

    # An unknown charset is read as Latin-1, which gives every byte back
    # unchanged. The inserted text is ASCII, so the rest of the part reads as
    # before. Undecodable bytes pass through as surrogates for the same reason.
    charset = part.get_content_charset() or "us-ascii"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "latin-1"

    try:
        text = body.decode(charset, "surrogateescape")
    except UnicodeError as exc:
        return f"the body is not valid {charset}: {exc}"

    if part.get_content_type() == "text/html":
        text = insert_hidden_span(text, code)
    else:
        text = insert_plain_line(text, code)

    try:
        data = text.encode(charset, "surrogateescape")
    except UnicodeError as exc:
        return f"the body cannot be encoded as {charset} again: {exc}"

    part.set_payload(encode_body(data, encoding).decode("ascii", "surrogateescape"))
    return None


def insert_plain_line(text: str, code: str) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    return f"{PLAIN_PREFIX}Tracking code: {code}.{newline}{newline}{text}"


def insert_hidden_span(text: str, code: str) -> str:
    # The code is split over two spans, as a template editor leaves it.
    span = (
        f'<span style="display:none">Sporingskode: '
        f"<span>{code[:11]}</span><span>{code[11:]}</span></span>"
    )
    anchor = BODY_START.search(text) or HEAD_END.search(text)
    at = anchor.end() if anchor else 0
    return text[:at] + span + text[at:]


def encode_body(data: bytes, encoding: str) -> bytes:
    if encoding == "quoted-printable":
        return quopri.encodestring(data)
    if encoding == "base64":
        return base64.encodebytes(data)
    return data
