"""Filing when the tracking code is missing: threads, Thread-Index, quoted codes and mapped folders.

The pipeline runs on the real store, on SQLite and on PostgreSQL, with the
CRM content of samples/crm.json and the threads in tests/data/threads.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from itertools import count
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from factories import make_mail
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from crmstore import crm, db
from crmstore.models import Correspondence, CorrespondenceCandidate, MessageRef
from crmstore.refs import Ref, parse_ref
from syncd import review
from syncd.backends.base import Folder, Item
from syncd.mail import Outcome
from syncd.pipeline import ItemResult, Pipeline
from syncd.record import Source
from syncd.settings import LimitSettings

REPO = Path(__file__).resolve().parents[1]
THREADS = REPO / "tests" / "data" / "threads"
SAMPLES = REPO / "samples"
OSLO = ZoneInfo("Europe/Oslo")

SKROG = "offer:1"
SERVICE = "activity:2"
STAALBJAELKER = "delivery:3"
VINTER = "offer:4"
KONTRAKTMOETE = "activity:5"

#: Each thread, and the record its first mail names by code.
THREAD_RECORDS = {"outlook": SERVICE, "gmail": VINTER, "apple": STAALBJAELKER}

#: The Thread-Index of tests/data/threads/outlook/01, and a reply block of five bytes.
OUTLOOK_CONVERSATION = "AdtqHE4gXyqcHns9ToqcYS1Piw46Fw=="


class Filer:
    """Puts mails through the pipeline as items of Ingrid's drop folder."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.pipeline = Pipeline(sessions, LimitSettings(), OSLO)
        self.numbers = count(1)

    def __call__(self, raw: bytes, *, mapped_to: str | None = None, inbound: bool = False) -> ItemResult:
        folder = Folder("drop", "CRM-arkiv")
        item = Item(folder, f"item-{next(self.numbers)}", raw)
        source = Source("ingrid.berg@salg.example", folder.key, folder.name, item.item_id)
        ref = parse_ref(mapped_to) if mapped_to else None
        return self.pipeline.process(item, source, inbound=inbound, mapped_to=ref)

    def links(self, result: ItemResult) -> set[tuple[str, str]]:
        assert result.correspondence_id is not None, f"not filed: {result}"
        with self.sessions() as session:
            correspondence = session.get(Correspondence, result.correspondence_id)
            assert correspondence is not None
            return {(f"{link.target_kind}:{link.target_id}", link.matched_by) for link in correspondence.links}

    def candidates(self, result: ItemResult) -> set[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.scalars(
                select(CorrespondenceCandidate).where(
                    CorrespondenceCandidate.correspondence_id == result.correspondence_id
                )
            )
            return {(f"{row.target_kind}:{row.target_id}", row.reason) for row in rows}


@pytest.fixture
def filer(sessions: sessionmaker[Session]) -> Filer:
    content = json.loads((SAMPLES / "crm.json").read_text(encoding="utf-8"))
    with sessions() as session, session.begin():
        organisations, persons = {}, {}
        for entry in content["organisations"]:
            organisations[entry["key"]] = crm.add_organisation(session, entry["name"]).id
        for entry in content["persons"]:
            persons[entry["key"]] = crm.add_person(
                session, organisations[entry["organisation"]], entry["name"], entry["emails"]
            ).id
        for entry in content["users"]:
            crm.add_user(session, entry["name"], entry["email"])
        for entry in content["records"]:
            crm.add_record(
                session, entry["kind"], organisations[entry["organisation"]], entry["title"],
                persons[entry["person"]] if entry["person"] else None, entry["tracking_code"],
            )
    return Filer(sessions)


def _thread(style: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((THREADS / style).glob("*.eml"))]


def _stranger_mail(**headers: str) -> bytes:
    """A mail without code from an address the CRM does not know, so only the thread can file it."""
    return make_mail(
        sender="Per Ås <per.as@verft.example>",
        to="Ingrid Berg <ingrid.berg@salg.example>",
        subject="Sv: Spørsmål om levering",
        message_id="<sporsmal-levering-7@verft.example>",
        text="Hei Ingrid,\n\nnår kommer stålet? Vi må planlegge kranen.\n\nHilsen Per\n",
        headers=headers,
    )


@pytest.mark.parametrize("style", sorted(THREAD_RECORDS))
def test_thread_filed_to_its_record(filer: Filer, style: str) -> None:
    record = THREAD_RECORDS[style]

    results = [filer(raw) for raw in _thread(style)]

    assert [result.outcome for result in results] == [Outcome.FILED] * 5
    assert (record, "tracking_code") in filer.links(results[0])
    for number, result in enumerate(results[1:], start=2):
        links = filer.links(result)
        assert (record, "thread") in links, f"{style} mail {number}: {links}"
        assert not any(ref.split(":")[0] in ("offer", "activity", "delivery") and ref != record for ref, _ in links)


def test_thread_reply_files_organisation(filer: Filer) -> None:
    first, second, *_ = _thread("apple")
    filer(first)

    links = filer.links(filer(second))

    assert links == {
        (STAALBJAELKER, "thread"),
        ("organisation:2", "record"),
        ("person:3", "address"),
        ("organisation:2", "address"),
    }


def test_first_mail_of_thread_is_outgoing(filer: Filer, sessions: sessionmaker[Session]) -> None:
    result = filer(_thread("gmail")[0])

    with sessions() as session:
        correspondence = session.get(Correspondence, result.correspondence_id)
        assert correspondence is not None
        assert correspondence.direction == "outgoing"


def test_references_with_unknown_and_known_id(filer: Filer) -> None:
    filer(_thread("gmail")[0])
    reply = _stranger_mail(
        References="<ukjent-4711@verft.example> <CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>"
    )

    result = filer(reply)

    assert result.outcome is Outcome.FILED
    assert filer.links(result) == {(VINTER, "thread"), ("organisation:3", "record")}


def test_reply_to_unknown_mail_unmatched(filer: Filer) -> None:
    filer(_thread("gmail")[0])

    result = filer(_stranger_mail(**{"In-Reply-To": "<ukjent-4711@verft.example>"}))

    assert result.outcome is Outcome.UNMATCHED


def test_thread_index_only(filer: Filer) -> None:
    filer(_thread("outlook")[0])
    reply_index = base64.b64encode(base64.b64decode(OUTLOOK_CONVERSATION) + bytes.fromhex("00a1b2c3d4")).decode()

    result = filer(_stranger_mail(**{"Thread-Index": reply_index}))

    assert result.outcome is Outcome.FILED
    assert filer.links(result) == {(SERVICE, "thread"), ("organisation:1", "record")}


def test_thread_index_unused_when_references_match(filer: Filer) -> None:
    filer(_thread("outlook")[0])
    filer(_thread("gmail")[0])
    reply = _stranger_mail(
        **{"In-Reply-To": "<CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>", "Thread-Index": OUTLOOK_CONVERSATION}
    )

    result = filer(reply)

    assert filer.links(result) == {(VINTER, "thread"), ("organisation:3", "record")}


@pytest.mark.parametrize("thread_index", ["ikke base64!", "AdtqHE4gXyqc"])
def test_invalid_thread_index_ignored(filer: Filer, thread_index: str) -> None:
    filer(_thread("outlook")[0])

    result = filer(_stranger_mail(**{"Thread-Index": thread_index}))

    assert result.outcome is Outcome.UNMATCHED


def test_mail_never_its_own_thread(filer: Filer, sessions: sessionmaker[Session]) -> None:
    first = _thread("outlook")[0]
    filer(first)

    again = filer(first)

    assert again.outcome is Outcome.DUPLICATE
    assert filer.links(again) == {
        (SERVICE, "tracking_code"),
        ("organisation:1", "record"),
        ("person:2", "address"),
        ("organisation:1", "address"),
    }
    with sessions() as session:
        refs = list(session.scalars(select(MessageRef).where(MessageRef.correspondence_id == again.correspondence_id)))
    assert len(refs) == 1


def test_thread_keys_recorded(filer: Filer, sessions: sessionmaker[Session]) -> None:
    result = filer(_thread("outlook")[1])

    with sessions() as session:
        [ref] = session.scalars(select(MessageRef).where(MessageRef.correspondence_id == result.correspondence_id))
    assert ref.message_key == "mid:AM0PR08MB5412C7E90A3F1D6B2@mail.fjordmarine.example"
    assert ref.thread_key == base64.b64decode(OUTLOOK_CONVERSATION).hex()
    assert ref.role == "message"


def test_code_in_new_text_outranks_quoted_code(filer: Filer) -> None:
    mail = make_mail(
        sender="Mette Sørensen <mette.sorensen@oresundbyg.example>",
        to="Lars Øvrebø <lars.ovrebo@salg.example>",
        subject="Sv: Kontraktmøde og levering",
        text=(
            "Hej Lars\n\nLad os tage det på kontraktmødet. Sporingskode: BCM+S8WGe7iC/he3CJrbEQ==\n\nMette\n\n"
            "Den 20. jan. 2025 kl. 10.15 skrev Lars Øvrebø <lars.ovrebo@salg.example>:\n\n"
            "> Hei Mette,\n> stålet er klart.\n> Sporingskode: IAVYZz7RRH1Dmq2OgDaTFA==\n"
        ),
    )

    result = filer(mail)

    assert filer.links(result) == {
        (KONTRAKTMOETE, "tracking_code"),
        ("organisation:2", "record"),
        ("person:3", "address"),
        ("organisation:2", "address"),
    }
    assert filer.candidates(result) == {(STAALBJAELKER, "quoted_code")}


def test_quoted_code_alone_files(filer: Filer) -> None:
    result = filer((SAMPLES / "mail" / "01-reply-quoted-code-qp.eml").read_bytes())

    assert (SKROG, "tracking_code") in filer.links(result)
    assert filer.candidates(result) == set()


def test_mapped_folder_files_mail_without_code(filer: Filer) -> None:
    result = filer(_stranger_mail(), mapped_to=SKROG)

    assert result.outcome is Outcome.FILED
    assert filer.links(result) == {(SKROG, "folder"), ("organisation:1", "record")}


def test_mapped_folder_and_other_records_code(filer: Filer) -> None:
    mail = make_mail(
        sender="Kari Nordmann <kari.nordmann@fjordmarine.example>",
        to="Ingrid Berg <ingrid.berg@salg.example>",
        subject="Sv: Tilbud – skrog og rigg",
        text="Hei Ingrid,\n\nleveransen til Øresund: Sporingskode: IAVYZz7RRH1Dmq2OgDaTFA==\n\nKari\n",
    )

    result = filer(mail, mapped_to=SKROG)

    links = filer.links(result)
    assert (SKROG, "folder") in links
    assert (STAALBJAELKER, "tracking_code") in links
    assert ("organisation:2", "record") in links
    assert filer.candidates(result) == set()


def test_mapped_folder_and_quoted_code(filer: Filer) -> None:
    mail = make_mail(
        sender="Kari Nordmann <kari.nordmann@fjordmarine.example>",
        subject="Sv: Gammel tråd",
        text="Se under.\n\n> Sporingskode: IAVYZz7RRH1Dmq2OgDaTFA==\n",
    )

    result = filer(mail, mapped_to=SKROG)

    links = filer.links(result)
    assert (SKROG, "folder") in links
    assert (STAALBJAELKER, "tracking_code") in links


def test_mapped_folder_outranks_thread(filer: Filer) -> None:
    filer(_thread("gmail")[0])
    reply = _stranger_mail(**{"In-Reply-To": "<CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>"})

    result = filer(reply, mapped_to=SKROG)

    assert filer.links(result) == {(SKROG, "folder"), ("organisation:1", "record")}
    assert filer.candidates(result) == {(VINTER, "thread")}


def test_mapping_to_missing_record_ignored(filer: Filer) -> None:
    result = filer(_stranger_mail(), mapped_to="offer:99")

    assert result.outcome is Outcome.UNMATCHED


def test_forward_original_found_by_reply(filer: Filer, sessions: sessionmaker[Session]) -> None:
    forward = (SAMPLES / "mail" / "05-attached-forward.eml").read_bytes()
    filed = filer(forward, inbound=True)
    reply = _stranger_mail(**{"In-Reply-To": "<AS8P192MB14213B7A0C95E2D61F@mail.oresundbyg.example>"})

    result = filer(reply)

    with sessions() as session:
        roles = {
            ref.message_key: ref.role
            for ref in session.scalars(select(MessageRef).where(MessageRef.correspondence_id == filed.correspondence_id))
        }
    assert roles == {
        "mid:AS8P192MB14213B7A0C95E2D61F@mail.oresundbyg.example": "message",
        "mid:7d1e4b9a-3c52-4f0e-b8a6-91c2d5e07f34@mail.salg.example": "forward",
    }
    assert (STAALBJAELKER, "thread") in filer.links(result)


def test_reply_follows_manually_assigned_mail(filer: Filer, sessions: sessionmaker[Session]) -> None:
    waiting = filer(_stranger_mail())
    with sessions() as session, session.begin():
        review.assign(session, waiting.unmatched_id or 0, Ref("offer", 1))
    reply = make_mail(
        sender="Per Ås <per.as@verft.example>",
        subject="Sv: Sv: Spørsmål om levering",
        message_id="<sporsmal-levering-8@verft.example>",
        headers={"In-Reply-To": "<sporsmal-levering-7@verft.example>"},
        date=datetime(2025, 2, 1, 9, 0, tzinfo=OSLO),
    )

    result = filer(reply)

    assert filer.links(result) == {(SKROG, "thread"), ("organisation:1", "record")}


def test_assign_keeps_thread_record_as_candidate(filer: Filer, sessions: sessionmaker[Session]) -> None:
    waiting = filer(_stranger_mail(**{"In-Reply-To": "<CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>"}))
    filer(_thread("gmail")[0])

    with sessions() as session, session.begin():
        correspondence = review.assign(session, waiting.unmatched_id or 0, Ref("offer", 1))
        links = {(f"{link.target_kind}:{link.target_id}", link.matched_by) for link in correspondence.links}
        candidates = {(f"{c.target_kind}:{c.target_id}", c.reason) for c in correspondence.candidates}

    assert links == {(SKROG, "manual"), ("organisation:1", "record")}
    assert candidates == {(VINTER, "thread")}


def test_migration_remembers_mail_filed_before(engine: Engine, filer: Filer) -> None:
    db.downgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO correspondence (message_key, message_id, subject, sender_name, to_addresses, "
                "cc_addresses, direction, body_text, \"references\", raw_format, filed_at) VALUES "
                "('mid:CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com', "
                "'CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com', 'Quote', '', '[]', '[]', 'outgoing', '', "
                "'[]', 'eml', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO correspondence_links (correspondence_id, target_kind, target_id, matched_by) "
                "SELECT id, 'offer', 4, 'tracking_code' FROM correspondence"
            )
        )

    db.upgrade(engine)
    result = filer(_stranger_mail(**{"In-Reply-To": "<CAJx7Qm2bV9pLr0Tz4eK8sWc1Ny5Hd3Fg@mail.gmail.com>"}))

    assert filer.links(result) == {(VINTER, "thread"), ("organisation:3", "record")}
