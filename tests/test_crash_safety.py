"""`syncd run` killed with SIGKILL at every step of a pass, then restarted: each mail is recorded once and tagged.

The daemon runs as its own process, as systemd would start it, against the
fake Exchange or the fake Microsoft Graph server, on SQLite and on
PostgreSQL. tests/crash/launch.py arms one crash point per start (see its
docstring for the points). Each start after the first takes over from a
process that died in the middle of a pass. The last start runs until every
item is recorded with its feedback shown, and is then stopped with SIGTERM.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import exchangelib
import pytest
from cli_runner import SyncdCli
from factories import make_mail
from fakes.ews_server import FakeEwsServer
from fakes.graph_server import FakeGraphServer
from fakes.token_server import FakeTokenServer
from sqlalchemy import Engine, func, select

import syncd.backends
from crmstore import db
from crmstore.models import Correspondence, CorrespondenceLink, ProcessedItem, UnmatchedMail

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
LAUNCHER = Path(__file__).resolve().parent / "crash" / "launch.py"

MAILBOX = "ingrid.berg@salg.example"
SYNC_FOLDER = "CRM-arkiv"
EWS_PASSWORD = "Sv4rt-hemmelig-æøå"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"
FILED = "Arkivert i CRM"
NOT_FILED = "Ikke arkivert i CRM"
#: Seconds a daemon may take to reach its crash point, or to file everything on the last start.
DEADLINE = 30.0


@dataclass(frozen=True)
class Drop:
    """A mail a user drops into the sync folder, the ledger outcome it must end with, and its category."""

    mime: bytes
    outcome: str
    category: str = FILED


def _coded(number: int, sender: str, code: str) -> bytes:
    return make_mail(
        subject=f"Svar på tilbud {number} – æøå",
        sender=sender,
        to=f"Ingrid Berg <{MAILBOX}>",
        message_id=f"<krasj-{number}@fjordmarine.example>",
        text=f"Hei Ingrid,\n\nTakk for sist.\n\nTracking code: {code}.\n",
    )


def _uncoded(number: int) -> bytes:
    return make_mail(
        subject=f"Spørsmål {number} uten kode",
        sender="Ukjent Avsender <ukjent@andre.example>",
        to=f"Ingrid Berg <{MAILBOX}>",
        message_id=f"<uten-kode-{number}@andre.example>",
        text="Hei,\n\nhar dere fått bestillingen vår?\n",
    )


KARI = "Kari Nordmann <kari.nordmann@fjordmarine.example>"
FILED_TWICE = Drop(_coded(2, "Ola Hansen <ola.hansen@fjordmarine.example>", "pO8OtLuw1V4kcAf/cUKJ+g=="), "filed")
UNMATCHED_TWICE = Drop(_uncoded(3), "unmatched", NOT_FILED)
DUPLICATE_OF_FILED = Drop(FILED_TWICE.mime, "duplicate")
DUPLICATE_OF_UNMATCHED = Drop(UNMATCHED_TWICE.mime, "duplicate", NOT_FILED)

#: Dropped before the first start; each crash point of the first wave leaves part of it for the next start.
FIRST_WAVE = [
    Drop(_coded(1, KARI, "87gnV/VSKQga80stcfDvpw=="), "filed"),
    FILED_TWICE,
    UNMATCHED_TWICE,
    Drop(_coded(4, "Mette Sørensen <mette.sorensen@oresundbyg.example>", "IAVYZz7RRH1Dmq2OgDaTFA=="), "filed"),
    Drop(_uncoded(5), "unmatched", NOT_FILED),
    Drop(_coded(6, "John Smith <john.smith@northwind.example>", "QTBP8dPtwA2mdL4LKXOtOg=="), "filed"),
]
#: Dropped once the folder's cursor is stored; the second item repeats a Message-ID filed before.
SECOND_WAVE = [
    Drop(_coded(7, KARI, "BCM+S8WGe7iC/he3CJrbEQ=="), "filed"),
    DUPLICATE_OF_FILED,
    Drop(_coded(9, "Ukjent Avsender <ukjent@andre.example>", "AAAAAAAAAAAAAAAAAAAAAA=="), "unmatched", NOT_FILED),
    Drop(_coded(10, KARI, "87gnV/VSKQga80stcfDvpw=="), "filed"),
    Drop(_uncoded(11), "unmatched", NOT_FILED),
    DUPLICATE_OF_UNMATCHED,
]

#: One daemon start per entry: the wave dropped before it and where it dies, "POINT:N" or "random".
#: With batches of 3 items, N is chosen so that each point is reached with items
#: still left for the next start. The comment beside each start lists what it does.
STARTS: list[tuple[list[Drop], str]] = [
    (FIRST_WAVE, "record.begin:2"),  # records item 1, dies before item 2
    ([], "record.commit:2"),  # tags item 1, records item 2, dies before item 3's COMMIT
    ([], "record.committed:1"),  # tags item 2, dies right after item 3's COMMIT
    ([], "feedback.before:2"),  # tags item 3, records items 4 to 6, dies before tagging them
    ([], "feedback.after:1"),  # tags items 4 to 6, dies before feedback_pending is cleared
    ([], "cursor.commit:1"),  # tags items 4 to 6 again, dies in the first cursor update
    ([], "cursor.committed:1"),  # dies right after the first cursor update
    (SECOND_WAVE, "record.commit:2"),  # records item 7, dies before the COMMIT of the duplicate, item 8
    ([], "random"),
]


class ExchangeMailbox:
    """The user's mailbox on the fake Exchange server, enrolled with basic authentication."""

    def __init__(self, server: FakeEwsServer) -> None:
        self.server = server

    def settings(self) -> str:
        return "[ews]\ntimeout_seconds = 5\n"

    def secrets(self) -> dict[str, str]:
        return {"SYNCD_SECRET_EWS_PASSWORD": EWS_PASSWORD}

    def enroll(self, run: SyncdCli) -> None:
        run(
            "mailbox", "enroll", MAILBOX, "--backend", "ews", "--endpoint", self.server.url,
            "--auth", "basic", "--username", "svc-crm@salg.example",
        )
        run("mailbox", "check", MAILBOX)

    def drop(self, mime: bytes) -> str:
        return self.server.drop(MAILBOX, SYNC_FOLDER, mime)

    def categories(self) -> dict[str, list[str]]:
        return {item.id: item.categories for item in self.server.items(MAILBOX, SYNC_FOLDER)}


