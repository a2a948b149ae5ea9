"""The main job against the fake Exchange server: enrol, check, sync, feedback, faults.

exchangelib runs unpatched against a real HTTP server on 127.0.0.1; the
commands run through the real CLI, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import exchangelib
import pytest
from cli_runner import SyncdCli
from fakes.ews_server import FakeEwsServer, Fault
from fakes.token_server import FakeTokenServer
from sqlalchemy import select

import syncd.backends
from crmstore import db
from crmstore.models import Mailbox
from syncd.backends import open_backend
from syncd.settings import load_settings

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SAMPLES / "expected.json").read_text(encoding="utf-8"))

INGRID = "ingrid.berg@salg.example"
LARS = "lars.ovrebo@salg.example"
INBOUND = "crm@salg.example"
SERVICE_PASSWORD = "Sv4rt-hemmelig-æøå"
SYNC_FOLDER = "CRM-arkiv"
TENANT = "5d2f8a4c-9b1e-4c7a-8e3d-0f6b2a9c4e71"
CLIENT = "c8e1f0a2-7d4b-4e9c-a5f3-2b6d9e0c1a84"
CLIENT_SECRET = "klient-hemmelighet-Tromsø-3"


class Syncd(SyncdCli):
    def __init__(self, store_url: str, tmp_path: Path) -> None:
        config = tmp_path / "settings.toml"
        config.write_text(
            "[sync]\nmax_attempts = 4\nmax_backoff_seconds = 3\nbatch_size = 4\n"
            "[ews]\ntimeout_seconds = 1\n"
        )
        super().__init__({
            "SYNCD_DATABASE_URL": store_url,
            "SYNCD_CONFIG": str(config),
            "SYNCD_SECRET_EWS_PASSWORD": SERVICE_PASSWORD,
        })

    def enroll(self, server: FakeEwsServer, address: str, *extra: str) -> None:
        self(
            "mailbox", "enroll", address, "--backend", "ews", "--endpoint", server.url,
            "--auth", "basic", "--username", "svc-crm@salg.example", *extra,
        )
        self("mailbox", "check", address)


@pytest.fixture
def server() -> Iterator[FakeEwsServer]:
    with FakeEwsServer() as fake:
        for address in (INGRID, LARS, INBOUND):
            fake.add_mailbox(address)
        yield fake
    syncd.backends.forget_credentials()
    exchangelib.close_connections()


@pytest.fixture
def run(store_url: str, tmp_path: Path) -> Syncd:
    syncd_cli = Syncd(store_url, tmp_path)
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    return syncd_cli


def _drop_samples(server: FakeEwsServer, address: str) -> None:
    for path in sorted((SAMPLES / "mail").glob("*.eml")):
        server.drop(address, SYNC_FOLDER, path.read_bytes())


def test_check_creates_folder_once(server: FakeEwsServer, run: Syncd) -> None:
    run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "basic",
        "--username", "svc-crm@salg.example")

    first = run("mailbox", "check", INGRID)
    second = run("mailbox", "check", INGRID)

    assert f"created folder '{SYNC_FOLDER}'" in first.output
    assert f"found folder '{SYNC_FOLDER}'" in second.output
    names = [folder.name for folder in server.folders(INGRID)]
    assert names.count(SYNC_FOLDER) == 1


def test_samples_filed_with_categories(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    _drop_samples(server, INGRID)

    counts = run.json("sync", "--once")

    outcomes = [entry["outcome"] for entry in EXPECTED.values()]
    assert counts["seen"] == len(EXPECTED)
    assert counts["filed"] == outcomes.count("filed")
    assert counts["unmatched"] == outcomes.count("unmatched")
    assert counts["duplicates"] == outcomes.count("duplicate")
    categories = sorted(tuple(item.categories) for item in server.items(INGRID, SYNC_FOLDER))
    filed = outcomes.count("filed") + outcomes.count("duplicate")
    assert categories.count(("Arkivert i CRM",)) == filed
    assert categories.count(("Ikke arkivert i CRM",)) == outcomes.count("unmatched")


def test_idle_pass_sends_one_sync_per_folder(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    _drop_samples(server, INGRID)
    run("sync", "--once")
    server.clear_requests()

    counts = run.json("sync", "--once")

    assert counts["seen"] == 0
    operations = [record.operation for record in server.requests if record.mailbox == INGRID]
    assert operations.count("SyncFolderItems") == 1
    assert set(operations) <= {"SyncFolderItems", "FindFolder"}
    # NOTE: finding the sync folder by name costs one FindFolder per pass;
    # the folder id could be cached to make an idle pass a single request.


def test_move_post_action(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID, "--post-action", "move")
    _drop_samples(server, INGRID)

    run("sync", "--once")

    assert server.items(INGRID, SYNC_FOLDER) == []
    assert len(server.items(INGRID, f"{SYNC_FOLDER}/Arkivert")) == len(EXPECTED)


@pytest.mark.parametrize(
    "fault",
    [Fault.SERVER_BUSY, Fault.SERVER_BUSY_MESSAGE, Fault.HTTP_503, Fault.HTTP_429, Fault.DROP, Fault.SLOW],
)
def test_faults_survived(server: FakeEwsServer, run: Syncd, fault: Fault) -> None:
    run.enroll(server, INGRID)
    _drop_samples(server, INGRID)
    server.fail_next("GetItem", fault, back_off_ms=200, retry_after=1, delay=2.0)
    server.fail_next("SyncFolderItems", fault, back_off_ms=200, retry_after=1, delay=2.0)

    counts = run.json("sync", "--once")
    again = run.json("sync", "--once")

    assert counts["seen"] == len(EXPECTED)
    assert counts["failed"] == 0
    assert again["seen"] == 0
    filed = run.json("correspondence", "list")
    assert len(filed) == sum(1 for e in EXPECTED.values() if e["outcome"] == "filed")


def test_server_back_off_honoured(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    _drop_samples(server, INGRID)
    server.fail_next("SyncFolderItems", Fault.SERVER_BUSY, back_off_ms=1500)

    started = time.monotonic()
    counts = run.json("sync", "--once")

    assert time.monotonic() - started >= 1.5
    assert counts["seen"] == len(EXPECTED)


def test_invalid_sync_state_restarts_folder(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    _drop_samples(server, INGRID)
    run("sync", "--once")
    server.drop(INGRID, SYNC_FOLDER, (SAMPLES / "mail" / "06-known-sender-no-code.eml").read_bytes().replace(
        b"Message-ID: <", b"Message-ID: <new-"
    ))
    server.fail_next("SyncFolderItems", Fault.INVALID_SYNC_STATE)
    server.clear_requests()

    counts = run.json("sync", "--once")

    # The folder is read from the start, but the ledger already holds every
    # item but the new one, so only that one is fetched and counted: one
    # GetItem reads its MIME and its categories, which tagging reuses.
    assert counts == {"seen": 1, "filed": 1, "unmatched": 0, "failed": 0, "duplicates": 0}
    operations = [record.operation for record in server.requests if record.mailbox == INGRID]
    assert operations.count("GetItem") == 1


def test_rejected_credentials_mark_mailbox_failing(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    run.enroll(server, LARS)
    _drop_samples(server, LARS)
    server.fail_next("*", Fault.HTTP_401)

    result = run("sync", "--once", "--json", code=1)

    assert "Error: mailbox ingrid.berg@salg.example:" in result.stderr
    status = {row["mailbox"]: row for row in run.json("status")}
    assert status[INGRID]["state"] == "failing"
    assert status[INGRID]["last_error"]
    assert status[LARS]["state"] == "ok"
    assert status[LARS]["unmatched"] + status[LARS]["filed"] + status[LARS]["duplicates"] == len(EXPECTED)


def test_inbound_forward_filed_as_original(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INBOUND, "--role", "inbound")
    forward = SAMPLES / "mail" / "05-attached-forward.eml"
    server.drop(INBOUND, "inbox", forward.read_bytes())

    counts = run.json("sync", "--once")

    assert counts["filed"] == 1
    [filed] = run.json("correspondence", "list")
    expected = EXPECTED[forward.name]
    assert filed["from"] == expected["from"]
    assert filed["subject"] == expected["subject"]
    assert filed["sources"][0]["mailbox"] == INBOUND


def test_missing_secret_named(server: FakeEwsServer, run: Syncd) -> None:
    run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "basic",
        "--username", "svc-crm@salg.example", "--secret", "other-password")

    result = run("mailbox", "check", INGRID, code=1)

    assert "secret 'other-password' not found: set SYNCD_SECRET_OTHER_PASSWORD" in result.stderr


def test_enroll_ews_needs_auth(run: Syncd) -> None:
    result = run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", "https://mail.example/EWS/Exchange.asmx", code=2)
    assert "--backend ews needs --auth ntlm, basic or oauth2" in result.output


def test_mailboxes_of_one_account_share_pool(server: FakeEwsServer, run: Syncd, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run.enroll(server, INGRID)
    run.enroll(server, LARS)
    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    engine = db.create_store_engine(store_url)
    with db.session_factory(engine)() as session:
        mailboxes = list(session.scalars(select(Mailbox).order_by(Mailbox.address)))
    engine.dispose()

    first, second = (open_backend(mailbox, settings) for mailbox in mailboxes)

    # exchangelib keys its connection pool on the credentials object, so one
    # object per service account makes [ews] max_connections_per_account
    # the cap for all of the account's mailboxes together.
    assert first._account.protocol is second._account.protocol
    assert first._account.protocol.max_connections == settings.ews.max_connections_per_account
    first.close()
    second.close()


def test_copy_of_queued_mail_tagged_not_filed(server: FakeEwsServer, run: Syncd) -> None:
    run.enroll(server, INGRID)
    mail = (SAMPLES / "mail" / "07-unknown-sender-no-code.eml").read_bytes()
    server.drop(INGRID, SYNC_FOLDER, mail)
    server.drop(INGRID, SYNC_FOLDER, mail)

    counts = run.json("sync", "--once")

    assert (counts["unmatched"], counts["duplicates"]) == (1, 1)
    categories = [item.categories for item in server.items(INGRID, SYNC_FOLDER)]
    assert categories == [["Ikke arkivert i CRM"], ["Ikke arkivert i CRM"]]


# -- OAuth 2.0: access tokens rejected before their expiry -------------------------------


@pytest.fixture
def token_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenServer]:
    with FakeTokenServer(TENANT) as fake:
        fake.add_client(CLIENT, secret=CLIENT_SECRET)
        # requests, and so msal, reads the CA bundle from the environment.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_bundle))
        # requests-oauthlib sends tokens only over https unless this is set, and the fake EWS is plain http.
        monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
        yield fake


@pytest.fixture
def oauth_run(store_url: str, tmp_path: Path, server: FakeEwsServer, token_server: FakeTokenServer) -> SyncdCli:
    """The CLI with INGRID enrolled with --auth oauth2 and checked, on tokens that last an hour."""
    config = tmp_path / "settings.toml"
    config.write_text(
        "[sync]\nmax_attempts = 2\nmax_backoff_seconds = 1\nbatch_size = 4\n"
        "[ews]\ntimeout_seconds = 1\n"
        f'[entra]\nauthority_host = "{token_server.authority_host}"\n'
    )
    syncd_cli = SyncdCli({
        "SYNCD_DATABASE_URL": store_url,
        "SYNCD_CONFIG": str(config),
        "SYNCD_SECRET_ENTRA_CLIENT_SECRET": CLIENT_SECRET,
    })
    syncd_cli("crm", "load", str(SAMPLES / "crm.json"))
    server.require_bearer(token_server.is_valid)
    syncd_cli(
        "mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "oauth2",
        "--tenant", TENANT, "--client-id", CLIENT,
    )
    syncd_cli("mailbox", "check", INGRID)
    return syncd_cli


def _revoking_at_second_page(server: FakeEwsServer, token_server: FakeTokenServer) -> Callable[[str], bool]:
    """Return a bearer check that revokes every token issued so far when the pass requests its second page."""
    revoked = False

    def check(token: str) -> bool:
        nonlocal revoked
        pages = sum(1 for record in server.requests if record.operation == "SyncFolderItems")
        if pages == 2 and not revoked:
            for issued in list(token_server.issued_tokens):
                token_server.revoke(issued)
            revoked = True
        return token_server.is_valid(token)

    return check


def _token_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage() for record in caplog.records
        if record.levelno == logging.WARNING and "access token" in record.getMessage()
    ]


def _assert_no_token_logged(caplog: pytest.LogCaptureFixture, token_server: FakeTokenServer) -> None:
    assert token_server.issued_tokens
    for token in token_server.issued_tokens:
        assert token not in caplog.text


def test_revoked_token_replaced_mid_pass(
    server: FakeEwsServer, token_server: FakeTokenServer, oauth_run: SyncdCli, caplog: pytest.LogCaptureFixture
) -> None:
    _drop_samples(server, INGRID)
    server.clear_requests()
    server.require_bearer(_revoking_at_second_page(server, token_server))
    token_requests = len(token_server.token_requests)

    counts = oauth_run.json("sync", "--once")
    again = oauth_run.json("sync", "--once")

    assert _token_warnings(caplog) == [
        f"Mailbox {INGRID}: Exchange rejected the access token before its expiry (HTTP 401); "
        "sending the request again with a new token"
    ]
    # msal would serve the revoked token from its cache for most of an hour,
    # so the second token shows that the backend made msal drop it.
    assert len(token_server.token_requests) == token_requests + 1
    outcomes = [entry["outcome"] for entry in EXPECTED.values()]
    assert counts["seen"] == len(EXPECTED)
    assert counts["failed"] == 0
    assert counts["filed"] == outcomes.count("filed")
    assert counts["unmatched"] == outcomes.count("unmatched")
    assert again["seen"] == 0
    assert len(oauth_run.json("correspondence", "list")) == outcomes.count("filed")
    assert len(oauth_run.json("unmatched", "list")) == outcomes.count("unmatched")
    # Each item carries exactly one category, so no feedback was written twice.
    assert all(len(item.categories) == 1 for item in server.items(INGRID, SYNC_FOLDER))
    [status] = oauth_run.json("status")
    assert status["state"] == "ok"
    _assert_no_token_logged(caplog, token_server)


def test_token_rejected_twice_marks_mailbox_failing(
    server: FakeEwsServer, token_server: FakeTokenServer, oauth_run: SyncdCli, caplog: pytest.LogCaptureFixture
) -> None:
    _drop_samples(server, INGRID)
    server.require_bearer(lambda _token: False)
    token_requests = len(token_server.token_requests)

    result = oauth_run("sync", "--once", "--json", code=1)

    assert f"Error: mailbox {INGRID}:" in result.stderr
    assert "access denied (UnauthorizedError" in result.stderr
    assert len(_token_warnings(caplog)) == 1
    assert len(token_server.token_requests) == token_requests + 1
    [status] = oauth_run.json("status")
    assert status["state"] == "failing"
    assert "access denied" in status["last_error"]
    _assert_no_token_logged(caplog, token_server)

    # Once Exchange accepts the app's tokens again, the next pass files everything.
    server.require_bearer(token_server.is_valid)
    counts = oauth_run.json("sync", "--once")

    assert counts["seen"] == len(EXPECTED)
    [status] = oauth_run.json("status")
    assert status["state"] == "ok"


# -- NTLM ---------------------------------------------------------------------------

NTLM_ACCOUNT = "SALG\\svc-crm"


def test_ntlm_samples_filed_with_categories(server: FakeEwsServer, run: Syncd) -> None:
    server.require_ntlm(NTLM_ACCOUNT, SERVICE_PASSWORD)
    run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "ntlm",
        "--username", NTLM_ACCOUNT)
    run("mailbox", "check", INGRID)
    _drop_samples(server, INGRID)

    counts = run.json("sync", "--once")

    outcomes = [entry["outcome"] for entry in EXPECTED.values()]
    assert counts["seen"] == len(EXPECTED)
    assert counts["failed"] == 0
    assert counts["filed"] == outcomes.count("filed")
    assert counts["unmatched"] == outcomes.count("unmatched")
    categories = sorted(tuple(item.categories) for item in server.items(INGRID, SYNC_FOLDER))
    filed = outcomes.count("filed") + outcomes.count("duplicate")
    assert categories.count(("Arkivert i CRM",)) == filed
    assert categories.count(("Ikke arkivert i CRM",)) == outcomes.count("unmatched")
    # check and sync each open their own connections, and each connection logs on once.
    assert server.ntlm_logons
    assert set(server.ntlm_logons) == {NTLM_ACCOUNT}
    assert len(server.ntlm_logons) < len(server.requests)


def test_ntlm_wrong_password_check_fails(server: FakeEwsServer, run: Syncd) -> None:
    server.require_ntlm(NTLM_ACCOUNT, SERVICE_PASSWORD + "-ny")
    run("mailbox", "enroll", INGRID, "--backend", "ews", "--endpoint", server.url, "--auth", "ntlm",
        "--username", NTLM_ACCOUNT)

    result = run("mailbox", "check", INGRID, code=1)

    assert result.stderr.startswith(f"Error: EWS folder lookup for mailbox {INGRID} failed: access denied")
    assert "check the service account's credentials" in result.stderr
    assert server.ntlm_logons == []
