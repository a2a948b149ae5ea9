"""EwsBackend against the fake EWS server: folders, batches, feedback, errors, OAuth and logging."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import exchangelib
import pytest
import requests
from exchangelib import Configuration
from exchangelib import errors as ews
from exchangelib.protocol import Protocol
from fakes.ews_server import FakeEwsServer, Fault, RequestRecord
from oauthlib.oauth2.rfc6749 import errors as oauth

from syncd.backends.base import Batch, FeedbackRequest, Folder, FolderReport
from syncd.backends.ews import (
    EwsBackend,
    ProvidedTokenCredentials,
    make_credentials,
)
from syncd.backends.ews_errors import translate_error
from syncd.backends.throttling import retry_after_seconds
from syncd.errors import (
    BackendAuthError,
    ConfigError,
    FolderNotFoundError,
    PermanentBackendError,
    SyncStateInvalidError,
    TransientBackendError,
)
from syncd.mail import Outcome
from syncd.redact import SENSITIVE_LOGGERS, SecretLogFilter, install_log_filter

MAILBOX = "kari.nordmann@example.test"
SERVICE_USER = "svc-crm@example.test"
SERVICE_PASSWORD = "hemmelig-passord-æøå"

CATEGORIES = {
    "filed": "Arkivert i CRM",
    "unmatched": "Ikke arkivert i CRM",
    "failed": "Ikke arkivert i CRM",
    "duplicate": "Arkivert i CRM",
}


def norwegian_mail(subject: str = "Bestilling av kontorstoler – Ålesund", message_id: str | None = None) -> bytes:
    """Return the RFC 5322 bytes of a small mail with Norwegian defaults."""
    message = EmailMessage()
    message["From"] = "Bjørn Ærø <bjorn.aero@example.test>"
    message["To"] = f"Kari Nordmann <{MAILBOX}>"
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="example.test")
    message.set_content("Hei!\n\nTakk for tilbudet. Vi tar 12 stoler.\n\nMvh Bjørn\n")
    return message.as_bytes()


@pytest.fixture
def server() -> Iterator[FakeEwsServer]:
    with FakeEwsServer() as fake:
        fake.add_mailbox(MAILBOX)
        yield fake


BackendFactory = Callable[..., EwsBackend]


@pytest.fixture
def make_backend(server: FakeEwsServer) -> Iterator[BackendFactory]:
    backends: list[EwsBackend] = []

    def factory(**overrides: Any) -> EwsBackend:
        settings: dict[str, Any] = {
            "endpoint": server.url,
            # Fresh credentials per backend: exchangelib caches one connection
            # pool per credentials object for the whole process.
            "credentials": make_credentials("basic", username=SERVICE_USER, password=SERVICE_PASSWORD),
            "folder_names": ["CRM-arkiv"],
            "categories": CATEGORIES,
            "post_action": "move",
            "processed_folder_name": "Behandlet",
            "batch_size": 3,
            "timeout": 0.5,
        }
        settings.update(overrides)
        backend = EwsBackend(MAILBOX, **settings)
        backends.append(backend)
        return backend

    yield factory
    for backend in backends:
        backend.close()
    exchangelib.close_connections()


@pytest.fixture
def backend(make_backend: BackendFactory) -> EwsBackend:
    return make_backend()


@pytest.fixture
def sync_folder(backend: EwsBackend) -> Folder:
    [report] = backend.ensure_folders()
    return report.folder


def drain(backend: EwsBackend, folder: Folder, state: str | None) -> list[Batch]:
    return list(backend.batches(folder, state))


# -- folders ---------------------------------------------------------------------


def test_ensure_folders_creates_folder(server: FakeEwsServer, backend: EwsBackend) -> None:
    [report] = backend.ensure_folders()

    assert report.created is True
    assert report.folder.name == "CRM-arkiv"
    assert [f.id for f in server.folders(MAILBOX) if f.path == "CRM-arkiv"] == [report.folder.key]


def test_ensure_folders_second_call_finds(server: FakeEwsServer, backend: EwsBackend) -> None:
    [first] = backend.ensure_folders()

    [second] = backend.ensure_folders()

    assert second.created is False
    assert second.folder == first.folder
    assert server.requests.count(RequestRecord(MAILBOX, "CreateFolder")) == 1


def test_ensure_folders_finds_folder_of_other_node(make_backend: BackendFactory) -> None:
    [created] = make_backend().ensure_folders()

    [found] = make_backend().ensure_folders()

    assert found == FolderReport(folder=created.folder, created=False)


def test_ensure_folders_uses_shallow_find_only(server: FakeEwsServer, backend: EwsBackend) -> None:
    backend.ensure_folders()

    operations = [r.operation for r in server.requests]
    assert operations == ["GetFolder", "GetFolder", "FindFolder", "CreateFolder"]


def test_ensure_folders_inbound_returns_inbox(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(inbound=True, folder_names=[])

    [report] = backend.ensure_folders()

    assert report.folder.name == "Inbox"
    assert report.created is False
    assert RequestRecord(MAILBOX, "CreateFolder") not in server.requests


# -- batches -----------------------------------------------------------------------


def test_batches_yield_dropped_items_once(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    raws = {server.drop(MAILBOX, "CRM-arkiv", raw): raw for raw in (norwegian_mail(f"Ordre {n} – Bodø") for n in range(4))}

    batches = drain(backend, sync_folder, None)

    items = [item for batch in batches for item in batch.items]
    assert [len(batch.items) for batch in batches] == [3, 1]
    assert [item.item_id for item in items] == list(raws)
    assert all(item.raw == raws[item.item_id] for item in items)
    assert all(item.error is None for item in items)


def test_batches_fetch_mime_once_per_page(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    for n in range(4):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ordre {n}"))
    server.clear_requests()

    drain(backend, sync_folder, None)

    operations = [r.operation for r in server.requests]
    assert operations == ["SyncFolderItems", "GetItem", "SyncFolderItems", "GetItem"]


def test_batches_resume_from_last_state(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Første henvendelse"))
    state = drain(backend, sync_folder, None)[-1].state
    later = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Oppfølging"))

    items = [item for batch in drain(backend, sync_folder, state) for item in batch.items]

    assert [item.item_id for item in items] == [later]


def test_idle_pass_sends_one_sync_per_folder(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(folder_names=["CRM-arkiv", "CRM-tilbud"])
    folders = [report.folder for report in backend.ensure_folders()]
    server.drop(MAILBOX, "CRM-tilbud", norwegian_mail())
    states = {folder: drain(backend, folder, None)[-1].state for folder in folders}
    server.clear_requests()

    for folder in folders:
        drain(backend, folder, states[folder])

    assert server.requests == [RequestRecord(MAILBOX, "SyncFolderItems")] * 2


def test_idle_batch_keeps_cursor(backend: EwsBackend, sync_folder: Folder) -> None:
    state = drain(backend, sync_folder, None)[-1].state

    batches = drain(backend, sync_folder, state)

    assert [(batch.items, batch.state) for batch in batches] == [([], state)]


def test_batches_skip_own_category_updates(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    state = drain(backend, report.folder, None)[-1].state
    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED)])

    items = [item for batch in drain(backend, report.folder, state) for item in batch.items]

    assert items == []


def test_batches_inbound_scan_inbox(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(inbound=True, folder_names=[])
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail("Videresendt: tilbud"))

    items = [item for batch in drain(backend, report.folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]


def test_failed_get_item_becomes_failed_item(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    good = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Lesbar"))
    broken = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Ødelagt"))
    server.break_item(MAILBOX, broken, "ErrorItemCorrupt")

    items = {item.item_id: item for batch in drain(backend, sync_folder, None) for item in batch.items}

    assert items[good].raw is not None
    assert items[broken].raw is None
    assert "ErrorItemCorrupt" in str(items[broken].error)


def test_unreadable_mime_becomes_failed_item(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(message_id="<stor-melding@example.test>"))
    server.garble_mime(MAILBOX, item_id)

    [item] = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert item.raw is None
    assert "stor-melding@example.test" in str(item.error)


def test_item_removed_before_fetch_becomes_failed_item(
    server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    # The sync still lists the item, but GetItem no longer finds it.
    server.break_item(MAILBOX, item_id, "ErrorItemNotFound")

    [item] = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert item.raw is None
    assert "ErrorItemNotFound" in str(item.error)


# -- errors --------------------------------------------------------------------------


def test_invalid_sync_state_raises(backend: EwsBackend, sync_folder: Folder) -> None:
    with pytest.raises(SyncStateInvalidError) as caught:
        drain(backend, sync_folder, "utdatert-tilstand")

    assert caught.value.mailbox == MAILBOX


@pytest.mark.parametrize("fault", [Fault.INVALID_SYNC_STATE, Fault.INVALID_SYNC_STATE_BARE])
def test_rejected_sync_state_shapes_raise(
    server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder, fault: Fault
) -> None:
    state = drain(backend, sync_folder, None)[-1].state
    server.fail_next("SyncFolderItems", fault)

    with pytest.raises(SyncStateInvalidError):
        drain(backend, sync_folder, state)


def test_server_busy_sets_retry_after(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    server.fail_next("SyncFolderItems", Fault.SERVER_BUSY, back_off_ms=2500)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after == 2.5
    assert MAILBOX in str(caught.value)


def test_busy_message_gives_no_retry_hint(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    """exchangelib 5.6 ignores BackOffMilliseconds inside a response message, so there is no hint to pass on."""
    server.fail_next("SyncFolderItems", Fault.SERVER_BUSY_MESSAGE)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after is None


def test_http_401_raises_auth_error(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    server.fail_next("SyncFolderItems", Fault.HTTP_401)

    with pytest.raises(BackendAuthError) as caught:
        drain(backend, sync_folder, None)

    assert MAILBOX in str(caught.value)
    assert SERVICE_PASSWORD not in str(caught.value)


def test_http_401_with_basic_auth_sent_once(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    server.fail_next("SyncFolderItems", Fault.HTTP_401)
    server.clear_requests()

    with pytest.raises(BackendAuthError):
        drain(backend, sync_folder, None)

    assert [record.operation for record in server.requests] == ["SyncFolderItems"]


def test_unknown_mailbox_raises_auth_error(server: FakeEwsServer) -> None:
    backend = EwsBackend(
        "ukjent@example.test",
        endpoint=server.url,
        credentials=make_credentials("basic", username=SERVICE_USER, password=SERVICE_PASSWORD),
        folder_names=["CRM-arkiv"],
    )
    try:
        with pytest.raises(BackendAuthError):
            backend.ensure_folders()
    finally:
        backend.close()
        exchangelib.close_connections()


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault.DROP, None),
        (Fault.SLOW, None),
        (Fault.HTTP_503, 7.0),
        (Fault.HTTP_429, 7.0),
    ],
)
def test_transport_faults_raise_transient(
    server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder, fault: Fault, retry_after: float | None
) -> None:
    server.fail_next("SyncFolderItems", fault, retry_after=7, delay=1.0)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after == retry_after


def test_backend_recovers_after_transient_fault(
    server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next("GetItem", Fault.DROP)
    with pytest.raises(TransientBackendError):
        drain(backend, sync_folder, None)

    items = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]


# -- feedback ------------------------------------------------------------------------


def test_feedback_appends_category_and_moves(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Kontrakt"), categories=["Blå kategori"])
    request = FeedbackRequest(sync_folder.key, item_id, Outcome.FILED)

    applied = backend.apply_feedback([request])

    [moved] = server.items(MAILBOX, "CRM-arkiv/Behandlet")
    assert applied == [request]
    assert moved.categories == ["Blå kategori", "Arkivert i CRM"]
    assert server.items(MAILBOX, "CRM-arkiv") == []


def test_feedback_writes_in_bulk(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(batch_size=50)
    [report] = backend.ensure_folders()
    requests_ = [
        FeedbackRequest(report.folder.key, server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}")), outcome)
        for n, outcome in enumerate([Outcome.FILED, Outcome.UNMATCHED, Outcome.DUPLICATE])
    ]
    backend.apply_feedback(requests_[:1])
    server.clear_requests()

    backend.apply_feedback(requests_[1:])

    operations = [r.operation for r in server.requests]
    assert operations == ["GetItem", "UpdateItem", "MoveItem"]


def test_feedback_reuses_fetched_categories(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep", batch_size=50)
    [report] = backend.ensure_folders()
    for n in range(3):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}"))
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Egen kategori"), categories=["Blå kategori"])
    server.clear_requests()

    [batch] = drain(backend, report.folder, None)
    backend.apply_feedback([FeedbackRequest(report.folder.key, item.item_id, Outcome.FILED) for item in batch.items])

    # One GetItem per batch reads the MIME and the categories, so feedback only writes.
    assert [r.operation for r in server.requests] == ["SyncFolderItems", "GetItem", "UpdateItem"]
    stored = {item.subject: item.categories for item in server.items(MAILBOX, "CRM-arkiv")}
    assert stored == {
        "Sak 0": ["Arkivert i CRM"],
        "Sak 1": ["Arkivert i CRM"],
        "Sak 2": ["Arkivert i CRM"],
        "Egen kategori": ["Blå kategori", "Arkivert i CRM"],
    }


def test_feedback_keeps_category_set_after_fetch(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    changed = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Endret av brukeren"))
    untouched = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Urørt"))
    drain(backend, report.folder, None)
    server.set_categories(MAILBOX, changed, ["Viktig"])
    server.clear_requests()
    requests_ = [FeedbackRequest(report.folder.key, item_id, Outcome.FILED) for item_id in (changed, untouched)]

    applied = backend.apply_feedback(requests_)

    stored = {item.subject: item.categories for item in server.items(MAILBOX, "CRM-arkiv")}
    assert sorted(applied, key=requests_.index) == requests_
    assert stored == {"Endret av brukeren": ["Viktig", "Arkivert i CRM"], "Urørt": ["Arkivert i CRM"]}
    # The write with the stale change key is rejected, and only that item is read again.
    assert [r.operation for r in server.requests] == ["UpdateItem", "GetItem", "UpdateItem"]


def test_feedback_unmatched_category(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())

    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.UNMATCHED)])

    [stored] = server.items(MAILBOX, "CRM-arkiv")
    assert stored.categories == ["Ikke arkivert i CRM"]


def test_feedback_twice_adds_category_once(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    request = FeedbackRequest(report.folder.key, item_id, Outcome.FILED)

    backend.apply_feedback([request])
    applied = backend.apply_feedback([request])

    [stored] = server.items(MAILBOX, "CRM-arkiv")
    assert applied == [request]
    assert stored.categories == ["Arkivert i CRM"]


def test_feedback_missing_item_counts_as_applied(backend: EwsBackend, sync_folder: Folder) -> None:
    request = FeedbackRequest(sync_folder.key, "AAMkAfinnesikkelenger", Outcome.FILED)

    assert backend.apply_feedback([request]) == [request]


def test_feedback_delete_moves_to_deleted_items(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="delete")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Søppel"))

    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED)])

    [deleted] = server.items(MAILBOX, "deleteditems")
    assert deleted.subject == "Søppel"
    assert deleted.categories == ["Arkivert i CRM"]


def test_feedback_busy_server_raises_transient(
    server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next("UpdateItem", Fault.SERVER_BUSY, back_off_ms=1000)

    with pytest.raises(TransientBackendError) as caught:
        backend.apply_feedback([FeedbackRequest(sync_folder.key, item_id, Outcome.FILED)])

    assert caught.value.retry_after == 1.0


def test_feedback_broken_item_left_out(server: FakeEwsServer, backend: EwsBackend, sync_folder: Folder) -> None:
    good = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("God"))
    broken = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Ødelagt"))
    server.break_item(MAILBOX, broken, "ErrorItemCorrupt")
    requests_ = [FeedbackRequest(sync_folder.key, item_id, Outcome.FILED) for item_id in (good, broken)]

    applied = backend.apply_feedback(requests_)

    assert applied == requests_[:1]


# -- OAuth 2.0 -----------------------------------------------------------------------


class StubTokenProvider:
    """Hands out msal-style token results in order and counts the calls."""

    def __init__(self, *lifetimes: int) -> None:
        self.lifetimes = list(lifetimes)
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {
            "access_token": f"token-{self.calls}",
            "token_type": "Bearer",
            "expires_in": self.lifetimes[self.calls - 1],
        }


@pytest.fixture
def insecure_oauth_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests-oauthlib refuses tokens over http; the fake server is plain http on loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.mark.usefixtures("insecure_oauth_transport")
def test_oauth_sends_bearer_token(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    provider = StubTokenProvider(3600)
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=provider))

    backend.ensure_folders()

    assert set(server.authorizations) == {"Bearer token-1"}
    assert provider.calls == 1


@pytest.mark.usefixtures("insecure_oauth_transport")
def test_oauth_refreshes_expired_token(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    # The first token is valid for about one second after the 30 s safety margin.
    provider = StubTokenProvider(31, 3600)
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=provider))
    [report] = backend.ensure_folders()
    time.sleep(1.6)
    server.clear_requests()

    drain(backend, report.folder, None)

    assert server.authorizations == ["Bearer token-2"]
    assert provider.calls == 2


def test_oauth_credentials_keep_their_hash() -> None:
    credentials = make_credentials("oauth2", token_provider=StubTokenProvider(3600))
    before = hash(credentials)

    credentials.session_params()

    assert hash(credentials) == before


def test_oauth_expired_token_raises_auth_error(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=StubTokenProvider(0)))

    with pytest.raises(BackendAuthError, match="expires in 0 s"):
        backend.ensure_folders()


def test_oauth_provider_failure_raises_auth_error(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    def rejecting_provider() -> dict[str, Any]:
        raise oauth.InvalidClientError(description="AADSTS7000215: Invalid client secret provided.")

    backend = make_backend(credentials=make_credentials("oauth2", token_provider=rejecting_provider))

    with pytest.raises(BackendAuthError):
        backend.ensure_folders()


class InvalidatingTokenProvider(StubTokenProvider):
    """A StubTokenProvider that records each token passed to `invalidate`, which msal's provider drops from its cache."""

    def __init__(self, *lifetimes: int) -> None:
        super().__init__(*lifetimes)
        self.invalidated: list[str] = []

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)


