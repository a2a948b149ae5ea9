"""Hostile and broken mail through the whole pipeline: each ends filed, unmatched or failed with a reason.

Three kinds of input go through Pipeline.process against a real store:
real-world mail from the shared corpus, broken MIME that hypothesis builds
(bad boundaries, charsets and transfer encodings, endless nesting, huge
headers, NUL bytes), and pathological strings aimed at parse and detect.
No test asserts a duration. Instead, the inputs are large enough that a step
taking quadratic time would run for minutes, and an alarm per test turns
such a hang into a failure that names the input.
"""

from __future__ import annotations

import base64
import itertools
import json
import mailbox
import quopri
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from click.testing import CliRunner
from factories import OutlookMail, make_mail, make_outlook_msg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from crmstore import crm, db
from crmstore.models import Correspondence, ProcessedItem, UnmatchedMail
from syncd.backends.base import Folder, Item
from syncd.cli.main import cli
from syncd.mail import Outcome, UnmatchedReason
from syncd.parse import MAX_ADDRESSES, MAX_PARTS, parse_item, parse_message
from syncd.pipeline import ItemResult, Pipeline
from syncd.record import Source
from syncd.settings import LimitSettings

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MANIFEST = CORPUS / "MANIFEST.tsv"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"

#: The tracking code of the one record in the store, as printed in mails.
CODE = "nXmrgOguRZt63tpjM5sSpA=="
KARI = "kari.nordmann@fjordmarine.example"
INGRID = "ingrid.berg@salg.example"

#: Seconds after which a test counts as hung. Every input here takes a few
#: seconds at most, and a step with quadratic time takes minutes.
HANG_SECONDS = 60

FOLDER = Folder(key="hostile", name="Hostile")

_item_numbers = itertools.count(1)


# --- the store and the hang guard ---------------------------------------


class Hang(BaseException):
    """Raised by the alarm. It is a BaseException, so the pipeline's broad handler cannot keep it as a failed mail."""