class GraphMailbox:
    """The user's mailbox on the fake Microsoft Graph, enrolled with an app secret from the fake Entra ID."""

    def __init__(self, graph: FakeGraphServer, tokens: FakeTokenServer) -> None:
        self.graph = graph
        self.tokens = tokens

    def settings(self) -> str:
        return (
            f'[graph]\nbase_url = "{self.graph.base_url}"\ntimeout_seconds = 5\n'
            f'[entra]\nauthority_host = "{self.tokens.authority_host}"\n'
        )

    def secrets(self) -> dict[str, str]:
        return {"SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET}

    def enroll(self, run: SyncdCli) -> None:
        run("mailbox", "enroll", MAILBOX, "--backend", "graph", "--tenant", TENANT, "--client-id", CLIENT)
        run("mailbox", "check", MAILBOX)

    def drop(self, mime: bytes) -> str:
        return self.graph.drop(MAILBOX, SYNC_FOLDER, mime)

    def categories(self) -> dict[str, list[str]]:
        return {message.id: message.categories for message in self.graph.items(MAILBOX, SYNC_FOLDER)}


Mailbox = ExchangeMailbox | GraphMailbox


@pytest.fixture(params=["ews", "graph"])
def mailbox(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    if request.param == "ews":
        with FakeEwsServer() as server:
            server.add_mailbox(MAILBOX)
            yield ExchangeMailbox(server)
    else:
        with FakeTokenServer(TENANT) as tokens, FakeGraphServer(token_checker=tokens.is_valid) as graph:
            tokens.add_client(CLIENT, secret=CLIENT_SECRET)
            # The daemon inherits the variable, so it trusts the fake Entra ID too.
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tokens.ca_bundle))
            graph.add_mailbox(MAILBOX)
            yield GraphMailbox(graph, tokens)
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


