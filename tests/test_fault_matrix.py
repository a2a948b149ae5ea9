"""Every fault syncd must survive, over EWS and Graph, with the same three checks.

A case drops six mails into the sync folder and starts a pass. Once the
first batch is recorded, it injects its fault into the fake server or takes
the database away, so the fault lands in the middle of the pass. Then:

- nothing is lost: every item is filed or queued as unmatched;
- nothing is recorded twice: one ledger row per item, one correspondence or
  unmatched row per mail, one category per item;
- one log line names the mailbox, the fault and what syncd does next.

Transient faults must be survived within the pass. A fault that ends the
pass (the database going away) must leave the next pass to finish the work.
Both backends sign in with OAuth 2.0 through msal against the fake token
server, so that a token can be revoked mid-pass.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from fakes.ews_server import FakeEwsServer
from fakes.ews_server import Fault as EwsFault
from fakes.graph_server import FakeGraphServer
from fakes.graph_server import Fault as GraphFault
from fakes.postgres_cluster import PostgresCluster, unavailable_reason
from fakes.token_server import FakeTokenServer
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

import syncd.backends
from crmstore import crm, db
from crmstore.models import Correspondence, Mailbox, ProcessedItem, UnmatchedMail
from syncd.backends import open_backend
from syncd.backends.base import MailboxBackend
from syncd.errors import DatabaseUnavailableError, SyncdError
from syncd.pipeline import ItemResult, Pipeline
from syncd.settings import EntraSettings, EwsSettings, GraphSettings, Settings, SyncSettings
from syncd.sync import Counts, MailboxSync

MAILBOX = "ingrid.berg@salg.example"
TENANT = "7f3c2a10-5b8e-4d1e-9c0a-2b6f8e4d1a93"
CLIENT = "0e9b7d4c-1a2f-4c3e-8b5d-6f7a9c0e1d2b"
CLIENT_SECRET = "klient-hemmelighet-æøå-42"
SYNC_FOLDER = "CRM-arkiv"
FILED_CATEGORY = "Arkivert i CRM"
NOT_FILED_CATEGORY = "Ikke arkivert i CRM"

#: Items per batch. Six mails make three batches, and faults arrive after the first.
BATCH_SIZE = 2
KNOWN_SENDER = "kari.nordmann@fjordmarine.example"
UNKNOWN_SENDER = "ola.hansen@ukjent.example"
#: (sender, outcome) of the mails each case drops: four filed by sender address, two unmatched.
MAILS = [
    (KNOWN_SENDER, "filed"),
    (UNKNOWN_SENDER, "unmatched"),
    (KNOWN_SENDER, "filed"),
    (KNOWN_SENDER, "filed"),
    (UNKNOWN_SENDER, "unmatched"),
    (KNOWN_SENDER, "filed"),
]

#: Seconds one request may take. Slow responses are held back longer than this.
TIMEOUT = 1.0
SLOW_DELAY = 1.6
#: Back-off hints the faults carry: BackOffMilliseconds for EWS, Retry-After (whole seconds) for Graph.
BACK_OFF_MS = 300
RETRY_AFTER = 1
SYNC = SyncSettings(batch_size=BATCH_SIZE, max_attempts=4, max_backoff_seconds=1.5)

#: Seconds before its expiry at which the EWS credentials replace an access token.
TOKEN_MARGIN = 30

#: The retry line of `MailboxSync`: "...; try 2 of 4 in 0.3 s".
RETRY = r"try (?P<attempt>\d+) of \d+ in (?P<wait>\d+(?:\.\d+)?) s"


def _mail(number: int, sender: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"Ingrid Berg <{MAILBOX}>"
    message["Subject"] = f"Tilbud {number} på skrog – æøå"
    message["Message-ID"] = _message_id(number)
    message["Date"] = f"Thu, 03 Dec 2026 10:{number:02}:00 +0100"
    message.set_content(f"Hei Ingrid,\n\ntakk for tilbud nummer {number}.\n\nHilsen fra Tromsø\n")
    return message.as_bytes()


def _message_id(number: int) -> str:
    return f"<feilmatrise-{number}@fjordmarine.example>"


# -- the world a case runs in -----------------------------------------------------------


@dataclass
class World:
    """The fake servers, the store and the sync loop of one case."""

    kind: str
    sessions: sessionmaker[Session]
    settings: Settings
    tokens: FakeTokenServer
    ews: FakeEwsServer | None = None
    graph: FakeGraphServer | None = None
    passes: list[Counts] = field(default_factory=list)
    errors: list[SyncdError] = field(default_factory=list)

    def drop_mails(self) -> None:
        for number, (sender, _) in enumerate(MAILS):
            if self.ews is not None:
                self.ews.drop(MAILBOX, SYNC_FOLDER, _mail(number, sender))
            else:
                assert self.graph is not None
                self.graph.drop(MAILBOX, SYNC_FOLDER, _mail(number, sender))

    def server_categories(self) -> list[list[str]]:
        if self.ews is not None:
            return [item.categories for item in self.ews.items(MAILBOX, SYNC_FOLDER)]
        assert self.graph is not None
        return [item.categories for item in self.graph.items(MAILBOX, SYNC_FOLDER)]

    def server_item_ids(self) -> set[str]:
        if self.ews is not None:
            return {item.id for item in self.ews.items(MAILBOX, SYNC_FOLDER)}
        assert self.graph is not None
        return {item.id for item in self.graph.items(MAILBOX, SYNC_FOLDER)}

    def run_pass(self, on_item: Callable[[int], None] | None = None) -> None:
        """Run one pass as the daemon does: a fresh backend from the enrolment, errors kept, not raised.

        `on_item` is called with the number of items recorded so far after
        each item, which is where a case injects its fault.
        """
        pipeline = Pipeline.from_settings(self.sessions, self.settings)
        if on_item is not None:
            pipeline = _Hooked(pipeline, on_item)
        syncer = MailboxSync(self.sessions, pipeline, self.settings.sync)
        with self.sessions() as session:
            mailbox = session.scalars(select(Mailbox).where(Mailbox.address == MAILBOX)).one()
        backend: MailboxBackend = open_backend(mailbox, self.settings)
        try:
            self.passes.append(syncer.sync(MAILBOX, backend))
        except SyncdError as exc:
            self.errors.append(exc)
        finally:
            backend.close()


class _Hooked(Pipeline):
    """A pipeline that calls back after every item, so a fault can be injected mid-pass."""

    def __init__(self, inner: Pipeline, on_item: Callable[[int], None]) -> None:
        super().__init__(inner.sessions, inner.limits, inner.local_timezone)
        self.on_item = on_item
        self.count = 0

    def process(self, *args: Any, **kwargs: Any) -> ItemResult:
        result = super().process(*args, **kwargs)
        self.count += 1
        self.on_item(self.count)
        return result


def _after_first_batch(action: Callable[[], None]) -> Callable[[int], None]:
    def on_item(count: int) -> None:
        if count == BATCH_SIZE:
            action()

    return on_item


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as server:
        server.add_client(CLIENT, secret=CLIENT_SECRET)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_bundle))
        monkeypatch.setenv("SYNCD_SECRET_ENTRA_CLIENT_SECRET", CLIENT_SECRET)
        # requests-oauthlib sends tokens only over https unless this is set, and the fake EWS is plain http.
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
        yield server
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


def _world(kind: str, url: str, tokens: FakeTokenServer, stack: list[Any]) -> World:
    engine = db.create_store_engine(url)
    stack.append(engine.dispose)
    sessions = db.session_factory(engine)
    with sessions() as session, session.begin():
        fjord = crm.add_organisation(session, "Fjord Marine AS")
        crm.add_person(session, fjord.id, "Kari Nordmann", [KNOWN_SENDER])

    if kind == "ews":
        ews = FakeEwsServer().start()
        stack.append(ews.close)
        ews.add_mailbox(MAILBOX)
        ews.require_bearer(tokens.is_valid)
        config = {
            "auth": "oauth2", "access": "impersonation", "secret": "entra-client-secret", "username": "",
            "tenant_id": TENANT, "client_id": CLIENT, "endpoint": ews.url,
        }
        settings = _settings(url, tokens)
        world = World(kind, sessions, settings, tokens, ews=ews)
    else:
        graph = FakeGraphServer(token_checker=tokens.is_valid, concurrency_limit=4).start()
        stack.append(graph.close)
        graph.add_mailbox(MAILBOX)
        config = {"tenant_id": TENANT, "client_id": CLIENT, "secret": "entra-client-secret"}
        settings = _settings(url, tokens, graph_url=graph.base_url)
        world = World(kind, sessions, settings, tokens, graph=graph)

    with sessions() as session, session.begin():
        session.add(Mailbox(address=MAILBOX, backend=kind, config=config))
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox)).one()
    backend = open_backend(mailbox, settings)
    try:
        backend.ensure_folders()
    finally:
        backend.close()
    return world


def _settings(url: str, tokens: FakeTokenServer, graph_url: str = "http://127.0.0.1:9/v1.0") -> Settings:
    return Settings(
        database_url=url,
        sync=SYNC,
        ews=EwsSettings(timeout_seconds=TIMEOUT),
        graph=GraphSettings(base_url=graph_url, timeout_seconds=TIMEOUT),
        entra=EntraSettings(authority_host=tokens.authority_host),
    )


@pytest.fixture
def world_factory(tokens: FakeTokenServer) -> Iterator[Callable[[str, str], World]]:
    stack: list[Any] = []
    yield lambda kind, url: _world(kind, url, tokens, stack)
    for close in reversed(stack):
        close()


# -- the three checks ----------------------------------------------------------------------


def assert_nothing_lost_nothing_twice(world: World) -> None:
    expected_filed = {_message_id(n).strip("<>") for n, (_, outcome) in enumerate(MAILS) if outcome == "filed"}
    expected_unmatched = {_message_id(n).strip("<>") for n, (_, outcome) in enumerate(MAILS) if outcome == "unmatched"}
    with world.sessions() as session:
        ledger = session.execute(
            select(ProcessedItem.folder_key, ProcessedItem.item_id, ProcessedItem.outcome,
                   ProcessedItem.feedback_pending)
            .where(ProcessedItem.mailbox == MAILBOX)
        ).all()
        filed = list(session.scalars(select(Correspondence.message_id)))
        unmatched = list(session.scalars(select(UnmatchedMail.message_id)))

    # One ledger row per item on the server, each settled and shown to the user.
    assert len(ledger) == len(MAILS)
    assert {item_id for _, item_id, _, _ in ledger} == world.server_item_ids()
    assert sorted(outcome for _, _, outcome, _ in ledger) == sorted(outcome for _, outcome in MAILS)
    assert not any(pending for *_, pending in ledger)
    # One correspondence per filed mail and one queue entry per unmatched one.
    assert sorted(filed) == sorted(expected_filed)
    assert sorted(unmatched) == sorted(expected_unmatched)
    # The passes together filed each mail once; a replay counts as a duplicate,
    # never as a filing. A pass that ended on an error returned no counts.
    total = Counts()
    for counts in world.passes:
        total.merge(counts)
    assert total.failed == 0
    if not world.errors:
        assert total.filed == len(expected_filed)
        assert total.unmatched == len(expected_unmatched)
    # Feedback was applied once per item, whatever was replayed.
    assert sorted(world.server_categories()) == sorted(
        [FILED_CATEGORY] if outcome == "filed" else [NOT_FILED_CATEGORY] for _, outcome in MAILS
    )


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def assert_logged(caplog: pytest.LogCaptureFixture, *patterns: str) -> re.Match[str]:
    """Return the first log line that names the mailbox and matches every pattern."""
    mailbox = re.compile(rf"mailbox {re.escape(MAILBOX)}", re.IGNORECASE)
    compiled = [re.compile(pattern, re.IGNORECASE) for pattern in patterns]
    for line in log_lines(caplog):
        if mailbox.search(line) and all(pattern.search(line) for pattern in compiled):
            found = compiled[-1].search(line)
            assert found is not None
            return found
    raise AssertionError(
        f"no log line names mailbox {MAILBOX} and matches {patterns}; lines:\n" + "\n".join(log_lines(caplog))
    )


# -- the matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A fault on one backend, how to inject it, and the patterns its log line must match."""

    name: str
    kind: str
    inject: Callable[[World], None]
    #: Patterns that one log line must match, besides naming the mailbox.
    log: tuple[str, ...]
    #: The wait the server asked for, in seconds, which the retry must honour.
    hinted_wait: float | None = None
    #: Whether the pass must have gone on with a second access token.
    fresh_token: bool = False