@contextmanager
def hang_guard(what: str, seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail with Hang, naming `what`, when the block runs longer than `seconds`."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"{what} still running after {seconds} s: a step takes more than linear time")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def add_fjord(sessions: sessionmaker[Session]) -> None:
    """Add a CRM user, an organisation, its contact person and an offer whose tracking code is CODE."""
    with sessions() as session, session.begin():
        crm.add_user(session, "Ingrid Berg", INGRID)
        organisation = crm.add_organisation(session, "Fjord Marine AS")
        person = crm.add_person(session, organisation.id, "Kari Nordmann", [KARI])
        crm.add_record(session, "offer", organisation.id, "Tilbud – skrog og rigg", person.id, tracking_code=CODE)


@pytest.fixture(scope="module")
def sqlite_sessions(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sessionmaker[Session]]:
    """One SQLite store for the module's hypothesis examples, which use new item ids each."""
    path = tmp_path_factory.mktemp("hostile") / "syncd.db"
    shutil.copy(sqlite_template, path)
    engine = db.create_store_engine(f"sqlite:///{path}")
    sessions = db.session_factory(engine)
    add_fjord(sessions)
    yield sessions
    engine.dispose()


def process(
    pipeline: Pipeline, raw: bytes | None, what: str, *, file_format: str = "eml", size: int | None = None
) -> tuple[ItemResult, Source]:
    """Run one item through the pipeline under the hang guard, as a backend would yield it."""
    item_id = f"{what}#{next(_item_numbers)}"
    item = Item(FOLDER, item_id, raw=raw, format=file_format, size=size)
    source = Source("hostile@salg.example", FOLDER.key, FOLDER.name, item_id)
    with hang_guard(what):
        result = pipeline.process(item, source)
    return result, source


@dataclass(frozen=True)
class Kept:
    """What the store holds for one item: its ledger outcome and, if unfiled, the queue entry."""

    outcome: str
    correspondence: Correspondence | None
    unmatched: UnmatchedMail | None


def kept(sessions: sessionmaker[Session], source: Source) -> Kept:
    with sessions() as session:
        entry = session.scalar(
            select(ProcessedItem).where(
                ProcessedItem.mailbox == source.mailbox,
                ProcessedItem.folder_key == source.folder_key,
                ProcessedItem.item_id == source.item_id,
            )
        )
        if entry is None:
            return Kept("missing from the ledger", None, None)
        correspondence = session.get(Correspondence, entry.correspondence_id) if entry.correspondence_id else None
        unmatched = session.get(UnmatchedMail, entry.unmatched_id) if entry.unmatched_id else None
        if unmatched is not None:
            # raw_mime is deferred, so it is loaded while the session is open.
            _ = unmatched.raw_mime
        session.expunge_all()
        return Kept(entry.outcome, correspondence, unmatched)


def problems_with(sessions: sessionmaker[Session], source: Source, result: ItemResult) -> list[str]:
    """Return what is wrong with how the store kept one item, or an empty list when it ended as it must."""
    found = kept(sessions, source)
    if found.outcome != result.outcome.value:
        return [f"ledger says {found.outcome!r}, the pipeline returned {result.outcome.value!r}"]
    if found.outcome in (Outcome.FILED, Outcome.DUPLICATE) and found.correspondence is not None:
        return []
    if found.unmatched is None:
        return [f"{found.outcome} without a correspondence or an unmatched entry"]
    if not found.unmatched.reason:
        return ["unmatched entry without a reason"]
    if found.outcome == Outcome.FAILED and not found.unmatched.detail:
        return [f"failed ({found.unmatched.reason}) without a detail"]
    if found.unmatched.raw_mime is None and found.unmatched.reason != UnmatchedReason.TOO_LARGE:
        return [f"{found.outcome} ({found.unmatched.reason}) without its raw bytes"]
    return []


# --- the real-world corpus ----------------------------------------------


def corpus_items() -> list[tuple[str, str, bytes]]:
    """Return (name, format, bytes) for every eml and msg file and every message of every mbox in the corpus."""
    if not MANIFEST.is_file():
        pytest.skip(f"mail corpus not found: {MANIFEST} is missing")
    items: list[tuple[str, str, bytes]] = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines()[1:]:
        columns = line.split("\t")
        path, file_format = columns[0], columns[5]
        if file_format in ("eml", "msg"):
            items.append((path, file_format, (CORPUS / path).read_bytes()))
        elif file_format == "mbox":
            box = mailbox.mbox(CORPUS / path, create=False)
            try:
                items += [(f"{path}#{index}", "eml", box.get_bytes(key)) for index, key in enumerate(box.keys())]
            finally:
                box.close()
    return items


def test_corpus_every_mail_kept(sessions: sessionmaker[Session]) -> None:
    add_fjord(sessions)
    pipeline = Pipeline(sessions, LimitSettings())

    problems = []
    for name, file_format, raw in corpus_items():
        result, source = process(pipeline, raw, name, file_format=file_format)
        problems += [f"{name}: {problem}" for problem in problems_with(sessions, source, result)]

    assert problems == []


def test_corpus_endless_parts_capped() -> None:
    path = CORPUS / "flanker" / "enclosed-endless.eml"
    if not path.is_file():
        pytest.skip(f"mail corpus not found: {path} is missing")

    with hang_guard(path.name):
        mail = parse_message(path.read_bytes())

    [nested] = mail.nested
    assert f"2043 MIME parts not read: at most {MAX_PARTS} parts of one mail are read" in nested.defects
    assert "dudes... you're kicking ass." in nested.html_text


# --- inputs aimed at one weak spot each ---------------------------------

BODY = f"Hei Ingrid,\r\n\r\nTracking code: {CODE}.\r\n\r\nHilsen Kari\r\n"


def headers(*lines: str, body: str = BODY) -> bytes:
    """Build a mail from header lines and a body, adding From and Message-ID when absent.

    The sender that is added is no contact person, so the mail is filed
    only when the tracking code is found.
    """
    names = {line.partition(":")[0].lower() for line in lines}
    head = list(lines)
    if "from" not in names:
        head.insert(0, "From: Ola Ukjent <ola@ukjent.example>")
    if "message-id" not in names:
        head.append(f"Message-ID: <hostile-{next(_item_numbers)}@fjordmarine.example>")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")


HIDDEN_CODE = f'<span style="display:none">Tracking code: {CODE}.</span>'


def html_mail(html: str) -> bytes:
    """Build an HTML mail that carries `html` and then the tracking code in hidden text."""
    return headers("Subject: Tilbud på skrog", "Content-Type: text/html; charset=utf-8", body=html + HIDDEN_CODE)


def nested_multiparts(levels: int) -> bytes:
    body = f"Tracking code: {CODE}."
    for level in range(levels):
        body = f"Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n{body}\r\n--b{level}--\r\n"
    content_type, _, rest = body.partition("\r\n\r\n")
    return headers("Subject: Dypt", content_type, body=rest)


def nested_messages(levels: int) -> bytes:
    raw = headers("Subject: Nivå 0")
    for level in range(1, levels):
        raw = headers(f"Subject: Nivå {level}", "Content-Type: message/rfc822", body="") + raw
    return raw


def quoted_forward(depth: int) -> bytes:
    """Build a CRM user's forward whose header block and body are quoted `depth` levels deep."""
    quote = "> " * depth
    block = f"{quote}---------- Forwarded message ---------\r\n{quote}From: Kari <{KARI}>\r\n{quote}Subject: Tilbud\r\n"
    body = block + f"{quote}Tracking code: {CODE}.\r\n" * 20
    return headers(f"From: Ingrid Berg <{INGRID}>", "Subject: Fwd: Tilbud", body=body)


#: Inputs that made a step of parse, detect or resolve raise or take
#: quadratic time before it was fixed, each about 1 MB, with the outcome
#: that each must have.
WEAK_SPOTS: dict[str, tuple[Callable[[], bytes], Outcome]] = {
    "100k recipients": (
        lambda: headers("To: " + ",\r\n ".join(f"Kunde {i} <k{i}@example.no>" for i in range(100_000))),
        Outcome.FILED,
    ),
    "comments in From": (lambda: headers(f"From: {KARI} " + "(c)" * 300_000), Outcome.FILED),
    "quoted From name": (lambda: headers(f'From: "{"Kari " * 200_000}" <{KARI}>'), Outcome.FILED),
    "encoded words in To": (
        lambda: headers("To: " + "\r\n\t".join(["=?utf-8?Q?dato=3E2017-08-20T10:08:28=3C/pr?="] * 20_000)),
        Outcome.FILED,
    ),
    "encoded words in Subject": (
        lambda: headers("Subject: " + "\r\n ".join(["=?utf-8?q?p=C3=A5?="] * 50_000)),
        Outcome.FILED,
    ),
    "parameters in Content-Type": (
        lambda: headers(
            "Content-Type: multipart/mixed; boundary=zz" + "".join(f";\r\n a{i}=1" for i in range(100_000)),
            body=f"--zz\r\n\r\n{BODY}\r\n--zz--\r\n",
        ),
        Outcome.FILED,
    ),
    "huge Message-ID": (lambda: headers(f"Message-ID: <{'a' * 1_000_000}@fjordmarine.example>"), Outcome.FILED),
    "100k References": (
        lambda: headers("References: " + " ".join(f"<r{i}@x.no>" for i in range(100_000))),
        Outcome.FILED,
    ),
    "100k headers": (lambda: headers(*[f"X-Spor-{i}: verdi" for i in range(100_000)]), Outcome.FILED),
    "decimal reference flood": (lambda: html_mail("<p>&#" + "1" * 1_000_000 + ";</p>"), Outcome.FILED),
    "character reference flood": (lambda: html_mail("&#" * 500_000), Outcome.FILED),
    "comment flood in Outlook comment": (
        lambda: html_mail("<!--[if mso]>" + "<!--" * 250_000 + "-->"),
        Outcome.FILED,
    ),
    "unclosed tags": (lambda: html_mail("<a b=c " * 150_000), Outcome.FILED),
    "deep HTML": (lambda: html_mail("<div><span>" * 100_000), Outcome.FILED),
    "punycode body": (
        lambda: headers(
            "Content-Type: text/plain; charset=punycode", body="a" * 500_000 + "-" + "b" * 500_000 + "\r\n" + BODY
        ),
        Outcome.FILED,
    ),
    "long run of equals signs": (lambda: headers(body="=" * 1_000_000 + BODY), Outcome.FILED),
    "base64 without padding": (lambda: headers(body="nXmrgOguRZt63tpjM5sSpA" * 50_000 + BODY), Outcome.FILED),
    "equals between base64": (lambda: headers(body="A=" * 500_000 + "==" + BODY), Outcome.FILED),
    "repeated labels": (lambda: headers(body="Tracking code: " * 70_000 + BODY), Outcome.FILED),
    "code-shaped strings": (
        lambda: headers(body=" ".join(base64.b64encode(i.to_bytes(16, "big")).decode() for i in range(40_000)) + BODY),
        Outcome.FILED,
    ),
    "NUL bytes": (lambda: headers("Subject: \x00\x00", body="\x00" * 1_000_000 + BODY), Outcome.FILED),
    "quoted forward 100k deep": (lambda: quoted_forward(100_000), Outcome.FILED),
    "multipart 5000 deep": (lambda: nested_multiparts(5000), Outcome.FILED),
    "message/rfc822 5000 deep": (lambda: nested_messages(5000), Outcome.FILED),
    "20k parts": (
        lambda: headers(
            "Content-Type: multipart/mixed; boundary=d",
            body=f"--d\r\n\r\n{BODY}\r\n"
            + "".join(f"--d\r\nContent-Type: text/html\r\n\r\n<p>del {i}</p>\r\n" for i in range(20_000))
            + "--d--\r\n",
        ),
        Outcome.FILED,
    ),
}


@pytest.mark.parametrize("name", list(WEAK_SPOTS))
def test_weak_spot_kept(sqlite_sessions: sessionmaker[Session], name: str) -> None:
    build, expected = WEAK_SPOTS[name]
    pipeline = Pipeline(sqlite_sessions, LimitSettings())

    result, source = process(pipeline, build(), name)

    assert problems_with(sqlite_sessions, source, result) == []
    assert result.outcome is expected


def test_recipients_beyond_max_addresses_skipped() -> None:
    mail = parse_message(WEAK_SPOTS["100k recipients"][0]())

    assert len(mail.to) == MAX_ADDRESSES
    assert f"To header: more than {MAX_ADDRESSES} addresses, the rest not read" in mail.defects


#: Values longer than the store's columns, which PostgreSQL rejects.
OVERSIZE_VALUES = {
    "address": f"From: kari@{'fjord' * 80}.example",
    "display name": f'From: "{"Kari Nordmann " * 30}" <{KARI}>',
    "Message-ID": f"Message-ID: <{'a' * 2000}@fjordmarine.example>",
    "In-Reply-To": f"In-Reply-To: <{'a' * 2000}@fjordmarine.example>",
}


@pytest.mark.parametrize("field", list(OVERSIZE_VALUES))
def test_oversize_value_filed(sessions: sessionmaker[Session], field: str) -> None:
    add_fjord(sessions)
    pipeline = Pipeline(sessions, LimitSettings())

    result, source = process(pipeline, headers(OVERSIZE_VALUES[field]), field)

    assert problems_with(sessions, source, result) == []
    assert result.outcome is Outcome.FILED


# --- broken MIME that hypothesis builds ---------------------------------

#: Pieces of body text: Norwegian prose, the code as mail clients mangle it,
#: and strings aimed at the detect stage.
FRAGMENTS = [
    "Hei Mette,\n\nVedlagt er tilbudet på skrog – æøå.\n",
    f"Tracking code: {CODE}.",
    f"Sporingskode: {CODE[:11]}=\n{CODE[11:]}",
    f"Tracking code: {CODE[:8]}<span>{CODE[8:16]}</span><wbr>{CODE[16:]}",
    f"Tracking code: {''.join(f'&#{ord(c)};' for c in CODE)}",
    f"Tracking\u200b code: {CODE[:5]}\u200b{CODE[5:]}",
    f"> > Tracking code: {CODE[:12]}\n> > {CODE[12:]}",
    f"Tracking code: {CODE[:10]}=3D{CODE[10:]}",
    "---------- Forwarded message ---------\nFrom: Kari <kari.nordmann@fjordmarine.example>\nSubject: Tilbud\n\n",
    "-----Original Message-----\nFrom: x\nSent: i går\n",
    "=" * 300,
    "nXmrgOguRZt63tpjM5sSpA" * 20,
    "Tracking code: " * 30,
    "&#" * 100,
    "&#" + "9" * 5000 + ";",
    "<a b=c " * 50,
    "<!--" * 50,
    "<![if mso]>" * 10,
    "<div>" * 200,
    "\x00\x00",
    "\r\r\n\n\r",
    "\ud800\udfff",
]

CHARSETS = [
    "utf-8", "iso-8859-1", "windows-1252", "us-ascii", "utf-16", "utf-7", "koi8-r", "shift_jis",
    "iso-2022-jp", "gb18030", "punycode", "unicode-escape", "idna", "base64", "x-unknown", "", '"',
]  # fmt: skip
ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus", ""]
CONTENT_TYPES = [
    "text/plain", "text/html", "text/plain; format=flowed", "application/octet-stream", "image/png",
    "application/ms-tnef", "application/vnd.ms-outlook", "text", "", "multipart/mixed", "message/rfc822",
]  # fmt: skip
BOUNDARIES = st.one_of(
    st.text(alphabet="abcXYZ019'()+_,-./:=? ", min_size=1, max_size=70),
    st.sampled_from(["", '"', "--", "=_Part_1", "a" * 200]),
)

body_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=40)), max_size=6).map("".join)