@pytest.mark.usefixtures("insecure_oauth_transport")
def test_oauth_rejected_token_replaced_once(
    server: FakeEwsServer, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    provider = InvalidatingTokenProvider(3600, 3600)
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=provider))
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next("SyncFolderItems", Fault.HTTP_401)
    server.clear_requests()

    with caplog.at_level(logging.WARNING, logger="syncd.ews"):
        items = [item for batch in drain(backend, report.folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]
    assert provider.invalidated == ["token-1"]
    assert [record.operation for record in server.requests] == ["SyncFolderItems", "SyncFolderItems", "GetItem"]
    assert server.authorizations == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]
    assert [record.getMessage() for record in caplog.records] == [
        f"Mailbox {MAILBOX}: Exchange rejected the access token before its expiry (HTTP 401); "
        "sending the request again with a new token"
    ]


@pytest.mark.usefixtures("insecure_oauth_transport")
def test_oauth_token_rejected_twice_raises_auth_error(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    provider = InvalidatingTokenProvider(3600, 3600)
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=provider))
    [report] = backend.ensure_folders()
    server.fail_next("SyncFolderItems", Fault.HTTP_401, count=2)
    server.clear_requests()

    with pytest.raises(BackendAuthError, match="access denied") as caught:
        drain(backend, report.folder, None)

    assert MAILBOX in str(caught.value)
    assert provider.calls == 2
    assert [record.operation for record in server.requests] == ["SyncFolderItems", "SyncFolderItems"]