class DaemonStarts:
    """Starts `syncd run` through the crash launcher, one process at a time, with its log in a file each."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.crash_log = tmp_path / "crashes.log"
        self.count = 0

    def start(self, crash_at: str | None) -> tuple[subprocess.Popen[bytes], Path]:
        self.count += 1
        log_path = self.tmp_path / f"daemon-{self.count}.log"
        env = {**self.env, "CRASH_LOG": str(self.crash_log)}
        if crash_at is not None:
            env["CRASH_AT"] = crash_at
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        return process, log_path

    def crash_at(self, point: str) -> None:
        """Start the daemon and wait until it kills itself at `point`."""
        process, log_path = self.start(point)
        try:
            returncode = process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"start {self.count} never reached {point} within {DEADLINE} s:\n{_tail(log_path)}")
        assert returncode == -signal.SIGKILL, f"start {self.count} ({point}) exited {returncode}:\n{_tail(log_path)}"
        reached = self.crash_log.read_text().splitlines()[-1]
        assert reached == point.replace(":", " "), f"start {self.count} died at {reached}, not {point}"

    def kill_after(self, seconds: float) -> None:
        """Start the daemon and kill it from outside after `seconds`, wherever it is."""
        process, _ = self.start(None)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
        process.wait()


def _message_id(drop: Drop) -> str:
    return _bare(str(BytesHeaderParser(policy=policy.default).parsebytes(drop.mime)["Message-ID"]))


def _bare(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>")


def _tail(log_path: Path, lines: int = 30) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _ledger(engine: Engine) -> list[ProcessedItem]:
    with db.session_factory(engine)() as session:
        rows = list(session.scalars(select(ProcessedItem).where(ProcessedItem.mailbox == MAILBOX)))
        session.expunge_all()
        return rows


def _wait_until_settled(engine: Engine, expected_items: int, log_path: Path) -> None:
    """Wait until the daemon has finished a pass and the ledger contains every item with its feedback shown."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        passed = f"mailbox {MAILBOX}: pass done" in log_path.read_text(errors="replace")
        ledger = _ledger(engine)
        if passed and len(ledger) >= expected_items and not any(row.feedback_pending for row in ledger):
            return
        time.sleep(0.2)
    pytest.fail(f"the last start did not record and tag {expected_items} items within {DEADLINE} s:\n{_tail(log_path)}")


def test_kills_lose_and_double_nothing(store_url: str, tmp_path: Path, mailbox: Mailbox) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        "[sync]\ninterval_seconds = 1\njitter_seconds = 0\nbatch_size = 3\n"
        "max_attempts = 3\nmax_backoff_seconds = 1\n" + mailbox.settings()
    )
    env = {key: value for key, value in os.environ.items() if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env |= {"SYNCD_DATABASE_URL": store_url, "SYNCD_CONFIG": str(config), **mailbox.secrets()}
    run = SyncdCli(env)
    run("crm", "load", str(SAMPLES / "crm.json"))
    mailbox.enroll(run)
    daemons = DaemonStarts(env, tmp_path)
    dropped: dict[str, Drop] = {}

    for wave, crash_at in STARTS:
        for drop in wave:
            dropped[mailbox.drop(drop.mime)] = drop
        if crash_at == "random":
            # On a 2-core machine this falls between start-up and the end of
            # the first pass (an estimate), so the start may also file everything.
            delay = random.uniform(0.3, 2.0)
            print(f"start {daemons.count + 1}: SIGKILL after {delay:.2f} s")
            daemons.kill_after(delay)
        else:
            daemons.crash_at(crash_at)

    process, log_path = daemons.start(None)
    engine = db.create_store_engine(store_url)
    try:
        _wait_until_settled(engine, len(dropped), log_path)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0, _tail(log_path)

        ledger = _ledger(engine)
        with db.session_factory(engine)() as session:
            message_ids = list(session.scalars(select(Correspondence.message_id)))
            unmatched_ids = list(session.scalars(select(UnmatchedMail.message_id)))
            linked = session.execute(
                select(CorrespondenceLink.correspondence_id, func.count()).group_by(CorrespondenceLink.correspondence_id)
            ).all()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        engine.dispose()

    # One ledger row per dropped item, none for anything else.
    assert Counter(row.item_id for row in ledger) == Counter(list(dropped))
    for row in ledger:
        assert row.outcome == dropped[row.item_id].outcome, f"item {row.item_id}"
        assert not row.feedback_pending, f"item {row.item_id}"

    # One correspondence per filed mail, one queue entry per unmatched mail.
    filed_mails = [drop for drop in dropped.values() if drop.outcome == "filed"]
    unmatched_mails = [drop for drop in dropped.values() if drop.outcome == "unmatched"]
    assert sorted(map(_bare, message_ids)) == sorted(_message_id(drop) for drop in filed_mails)
    assert sorted(map(_bare, unmatched_ids)) == sorted(_message_id(drop) for drop in unmatched_mails)
    assert len(linked) == len(filed_mails)

    # The two repeats point to the rows of the mails they repeat.
    row_of = {dropped[row.item_id]: row for row in ledger}
    assert row_of[DUPLICATE_OF_FILED].correspondence_id == row_of[FILED_TWICE].correspondence_id
    assert row_of[DUPLICATE_OF_UNMATCHED].unmatched_id == row_of[UNMATCHED_TWICE].unmatched_id

    # Counts add up: every item ends filed, unmatched or duplicate.
    outcomes = Counter(row.outcome for row in ledger)
    assert outcomes == Counter(drop.outcome for drop in dropped.values())
    assert sum(outcomes.values()) == len(FIRST_WAVE) + len(SECOND_WAVE)

    # Feedback shows once on every item, however often it was applied.
    categories = mailbox.categories()
    for item_id, drop in dropped.items():
        assert categories[item_id] == [drop.category], f"item {item_id}"