def encode_body(text: str, charset: str, encoding: str, breakage: int) -> bytes:
    """Encode `text` as `charset` and `encoding` would, then break the result in one of several ways."""
    try:
        data = text.encode(charset or "utf-8", "replace")
    except (LookupError, ValueError, TypeError):
        data = text.encode("utf-8", "surrogatepass")

    if encoding == "base64":
        data = base64.encodebytes(data)
        if breakage == 1:
            data = data.replace(b"=", b"")
        elif breakage == 2:
            data = data[: len(data) // 2] + b"!*~" + data[len(data) // 2 :]
        elif breakage == 3:
            data = data[:-3]
    elif encoding == "quoted-printable":
        data = quopri.encodestring(data)
        if breakage == 1:
            data += b"=ZZ=\r\n="
        elif breakage == 2:
            data = data.replace(b"=\n", b"= \t \n")
    elif breakage == 1:
        data += b"\x00\xff\xfe"
    return data


@st.composite
def leaf_part(draw: st.DrawFn) -> bytes:
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    encoding = draw(st.sampled_from(ENCODINGS))
    filename = draw(st.sampled_from(["", "tilbud.msg", "videresendt.eml", "winmail.dat", "æøå.txt"]))
    disposition = draw(st.sampled_from(["", "inline", "attachment", "attachment; filename*=utf-8''%C3%A6"]))
    body = encode_body(draw(body_text), charset, encoding, draw(st.integers(0, 3)))

    lines = [f'Content-Type: {content_type}; charset="{charset}"' + (f'; name="{filename}"' if filename else "")]
    if encoding:
        lines.append(f"Content-Transfer-Encoding: {encoding}")
    if disposition:
        lines.append(f"Content-Disposition: {disposition}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


@st.composite
def multipart(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    boundary = draw(BOUNDARIES)
    declared = boundary if draw(st.integers(0, 4)) else draw(BOUNDARIES)
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest", "signed", "x-ukjent"]))
    parts = draw(st.lists(children, max_size=4))
    closed = draw(st.booleans())
    preamble = draw(st.sampled_from([b"", b"This is a multi-part message in MIME format.\r\n", b"--\r\n"]))

    head = f'Content-Type: multipart/{subtype}; boundary="{declared}"\r\n\r\n'.encode("utf-8", "surrogateescape")
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return head + preamble + body + (delimiter + b"--\r\n" if closed else b"")


@st.composite
def carried_message(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    inner = draw(top_headers()) + draw(children)
    encoding = draw(st.sampled_from(["", "base64"]))
    if encoding:
        inner = base64.encodebytes(inner)
    head = "Content-Type: message/rfc822\r\n" + (f"Content-Transfer-Encoding: {encoding}\r\n" if encoding else "")
    return head.encode() + b"\r\n" + inner


mime_tree = st.recursive(
    leaf_part(),
    lambda children: st.one_of(multipart(children), carried_message(children)),
    max_leaves=8,
)

header_value = st.one_of(
    st.sampled_from(
        [
            "Kari Nordmann <kari.nordmann@fjordmarine.example>",
            "=?utf-8?q?Kari_Nordmann?= <kari.nordmann@fjordmarine.example>",
            "=?utf-8?b?broken?= <a@b>",
            "=?x-unknown?q?p=E5?=",
            '"unclosed <kari@x.no>',
            "(((((nested comment",
            "Team: a@x.no, b@y.no;",
            "undisclosed-recipients:;",
            "<<@@>>",
            f"Tracking code: {CODE}",
            "Tue, 99 Foo 99999 99:99:99 +9999",
            "\udcc3\udca6\udcc3\udcb8",
        ]
    ),
    st.text(max_size=60),
)


@st.composite
def top_headers(draw: st.DrawFn) -> bytes:
    names = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Thread-Index"]
    chosen = draw(st.lists(st.sampled_from(names), max_size=10))
    lines = [f"{name}: {draw(header_value)}" for name in chosen]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape") if lines else b""


@st.composite
def broken_mail(draw: st.DrawFn) -> bytes:
    raw = draw(top_headers()) + draw(mime_tree)
    line_ending = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    raw = raw.replace(b"\r\n", line_ending)
    cut = draw(st.integers(0, 4))
    if cut == 1:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == 2:
        position = draw(st.integers(0, len(raw)))
        raw = raw[:position] + b"\x00" * draw(st.integers(1, 50)) + raw[position:]
    return raw


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(raw=broken_mail())
def test_broken_mime_kept(sqlite_sessions: sessionmaker[Session], raw: bytes) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings())

    result, source = process(pipeline, raw, "broken MIME")

    assert problems_with(sqlite_sessions, source, result) == []


#: Where a pathological string goes in a mail, as a builder of the mail.
PLACES: dict[str, Callable[[str], bytes]] = {
    "Subject": lambda text: headers("Subject: " + text),
    "To": lambda text: headers("To: " + text),
    "plain text": lambda text: headers(body=text + BODY),
    "quoted-printable text": lambda text: headers(
        "Content-Transfer-Encoding: quoted-printable", body=quopri.encodestring((text + BODY).encode()).decode()
    ),
    "HTML": lambda text: html_mail(text),
    "attached message": lambda text: headers(
        "Content-Type: message/rfc822",
        body=headers("Subject: Inne", body=text + BODY).decode("utf-8", "surrogateescape"),
    ),
    "forward": lambda text: headers(
        f"From: Ingrid Berg <{INGRID}>", "Subject: VS: Tilbud", body=FRAGMENTS[8] + text + BODY
    ),
}

#: Strings that are repeated to about 300,000 characters.
PATHOLOGICAL = [
    "=", "==", "A=", "AA==", "nXmrgOguRZt63tpjM5sSpA", "Tracking code: ", "Sporingskode:=\n", "&#", "&#x", "&amp;",
    "<a b=c ", "<!--", "<![", "</", "<div>", "<span", "> ", ">\n", "(c)", "\"", "=?utf-8?q?a?=", "\u200b", "\x00",
    "Fra: a@b.no\n", "-----Original Message-----\n", ",", "<", "@", "\t", "=\n", "\\",
]  # fmt: skip


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pattern=st.sampled_from(PATHOLOGICAL), place=st.sampled_from(list(PLACES)))
def test_pathological_string_kept(sqlite_sessions: sessionmaker[Session], pattern: str, place: str) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings())
    text = pattern * (300_000 // len(pattern))

    result, source = process(pipeline, PLACES[place](text), f"{pattern!r} in {place}")

    assert problems_with(sqlite_sessions, source, result) == []


# --- limits ---------------------------------------------------------------
#
# A mail larger than limits.max_message_bytes is kept as failed, reason
# too_large, without its bytes: the backend leaves the item where it is.
# A mail that goes beyond max_nesting_depth, max_html_chars or MAX_PARTS is
# read as far as the limit allows. It is filed when a code turns up in what
# was read, and otherwise waits as unmatched with the limit in its detail.


def kept_unmatched(sessions: sessionmaker[Session], source: Source) -> UnmatchedMail:
    entry = kept(sessions, source).unmatched
    assert entry is not None, "the item has no unmatched entry"
    return entry


def test_message_over_max_bytes_failed(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_message_bytes=10_000))
    raw = headers(body=BODY + "Vedlegg\r\n" * 2000)

    result, source = process(pipeline, raw, "over max_message_bytes")

    entry = kept_unmatched(sqlite_sessions, source)
    assert result.outcome is Outcome.FAILED
    assert entry.reason == UnmatchedReason.TOO_LARGE
    assert entry.detail == f"{len(raw)} bytes is over limits.max_message_bytes = 10000"
    assert entry.raw_mime is None


def test_oversize_item_without_bytes_failed(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_message_bytes=10_000))

    result, source = process(pipeline, None, "oversize, not fetched", size=60_000_000)

    entry = kept_unmatched(sqlite_sessions, source)
    assert result.outcome is Outcome.FAILED
    assert entry.reason == UnmatchedReason.TOO_LARGE
    assert entry.detail == "60000000 bytes is over limits.max_message_bytes = 10000"