@pytest.mark.usefixtures("insecure_oauth_transport", "log_filter")
def test_oauth_failed_replacement_tried_again(
    server: FakeEwsServer, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class UnavailableOnSecondCall(InvalidatingTokenProvider):
        def __call__(self) -> dict[str, Any]:
            if self.calls == 1:
                self.calls += 1
                raise oauth.TemporarilyUnavailableError(description="AADSTS50196: the server is busy.")
            return super().__call__()

    provider = UnavailableOnSecondCall(3600, 3600, 3600)
    backend = make_backend(credentials=make_credentials("oauth2", token_provider=provider))
    [report] = backend.ensure_folders()
    server.fail_next("SyncFolderItems", Fault.HTTP_401, count=2)
    server.clear_requests()
    caplog.set_level(logging.WARNING)

    with pytest.raises(TransientBackendError):
        drain(backend, report.folder, None)
    drain(backend, report.folder, None)

    # The credentials kept the rejected token after the failed token request,
    # so the next request was rejected once more and got a new token.
    assert provider.invalidated == ["token-1", "token-1"]
    assert server.authorizations == ["Bearer token-1", "Bearer token-1", "Bearer token-3"]
    # exchangelib logs the failed request at ERROR, with its headers and SOAP body.
    assert any(record.name == "exchangelib.util" and record.levelno == logging.ERROR for record in caplog.records)
    assert "Bearer token-1" not in caplog.text
    assert "<s:Envelope" not in caplog.text


def test_oauth_replacement_reused_for_same_rejected_token() -> None:
    # Requests on other pooled sessions can carry the rejected token after one
    # of them replaced it. They get the replacement, not another new token.
    provider = InvalidatingTokenProvider(3600, 3600)
    credentials = make_credentials("oauth2", token_provider=provider)
    assert isinstance(credentials, ProvidedTokenCredentials)
    credentials.session_params()

    first = credentials.replace_rejected("token-1")
    second = credentials.replace_rejected("token-1")

    assert first == ("token-2", True)
    assert second == ("token-2", False)
    assert provider.invalidated == ["token-1"]
    assert credentials.client.access_token == "token-2"


# -- error translation ----------------------------------------------------------------


class _Response:
    status_code = 500
    headers: dict[str, str] = {}


#: Every library exception the backend relies on, and the syncd error it must become.
RELIED_ON_ERRORS: list[tuple[BaseException, type[Exception]]] = [
    (ews.ErrorServerBusy("busy", back_off=2.5), TransientBackendError),
    (ews.RateLimitError("max wait", wait=30), TransientBackendError),
    (ews.ErrorTimeoutExpired("timed out"), TransientBackendError),
    (ews.ErrorInternalServerTransientError("transient"), TransientBackendError),
    (ews.ErrorMailboxStoreUnavailable("store down"), TransientBackendError),
    (ews.ErrorMailboxMoveInProgress("moving"), TransientBackendError),
    (ews.ErrorExceededConnectionCount("too many"), TransientBackendError),
    (ews.ErrorTooManyObjectsOpened("too many"), TransientBackendError),
    (ews.ErrorConnectionFailed("failed"), TransientBackendError),
    (oauth.TokenExpiredError(), TransientBackendError),
    (oauth.InvalidClientIdError(), TransientBackendError),
    (requests.ConnectionError("reset"), TransientBackendError),
    (requests.Timeout("slow"), TransientBackendError),
    (ews.UnauthorizedError("401"), BackendAuthError),
    (ews.ErrorAccessDenied("denied"), BackendAuthError),
    (ews.ErrorImpersonateUserDenied("denied"), BackendAuthError),
    (ews.ErrorImpersonationFailed("failed"), BackendAuthError),
    (ews.ErrorNonExistentMailbox("none"), BackendAuthError),
    (oauth.InvalidGrantError(), BackendAuthError),
    (oauth.InvalidClientError(), BackendAuthError),
    (ews.ErrorInvalidSyncStateData("stale"), SyncStateInvalidError),
    (ews.ErrorFolderNotFound("gone"), FolderNotFoundError),
    (ews.MalformedResponseError("garbage"), PermanentBackendError),
    (ews.CASError("CAS error", _Response()), PermanentBackendError),
    (ews.TransportError("TLS"), PermanentBackendError),
    (oauth.InsecureTransportError(), PermanentBackendError),
    (requests.exceptions.SSLError("bad certificate"), PermanentBackendError),
]


@pytest.mark.parametrize(
    ("error", "expected"), RELIED_ON_ERRORS, ids=[type(e).__name__ for e, _ in RELIED_ON_ERRORS]
)
def test_translation_maps_relied_on_error(error: BaseException, expected: type[Exception]) -> None:
    translated = translate_error(error, mailbox=MAILBOX, action="sync")

    assert type(translated) is expected
    assert translated is not None and translated.mailbox == MAILBOX


def test_translation_passes_other_errors() -> None:
    assert translate_error(KeyError("x"), mailbox=MAILBOX, action="sync") is None


def test_translation_redacts_bearer_token() -> None:
    error = ews.MalformedResponseError("headers: {'Authorization': 'Bearer eyJ0eXAiOiJKV1Qi.abc.def'}")

    translated = translate_error(error, mailbox=MAILBOX, action="sync")

    assert "eyJ0eXAiOiJKV1Qi" not in str(translated)


def test_retry_after_reads_http_date() -> None:
    response = requests.Response()
    response.headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"

    assert retry_after_seconds(response.headers) == 0.0


# -- logging ---------------------------------------------------------------------------


@pytest.fixture
def log_filter() -> Iterator[SecretLogFilter]:
    installed = install_log_filter()
    yield installed
    for name in SENSITIVE_LOGGERS:
        logging.getLogger(name).removeFilter(installed)


def test_log_filter_hides_credentials_and_xml(
    server: FakeEwsServer, backend: EwsBackend, log_filter: SecretLogFilter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    backend.ensure_folders()

    basic_value = base64.b64encode(f"{SERVICE_USER}:{SERVICE_PASSWORD}".encode()).decode()
    assert any(r.name == "exchangelib.util" for r in caplog.records)
    assert basic_value not in caplog.text
    assert "<s:Envelope" not in caplog.text


def test_log_filter_drops_xml_records(log_filter: SecretLogFilter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    logging.getLogger("exchangelib.util.xml").debug("Request XML: %s", "<s:Envelope/>")

    assert caplog.records == []


def test_log_filter_redacts_bearer_header(log_filter: SecretLogFilter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    logging.getLogger("exchangelib.util").debug(
        "Request headers: %(headers)s", {"headers": {"Authorization": "Bearer eyJhbGciOi.payload.sig"}}
    )

    assert "eyJhbGciOi" not in caplog.text
    assert "Authorization" in caplog.text


def test_log_filter_on_handler_covers_child_loggers() -> None:
    handler = logging.Handler()
    install_log_filter(handler)
    try:
        record = logging.LogRecord(
            "requests_oauthlib.oauth2_session", logging.DEBUG, __file__, 1,
            "Adding token %s to request.", ({"access_token": "hemmelig-token-123"},), None,
        )
        assert handler.filter(record)
        assert "hemmelig-token-123" not in record.getMessage()
    finally:
        for name in SENSITIVE_LOGGERS:
            for installed in [f for f in logging.getLogger(name).filters if isinstance(f, SecretLogFilter)]:
                logging.getLogger(name).removeFilter(installed)


# -- lifetime ----------------------------------------------------------------------------


def test_close_drops_cached_protocol(server: FakeEwsServer, make_backend: BackendFactory) -> None:
    credentials = make_credentials("basic", username=SERVICE_USER, password=SERVICE_PASSWORD)
    backend = make_backend(credentials=credentials)
    backend.ensure_folders()

    backend.close()

    with pytest.raises(KeyError):
        Protocol[Configuration(service_endpoint=server.url, credentials=credentials)]


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"post_action": "archive"},
        {"post_action": "move", "processed_folder_name": None},
        {"access": "owner"},
        {"batch_size": 0},
        {"batch_size": 513},
        {"folder_names": []},
        {"categories": {"arkivert": "Arkivert i CRM"}},
        {"endpoint": "mail.example.test"},
    ],
    ids=["post-action", "processed-name", "access", "batch-zero", "batch-large", "no-folders", "outcome", "endpoint"],
)
def test_backend_rejects_invalid_setting(make_backend: BackendFactory, overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_backend(**overrides)


def test_make_credentials_needs_password() -> None:
    with pytest.raises(ConfigError, match="password"):
        make_credentials("ntlm", username="EKSEMPEL\\svc-crm")


def test_make_credentials_rejects_unknown_auth() -> None:
    with pytest.raises(ConfigError, match="kerberos"):
        make_credentials("kerberos")


def test_credentials_repr_hides_password() -> None:
    credentials = make_credentials("basic", username=SERVICE_USER, password=SERVICE_PASSWORD)

    assert SERVICE_PASSWORD not in repr(credentials)