def _ews(world: World) -> FakeEwsServer:
    assert world.ews is not None
    return world.ews


def _graph(world: World) -> FakeGraphServer:
    assert world.graph is not None
    return world.graph


def _revoke_tokens(world: World) -> None:
    # The token is rejected before it expires, as after a changed role
    # assignment; only a new token from Entra ID gets the pass further.
    for token in list(world.tokens.issued_tokens):
        world.tokens.revoke(token)


def _expire_tokens(world: World) -> None:
    # The pass outlives its token: the backend must notice and fetch a new
    # one from Entra ID, and the old token is rejected from now on.
    expiry = max(world.tokens.issued_tokens.values())
    assert expiry - time.time() < TOKEN_MARGIN + 5, "set the token server's expires_in before the first token"
    time.sleep(max(0.0, expiry - TOKEN_MARGIN - time.time()) + 0.1)
    _revoke_tokens(world)


CASES = [
    Case(
        "busy", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.SERVER_BUSY, back_off_ms=BACK_OFF_MS),
        ("ErrorServerBusy", RETRY), hinted_wait=BACK_OFF_MS / 1000,
    ),
    # NOTE: this case checks no hinted wait, because exchangelib 5.6 reads
    # BackOffMilliseconds only from a SOAP fault. For an ErrorServerBusy
    # response message, syncd backs off by its own schedule.
    Case(
        "busy-message", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.SERVER_BUSY_MESSAGE, back_off_ms=BACK_OFF_MS),
        ("ErrorServerBusy", RETRY),
    ),
    Case(
        "http-429", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.HTTP_429, retry_after=RETRY_AFTER),
        ("429", RETRY), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "http-503", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.HTTP_503, retry_after=RETRY_AFTER),
        ("503", RETRY), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "dropped", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.DROP),
        ("connection failed", RETRY),
    ),
    Case(
        "slow", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.SLOW, delay=SLOW_DELAY),
        ("timed out", RETRY),
    ),
    Case(
        "token-expired", "ews", _expire_tokens,
        (), fresh_token=True,
    ),
    Case("token-revoked", "ews", _revoke_tokens, ("token",), fresh_token=True),
    Case(
        "sync-state", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.INVALID_SYNC_STATE),
        ("sync state rejected", "from scratch"),
    ),
    Case(
        "sync-state-bare", "ews",
        lambda w: _ews(w).fail_next("SyncFolderItems", EwsFault.INVALID_SYNC_STATE_BARE),
        ("sync state rejected", "from scratch"),
    ),
    Case(
        "throttled", "graph",
        lambda w: _graph(w).fail_next(GraphFault.THROTTLED, match="delta", retry_after=RETRY_AFTER),
        ("429", RETRY), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "throttled-in-batch", "graph",
        lambda w: _graph(w).fail_next(GraphFault.THROTTLED, match="/$value", retry_after=RETRY_AFTER),
        # The backend sends throttled sub-requests again itself, without giving up the batch.
        (r"throttled \(HTTP 429\)", r"again in (?P<wait>\d+(?:\.\d+)?) s"), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "http-503", "graph",
        lambda w: _graph(w).fail_next(GraphFault.UNAVAILABLE, match="delta", retry_after=RETRY_AFTER),
        ("503", RETRY), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "http-504", "graph",
        lambda w: _graph(w).fail_next(GraphFault.GATEWAY_TIMEOUT, match="delta", retry_after=RETRY_AFTER),
        ("504", RETRY), hinted_wait=RETRY_AFTER,
    ),
    Case(
        "dropped", "graph",
        lambda w: _graph(w).fail_next(GraphFault.DROP, match="delta"),
        ("connection failed", RETRY),
    ),
    Case(
        "slow", "graph",
        lambda w: _graph(w).fail_next(GraphFault.SLOW, match="delta", delay=SLOW_DELAY),
        ("timed out", RETRY),
    ),
    Case(
        "token-revoked", "graph", _revoke_tokens,
        ("rejected the access token", "fetching a new one"), fresh_token=True,
    ),
    Case(
        "sync-state", "graph",
        lambda w: _graph(w).fail_next(GraphFault.SYNC_STATE_NOT_FOUND, match="delta"),
        ("sync state rejected", "from scratch"),
    ),
]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def _case_id(case: Any) -> str:
    return f"{case.kind}-{case.name}" if isinstance(case, Case) else str(case)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backend_fault_survived_in_pass(
    case: Case,
    store_url: str,
    tokens: FakeTokenServer,
    world_factory: Callable[[str, str], World],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if case.fresh_token:
        # Tokens expire TOKEN_MARGIN + 2 s after they are issued. EWS treats
        # them as expired after 2 s, and msal does not serve them from its
        # cache. Graph keeps using one until it is rejected.
        tokens.expires_in = TOKEN_MARGIN + 2
    world = world_factory(case.kind, store_url)
    world.drop_mails()

    world.run_pass(on_item=_after_first_batch(lambda: case.inject(world)))
    world.run_pass()

    assert world.errors == []
    assert_nothing_lost_nothing_twice(world)
    if case.fresh_token:
        assert len(world.tokens.token_requests) >= 2
    if case.log:
        match = assert_logged(caplog, *case.log)
        if case.hinted_wait is not None:
            assert float(match["wait"]) >= case.hinted_wait - 0.05


# -- the database going away mid-pass ------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[PostgresCluster, str]]:
    """A PostgreSQL cluster of this module's own, with a migrated template database."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no private PostgreSQL cluster for the restart cases: {reason}")
    with PostgresCluster() as cluster:
        admin = create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text('CREATE DATABASE "fault_template"'))
        admin.dispose()
        engine = db.create_store_engine(cluster.url("fault_template"))
        db.upgrade(engine)
        engine.dispose()
        yield cluster, "fault_template"


@pytest.fixture
def restartable_url(private_postgres: tuple[PostgresCluster, str]) -> str:
    cluster, template = private_postgres
    name = f"fault_{uuid.uuid4().hex[:12]}"
    admin = create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    return cluster.url(name)


def _restart_on_third_insert(world: World, cluster: PostgresCluster) -> None:
    """Restart the server while the third item's transaction is open, just before its first INSERT."""
    engine = world.sessions.kw["bind"]
    inserts = {"count": 0}

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()[:3]
        if [word.lower().strip('"') for word in words] not in (
            ["insert", "into", "correspondence"], ["insert", "into", "unmatched_mail"]
        ):
            return
        inserts["count"] += 1
        if inserts["count"] == BATCH_SIZE + 1:
            cluster.restart()

    event.listen(engine, "before_cursor_execute", before_execute)


@pytest.mark.parametrize("kind", ["ews", "graph"])
@pytest.mark.parametrize("outage", ["stopped-between-batches", "restarted-mid-transaction", "restarted-between-batches"])
def test_database_outage_mid_pass(
    kind: str,
    outage: str,
    private_postgres: tuple[PostgresCluster, str],
    restartable_url: str,
    world_factory: Callable[[str, str], World],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, _ = private_postgres
    world = world_factory(kind, restartable_url)
    world.drop_mails()

    if outage == "stopped-between-batches":
        # Down for the rest of the pass: the next write fails with connection refused.
        world.run_pass(on_item=_after_first_batch(cluster.stop))
        cluster.start()
    elif outage == "restarted-mid-transaction":
        _restart_on_third_insert(world, cluster)
        world.run_pass()
        # The server is back at once, so the failed pass could store why it ended.
        with world.sessions() as session:
            mailbox = session.scalars(select(Mailbox).where(Mailbox.address == MAILBOX)).one()
        assert mailbox.state == "failing"
        assert "database unavailable" in (mailbox.last_error or "")
    else:
        # Every pooled connection is dead after the restart, so the pre-ping opens a new one.
        world.run_pass(on_item=_after_first_batch(cluster.restart))
    world.run_pass()

    assert_nothing_lost_nothing_twice(world)
    if outage == "restarted-between-batches":
        assert world.errors == []
        return
    [error] = world.errors
    assert isinstance(error, DatabaseUnavailableError)
    assert_logged(caplog, "database unavailable", "will retry at the next run")
    with world.sessions() as session:
        mailbox = session.scalars(select(Mailbox).where(Mailbox.address == MAILBOX)).one()
    # The pass after the outage cleared the error it left.
    assert mailbox.state == "ok"
    assert mailbox.last_error is None