def forwards(levels: int) -> bytes:
    """Build a mail whose tracking code is only in the message nested `levels` deep."""
    raw = headers("Subject: Nivå " + str(levels))
    for level in range(levels - 1, -1, -1):
        raw = make_mail(subject=f"Nivå {level}", sender="Ola Ukjent <ola@ukjent.example>", attached_messages=[raw])
    return raw


def test_code_within_max_depth_filed(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_nesting_depth=3))

    result, _ = process(pipeline, forwards(3), "code at depth 3")

    assert result.outcome is Outcome.FILED


def test_code_beyond_max_depth_unmatched(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_nesting_depth=3))

    result, source = process(pipeline, forwards(4), "code at depth 4")

    entry = kept_unmatched(sqlite_sessions, source)
    assert result.outcome is Outcome.UNMATCHED
    assert entry.reason == UnmatchedReason.NO_CODE
    assert entry.detail == "nested message at depth 4 not parsed: max_depth is 3"
    assert entry.raw_mime is not None


def test_code_within_max_html_chars_filed(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_html_chars=10_000))

    result, _ = process(pipeline, html_mail("<p>" + "Hei " * 2000 + "</p>"), "code at 8,000 characters")

    assert result.outcome is Outcome.FILED


def test_code_beyond_max_html_chars_unmatched(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings(max_html_chars=10_000))
    html = "<p>" + "Hei " * 3000 + "</p>"

    result, source = process(pipeline, html_mail(html), "code at 12,000 characters")

    entry = kept_unmatched(sqlite_sessions, source)
    length = len(html + HIDDEN_CODE)
    assert result.outcome is Outcome.UNMATCHED
    assert entry.detail == f"HTML body of {length} characters read up to 10000: max_html_chars is 10000"


