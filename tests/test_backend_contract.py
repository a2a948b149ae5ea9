"""What every mailbox backend owes the sync loop, run over the drop directory, EWS and Graph.

Each test drives the real sync loop, pipeline and store with one backend:
folders created once, new items filed once, the cursor stored only after
the batch's commits, feedback applied, faults survived, nothing lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from fakes.ews_server import FakeEwsServer
from fakes.ews_server import Fault as EwsFault
from fakes.graph_server import FakeGraphServer
from fakes.graph_server import Fault as GraphFault
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crmstore import crm
from crmstore.models import Correspondence, Mailbox
from syncd.backends.base import MailboxBackend
from syncd.backends.dropdir import DropDirectoryBackend
from syncd.backends.ews import EwsBackend, make_credentials
from syncd.backends.graph import GraphBackend
from syncd.errors import DatabaseUnavailableError
from syncd.pipeline import Pipeline
from syncd.settings import LimitSettings, SyncSettings
from syncd.sync import MailboxSync

MAILBOX = "ingrid.berg@salg.example"
SYNC_FOLDER = "CRM-arkiv"
PROCESSED = "Arkivert"
CATEGORIES = {
    "filed": "Arkivert i CRM",
    "duplicate": "Arkivert i CRM",
    "unmatched": "Ikke arkivert i CRM",
    "failed": "Ikke arkivert i CRM",
}


@dataclass
class Harness:
    """One backend and the handles a test needs to act as the user and the server."""

    backend: MailboxBackend
    #: Put a mail into the sync folder as the user's drag and drop would.
    drop: Callable[[bytes], None]
    #: Return the categories of the mails that feedback moved to the processed folder.
    processed: Callable[[], list[list[str]]]
    #: Make the server fail the next listing with a transient fault, or None.
    fail_once: Callable[[], None] | None
    #: Make the next mail dropped unreadable for the backend.
    break_next: Callable[[], None]


def _mail(subject: str = "Tilbud på skrog – æøå", sender: str = "kari.nordmann@fjordmarine.example") -> bytes:
    message = EmailMessage()
    message["From"] = f"Kari Nordmann <{sender}>"
    message["To"] = f"Ingrid Berg <{MAILBOX}>"
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="fjordmarine.example")
    message["Date"] = "Thu, 03 Dec 2026 10:15:00 +0100"
    message.set_content("Hei Ingrid,\n\ntakk for tilbudet. Vi ser på det.\n\nHilsen Kari\n")
    return message.as_bytes()


@pytest.fixture(params=["folder", "ews", "graph"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "folder":
        yield _folder_harness(tmp_path)
    elif request.param == "ews":
        with FakeEwsServer() as server:
            yield from _ews_harness(server)
    else:
        with FakeGraphServer() as server:
            yield from _graph_harness(server)


def _folder_harness(tmp_path: Path) -> Harness:
    root = tmp_path / "drop"
    root.mkdir()
    backend = DropDirectoryBackend(root, post_action="move", batch_size=2, max_item_bytes=10_000)
    counter = iter(range(1000))
    oversize = {"next": False}

    def drop(mime: bytes) -> None:
        if oversize["next"]:
            mime = mime + b"x" * 20_000
            oversize["next"] = False
        (root / f"mail-{next(counter):03}.eml").write_bytes(mime)

    def processed() -> list[list[str]]:
        # The drop directory has no categories; a moved file is the feedback.
        return [[] for _ in (root / "processed").glob("*.eml")] + [[] for _ in (root / "failed").glob("*.eml")]

    def break_next() -> None:
        oversize["next"] = True

    return Harness(backend, drop, processed, None, break_next)


def _ews_harness(server: FakeEwsServer) -> Iterator[Harness]:
    server.add_mailbox(MAILBOX)
    backend = EwsBackend(
        MAILBOX,
        endpoint=server.url,
        credentials=make_credentials("basic", username="svc-crm@salg.example", password="hemmelig"),
        folder_names=[SYNC_FOLDER],
        categories=CATEGORIES,
        post_action="move",
        processed_folder_name=PROCESSED,
        batch_size=2,
        timeout=1,
    )
    backend.ensure_folders()
    broken = {"next": False}

    def drop(mime: bytes) -> None:
        item_id = server.drop(MAILBOX, SYNC_FOLDER, mime)
        if broken["next"]:
            server.break_item(MAILBOX, item_id)
            broken["next"] = False

    def processed() -> list[list[str]]:
        return [item.categories for item in server.items(MAILBOX, f"{SYNC_FOLDER}/{PROCESSED}")]

    def break_next() -> None:
        broken["next"] = True

    yield Harness(backend, drop, processed, lambda: server.fail_next("SyncFolderItems", EwsFault.HTTP_503, retry_after=0), break_next)
    backend.close()
    exchangelib.close_connections()


def _graph_harness(server: FakeGraphServer) -> Iterator[Harness]:
    server.add_mailbox(MAILBOX)
    backend = GraphBackend(
        MAILBOX,
        token_provider=lambda: {"access_token": "token-æøå-1", "expires_in": 3600},
        base_url=server.base_url,
        folder_names=[SYNC_FOLDER],
        categories=CATEGORIES,
        post_action="move",
        processed_folder_name=PROCESSED,
        batch_size=2,
        timeout=1,
    )
    backend.ensure_folders()
    broken = {"next": False}

    def drop(mime: bytes) -> None:
        message_id = server.drop(MAILBOX, SYNC_FOLDER, mime)
        if broken["next"]:
            server.break_mime(MAILBOX, message_id)
            broken["next"] = False

    def processed() -> list[list[str]]:
        return [item.categories for item in server.items(MAILBOX, f"{SYNC_FOLDER}/{PROCESSED}")]

    def break_next() -> None:
        broken["next"] = True

    yield Harness(
        backend, drop, processed, lambda: server.fail_next(GraphFault.THROTTLED, match="delta", retry_after=0), break_next
    )
    backend.close()


@pytest.fixture
def syncer(sessions: sessionmaker[Session], harness: Harness) -> MailboxSync:
    with sessions() as session, session.begin():
        fjord = crm.add_organisation(session, "Fjord Marine AS")
        crm.add_person(session, fjord.id, "Kari Nordmann", ["kari.nordmann@fjordmarine.example"])
        session.add(Mailbox(address=MAILBOX, backend=harness.backend.kind, config={}))
    settings = SyncSettings(max_attempts=3, max_backoff_seconds=0.1)
    return MailboxSync(sessions, Pipeline(sessions, LimitSettings(max_message_bytes=10_000)), settings)


def _correspondence_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Correspondence)) or 0


def test_folders_created_once(harness: Harness) -> None:
    first = harness.backend.ensure_folders()
    second = harness.backend.ensure_folders()

    assert [report.folder for report in first] == [report.folder for report in second]
    assert not any(report.created for report in second)


def test_new_items_filed_once(harness: Harness, syncer: MailboxSync, sessions: sessionmaker[Session]) -> None:
    for number in range(5):
        harness.drop(_mail(subject=f"Tilbud {number} – æøå"))

    first = syncer.sync(MAILBOX, harness.backend)
    second = syncer.sync(MAILBOX, harness.backend)

    assert first.filed == 5
    assert second.seen == 0
    assert _correspondence_count(sessions) == 5


def test_feedback_applied(harness: Harness, syncer: MailboxSync) -> None:
    harness.drop(_mail())
    harness.drop(_mail(sender="ukjent@example.net"))

    syncer.sync(MAILBOX, harness.backend)

    processed = harness.processed()
    assert len(processed) == 2
    if harness.backend.kind != "folder":
        assert sorted(c for item in processed for c in item) == ["Arkivert i CRM", "Ikke arkivert i CRM"]


def test_cursor_stored_only_after_commit(
    harness: Harness, syncer: MailboxSync, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(4):
        harness.drop(_mail(subject=f"Tilbud {number}"))
    real_process = syncer.pipeline.process
    calls = {"count": 0}

    def crash_on_third(*args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        if calls["count"] == 3:
            raise OperationalError("INSERT", {}, Exception("database went away"))
        return real_process(*args, **kwargs)

    monkeypatch.setattr(syncer.pipeline, "process", crash_on_third)
    with pytest.raises(DatabaseUnavailableError):
        syncer.sync(MAILBOX, harness.backend)
    filed_before_crash = _correspondence_count(sessions)

    monkeypatch.setattr(syncer.pipeline, "process", real_process)
    syncer.sync(MAILBOX, harness.backend)

    # The crash came on the first item of the second batch. Had its cursor
    # been stored anyway, the last two mails would never be yielded again.
    assert filed_before_crash == 2
    assert _correspondence_count(sessions) == 4


def test_transient_fault_survived(harness: Harness, syncer: MailboxSync, sessions: sessionmaker[Session]) -> None:
    if harness.fail_once is None:
        pytest.skip("a drop directory has no server that could fail")
    harness.drop(_mail())
    harness.fail_once()

    counts = syncer.sync(MAILBOX, harness.backend)

    assert counts.filed == 1
    assert _correspondence_count(sessions) == 1


def test_unreadable_item_kept_as_failed(harness: Harness, syncer: MailboxSync) -> None:
    harness.drop(_mail())
    harness.break_next()
    harness.drop(_mail(subject="Ødelagt"))

    counts = syncer.sync(MAILBOX, harness.backend)

    assert counts.seen == 2
    assert counts.filed == 1
    assert counts.failed == 1


def test_counts_add_up(harness: Harness, syncer: MailboxSync) -> None:
    mail = _mail()
    harness.drop(mail)
    harness.drop(mail)
    harness.drop(_mail(sender="ukjent@example.net"))

    counts = syncer.sync(MAILBOX, harness.backend)

    assert counts.seen == counts.filed + counts.unmatched + counts.failed + counts.duplicates
    assert (counts.filed, counts.unmatched, counts.duplicates) == (1, 1, 1)