def many_parts(count: int, code_at: int) -> bytes:
    parts = [f"--d\r\nContent-Type: text/plain\r\n\r\ndel {index}\r\n" for index in range(count)]
    parts[code_at] = f"--d\r\nContent-Type: text/plain\r\n\r\n{BODY}\r\n"
    return headers("Content-Type: multipart/mixed; boundary=d", body="".join(parts) + "--d--\r\n")


def test_code_within_max_parts_filed(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings())

    # The multipart container is the first part, so the last text part read is number MAX_PARTS - 2.
    result, _ = process(pipeline, many_parts(MAX_PARTS + 100, MAX_PARTS - 2), "code in the last part read")

    assert result.outcome is Outcome.FILED


def test_code_beyond_max_parts_unmatched(sqlite_sessions: sessionmaker[Session]) -> None:
    pipeline = Pipeline(sqlite_sessions, LimitSettings())

    result, source = process(pipeline, many_parts(MAX_PARTS + 100, MAX_PARTS - 1), "code in the first part skipped")

    entry = kept_unmatched(sqlite_sessions, source)
    assert result.outcome is Outcome.UNMATCHED
    assert entry.detail == f"101 MIME parts not read: at most {MAX_PARTS} parts of one mail are read"


def test_outlook_attachments_beyond_max_parts_noted() -> None:
    files = [(b"vedlegg", f"vedlegg-{index}.txt") for index in range(MAX_PARTS + 3)]
    outlook = make_outlook_msg(OutlookMail(files=files))

    with hang_guard("Outlook attachments"):
        mail = parse_item(outlook, "msg")

    assert f"3 attachments not read: at most {MAX_PARTS} parts of one mail are read" in mail.defects


# --- import of truncated and corrupt files --------------------------------


def import_files(store_url: str, *paths: Path) -> tuple[int, dict[str, int], str]:
    """Run `syncd import --json` on `paths` and return the exit code, the counts and stderr."""
    env = {"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": ""}
    result = CliRunner().invoke(cli, ["import", *map(str, paths), "--json"], env=env, catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout), result.stderr


def mbox_of(*mails: bytes) -> bytes:
    separator = b"From kari@fjordmarine.example Thu Dec  3 10:00:00 2026\n"
    return b"".join(separator + mail.replace(b"\r\n", b"\n") + b"\n" for mail in mails)


@pytest.fixture
def good_mail(tmp_path: Path) -> Path:
    path = tmp_path / "god.eml"
    path.write_bytes(make_mail(subject="God", message_id="<god@example.no>"))
    return path


def test_import_truncated_msg_failed(
    store_url: str, tmp_path: Path, good_mail: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outlook = make_outlook_msg(OutlookMail())
    truncated = tmp_path / "avkuttet.msg"
    truncated.write_bytes(outlook[: len(outlook) // 2])

    code, counts, _ = import_files(store_url, truncated, good_mail)

    assert code == 0
    assert counts == {"seen": 2, "filed": 0, "unmatched": 1, "failed": 1, "duplicates": 0}
    assert "failed (parse_error) from import item avkuttet.msg@" in caplog.text
    assert "holds no readable message: truncated or corrupt" in caplog.text


def test_import_mbox_cut_in_message_keeps_both(store_url: str, tmp_path: Path, good_mail: Path) -> None:
    box = mbox_of(make_mail(subject="Første"), make_mail(subject="Andre", message_id="<andre@example.no>"))
    truncated = tmp_path / "avkuttet.mbox"
    truncated.write_bytes(box[:-40])

    code, counts, _ = import_files(store_url, truncated, good_mail)

    assert code == 0
    assert counts == {"seen": 3, "filed": 0, "unmatched": 3, "failed": 0, "duplicates": 0}


def test_import_mbox_cut_in_separator_fails_stub(
    store_url: str, tmp_path: Path, good_mail: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = mbox_of(make_mail(subject="Første"))
    truncated = tmp_path / "avkuttet.mbox"
    truncated.write_bytes(box + b"From kari@fjordm")

    code, counts, _ = import_files(store_url, truncated, good_mail)

    assert code == 0
    assert counts == {"seen": 3, "filed": 0, "unmatched": 2, "failed": 1, "duplicates": 0}
    assert "failed (parse_error) from import item avkuttet.mbox#1@" in caplog.text


def test_import_mbox_without_messages_reported(store_url: str, tmp_path: Path, good_mail: Path) -> None:
    garbage = tmp_path / "søppel.mbox"
    garbage.write_bytes(b"\xff\xfe\x00" * 1000)

    code, counts, stderr = import_files(store_url, garbage, good_mail)

    assert code == 1
    assert counts == {"seen": 1, "filed": 0, "unmatched": 1, "failed": 0, "duplicates": 0}
    assert f"Error: {garbage}: no message found: an mbox file starts each message with a 'From ' line" in stderr


def test_database_error_detail_omits_mail_text(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    add_fjord(sessions)
    secret_line = "Personnummer 010203 12345"
    raw = make_mail(subject=f"Tracking code: {CODE}.", text=secret_line, sender=f"Kari <{KARI}>")

    def fail_insert(*_args: object, **_kwargs: object) -> None:
        raise DataError(
            "INSERT INTO correspondence (subject, body_text) VALUES (%(subject)s, %(body)s)",
            {"subject": "Tracking code", "body": secret_line},
            ValueError("value too long for type character varying(255)"),
        )

    monkeypatch.setattr("syncd.pipeline.record_filed", fail_insert)
    result, source = process(Pipeline(sessions, LimitSettings()), raw, "database-error")

    found = kept(sessions, source)
    assert result.outcome is Outcome.FAILED
    assert found.unmatched is not None
    assert found.unmatched.detail == "record: ValueError: value too long for type character varying(255)"
    assert secret_line not in caplog.text
