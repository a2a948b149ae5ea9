"""GraphBackend against the fake Graph server: folders, batches, feedback, errors, tokens and concurrency."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
import requests
from fakes.graph_server import FakeGraphServer, Fault, RequestRecord

from syncd.backends.base import Batch, FeedbackRequest, Folder, FolderReport
from syncd.backends.graph import MAX_REMEMBERED_TAGS, GraphBackend
from syncd.backends.graph_errors import (
    error_for_status,
    translate_error,
)
from syncd.backends.throttling import retry_after_seconds
from syncd.errors import (
    BackendAuthError,
    ConfigError,
    PermanentBackendError,
    SyncStateInvalidError,
    TransientBackendError,
)
from syncd.mail import Outcome

MAILBOX = "kari.nordmann@example.test"
IMMUTABLE = 'IdType="ImmutableId"'

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


class StubTokenProvider:
    """Hands out msal-style token results ("token-1", "token-2", …) and counts the calls."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"access_token": f"token-{self.calls}", "token_type": "Bearer", "expires_in": self.lifetime}


@pytest.fixture
def server() -> Iterator[FakeGraphServer]:
    # Exchange Online's own limit, so that a backend that overshoots gets 429s.
    with FakeGraphServer(concurrency_limit=4) as fake:
        fake.add_mailbox(MAILBOX)
        yield fake


@pytest.fixture
def provider() -> StubTokenProvider:
    return StubTokenProvider()


@pytest.fixture
def sleeps() -> list[float]:
    return []


BackendFactory = Callable[..., GraphBackend]


@pytest.fixture
def make_backend(server: FakeGraphServer, provider: StubTokenProvider, sleeps: list[float]) -> Iterator[BackendFactory]:
    backends: list[GraphBackend] = []

    def factory(**overrides: Any) -> GraphBackend:
        settings: dict[str, Any] = {
            "token_provider": provider,
            "base_url": server.base_url,
            "folder_names": ["CRM-arkiv"],
            "categories": CATEGORIES,
            "post_action": "move",
            "processed_folder_name": "Behandlet",
            "batch_size": 3,
            "timeout": 0.5,
            "sleep": sleeps.append,
        }
        settings.update(overrides)
        backend = GraphBackend(MAILBOX, **settings)
        backends.append(backend)
        return backend

    yield factory
    for backend in backends:
        backend.close()


@pytest.fixture
def backend(make_backend: BackendFactory) -> GraphBackend:
    return make_backend()


@pytest.fixture
def sync_folder(backend: GraphBackend) -> Folder:
    [report] = backend.ensure_folders()
    return report.folder


def drain(backend: GraphBackend, folder: Folder, state: str | None) -> list[Batch]:
    return list(backend.batches(folder, state))


def http_requests(server: FakeGraphServer) -> list[RequestRecord]:
    """Return the HTTP requests the server saw, without the sub-requests of `$batch`."""
    return [r for r in server.requests if not r.batched]


def kinds(records: list[RequestRecord]) -> list[str]:
    """Return a short name per request: "delta", "$batch", "GET childFolders" and the like."""
    names = []
    for record in records:
        last = record.path.rsplit("/", 1)[-1]
        if "delta" in last:
            names.append("delta")
        elif record.path == "/$batch":
            names.append("$batch")
        else:
            names.append(f"{record.method} {last}")
    return names


# -- folders ---------------------------------------------------------------------


def test_ensure_folders_creates_folder(server: FakeGraphServer, backend: GraphBackend) -> None:
    [report] = backend.ensure_folders()

    assert report.created is True
    assert report.folder.name == "CRM-arkiv"
    assert [f.id for f in server.folders(MAILBOX) if f.path == "CRM-arkiv"] == [report.folder.key]


def test_ensure_folders_second_call_finds(server: FakeGraphServer, backend: GraphBackend) -> None:
    [first] = backend.ensure_folders()

    [second] = backend.ensure_folders()

    assert second.created is False
    assert second.folder == first.folder
    assert kinds(server.requests).count("POST childFolders") == 1


def test_ensure_folders_finds_folder_of_other_node(make_backend: BackendFactory) -> None:
    [created] = make_backend().ensure_folders()

    [found] = make_backend().ensure_folders()

    assert found == FolderReport(folder=created.folder, created=False)


def test_ensure_folders_filters_then_creates(server: FakeGraphServer, backend: GraphBackend) -> None:
    backend.ensure_folders()

    assert kinds(server.requests) == ["GET childFolders", "POST childFolders"]
    assert "$filter=displayName" in server.requests[0].query


class RacingSession(requests.Session):
    """Creates the folder itself just before the backend's own create request, as a second node would."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if method == "POST" and str(url).endswith("/childFolders"):
            super().request(method, url, *args, **kwargs)
        return super().request(method, url, *args, **kwargs)


def test_ensure_folders_conflict_finds_winner(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    session = RacingSession()
    backend = make_backend(session=session)

    [report] = backend.ensure_folders()

    session.close()
    assert report.created is False
    assert [f.id for f in server.folders(MAILBOX) if f.path == "CRM-arkiv"] == [report.folder.key]


def test_ensure_folders_name_with_quote(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(folder_names=["Kari's æøå-arkiv"])
    [created] = backend.ensure_folders()

    [found] = backend.ensure_folders()

    assert found.created is False
    assert found.folder == created.folder


def test_ensure_folders_inbound_returns_inbox(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(inbound=True, folder_names=[])

    [report] = backend.ensure_folders()

    assert report.folder.name == "Inbox"
    assert report.created is False
    assert "POST childFolders" not in kinds(server.requests)


# -- batches -----------------------------------------------------------------------


def test_batches_yield_dropped_items_once(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    mails = [norwegian_mail(f"Ordre {n} – Bodø") for n in range(4)]
    raws = {server.drop(MAILBOX, "CRM-arkiv", raw): raw for raw in mails}

    batches = drain(backend, sync_folder, None)

    items = [item for batch in batches for item in batch.items]
    assert [len(batch.items) for batch in batches] == [3, 1]
    assert [item.item_id for item in items] == list(raws)
    assert all(item.raw == raws[item.item_id] for item in items)
    assert all(item.error is None for item in items)


def test_batches_state_only_on_last_page(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    for n in range(4):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ordre {n}"))

    batches = drain(backend, sync_folder, None)

    assert batches[0].state is None
    assert batches[-1].state is not None
    assert "$deltatoken=" in str(batches[-1].state)


def test_batches_fetch_mime_through_batch(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(batch_size=50)
    [report] = backend.ensure_folders()
    for n in range(50):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}"))
    server.clear_requests()

    items = [item for batch in drain(backend, report.folder, None) for item in batch.items]

    assert len(items) == 50
    assert kinds(http_requests(server)) == ["delta", "$batch", "$batch", "$batch"]
    assert len(http_requests(server)) / len(items) < 1


def test_delta_select_only_on_first_request(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    for n in range(4):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ordre {n}"))
    server.clear_requests()

    drain(backend, sync_folder, None)

    first, second = [r for r in server.requests if kinds([r]) == ["delta"]]
    assert first.query == "$select=id,internetMessageId,subject,receivedDateTime,categories"
    assert "$select" not in second.query
    assert "$skiptoken=" in second.query


def test_every_request_prefers_immutable_ids(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    drain(backend, sync_folder, None)
    backend.apply_feedback([FeedbackRequest(sync_folder.key, item_id, Outcome.FILED)])

    assert all(IMMUTABLE in record.prefer for record in server.requests)


def test_delta_asks_for_page_size(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    server.clear_requests()

    drain(backend, sync_folder, None)

    assert server.requests[0].prefer == (IMMUTABLE, "odata.maxpagesize=3")


def test_batches_resume_from_last_state(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Første henvendelse"))
    state = drain(backend, sync_folder, None)[-1].state
    later = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Oppfølging"))

    items = [item for batch in drain(backend, sync_folder, state) for item in batch.items]

    assert [item.item_id for item in items] == [later]


def test_idle_pass_sends_one_delta_per_folder(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(folder_names=["CRM-arkiv", "CRM-tilbud"])
    folders = [report.folder for report in backend.ensure_folders()]
    server.drop(MAILBOX, "CRM-tilbud", norwegian_mail())
    states = {folder: drain(backend, folder, None)[-1].state for folder in folders}
    server.clear_requests()

    for folder in folders:
        drain(backend, folder, states[folder])

    assert kinds(server.requests) == ["delta", "delta"]


def test_idle_batch_carries_delta_link(backend: GraphBackend, sync_folder: Folder) -> None:
    state = drain(backend, sync_folder, None)[-1].state

    [batch] = drain(backend, sync_folder, state)

    assert batch.items == []
    assert batch.state is not None


def test_batches_skip_own_category_updates(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    state = drain(backend, report.folder, None)[-1].state
    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED)])
    server.clear_requests()

    items = [item for batch in drain(backend, report.folder, state) for item in batch.items]

    assert items == []
    assert kinds(server.requests) == ["delta"]


def test_batches_yield_tagged_item_moved_to_other_folder(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    """A filed mail that the user moves to another sync folder keeps its immutable id and must be seen there."""
    backend = make_backend(folder_names=["CRM-arkiv", "CRM-tilbud"], post_action="keep")
    archive, offers = [report.folder for report in backend.ensure_folders()]
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    drain(backend, archive, None)
    backend.apply_feedback([FeedbackRequest(archive.key, item_id, Outcome.FILED)])
    state = drain(backend, offers, None)[-1].state
    requests.post(
        f"{server.base_url}/users/{MAILBOX}/messages/{item_id}/move",
        json={"destinationId": offers.key},
        headers={"Authorization": "Bearer test", "Prefer": IMMUTABLE},
        timeout=5,
    )

    items = [item for batch in drain(backend, offers, state) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]


def test_batches_skip_removals(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="move")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    state = drain(backend, report.folder, None)[-1].state
    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED)])
    server.clear_requests()

    items = [item for batch in drain(backend, report.folder, state) for item in batch.items]

    assert items == []
    assert kinds(server.requests) == ["delta"]


def test_batches_inbound_scan_inbox(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(inbound=True, folder_names=[])
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail("Videresendt: tilbud"))

    items = [item for batch in drain(backend, report.folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]


def test_failed_value_becomes_failed_item(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    good = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Lesbar"))
    broken = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Ødelagt", message_id="<odelagt@example.test>"))
    server.break_mime(MAILBOX, broken, 500, "ErrorCorruptData")

    items = {item.item_id: item for batch in drain(backend, sync_folder, None) for item in batch.items}

    assert items[good].raw is not None
    assert items[broken].raw is None
    assert "ErrorCorruptData" in str(items[broken].error)
    assert "odelagt@example.test" in str(items[broken].error)


def test_item_removed_before_fetch_becomes_failed_item(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    # The delta page still lists the message, but $value no longer finds it.
    server.fail_next(Fault.NOT_FOUND, match=f"{item_id}/$value")

    [item] = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert item.raw is None
    assert "ErrorItemNotFound" in str(item.error)


def test_text_batch_body_fetched_directly(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    raw = norwegian_mail()
    server.drop(MAILBOX, "CRM-arkiv", raw)
    server.batch_body_encoding = "text"
    server.clear_requests()

    [item] = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert item.raw == raw
    assert kinds(http_requests(server)) == ["delta", "$batch", "GET $value"]


def test_foreign_state_raises_invalid(backend: GraphBackend, sync_folder: Folder) -> None:
    with pytest.raises(SyncStateInvalidError) as caught:
        drain(backend, sync_folder, "https://graph.example.test/v1.0/users/x/messages/delta?$deltatoken=abc")

    assert caught.value.mailbox == MAILBOX


# -- errors --------------------------------------------------------------------------


def test_sync_state_not_found_raises(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    state = drain(backend, sync_folder, None)[-1].state
    server.fail_next(Fault.SYNC_STATE_NOT_FOUND, match="$deltatoken")

    with pytest.raises(SyncStateInvalidError):
        drain(backend, sync_folder, state)


def test_evicted_sync_state_raises(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    state = drain(backend, sync_folder, None)[-1].state
    server.reset_sync_states(MAILBOX)

    with pytest.raises(SyncStateInvalidError):
        drain(backend, sync_folder, state)


def test_stale_next_link_raises(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    for n in range(4):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ordre {n}"))
    round_ = backend.batches(sync_folder, None)
    next(round_)
    server.reset_sync_states(MAILBOX)

    with pytest.raises(SyncStateInvalidError):
        next(round_)


def test_throttled_delta_sets_retry_after(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    server.fail_next(Fault.THROTTLED, match="/delta", retry_after=7)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after == 7.0
    assert MAILBOX in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        (Fault.DROP, None),
        (Fault.SLOW, None),
        (Fault.UNAVAILABLE, 7.0),
        (Fault.GATEWAY_TIMEOUT, 7.0),
        (Fault.THROTTLED, 7.0),
        (Fault.SERVER_ERROR, None),
    ],
)
def test_transport_faults_raise_transient(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder, fault: Fault, retry_after: float | None
) -> None:
    server.fail_next(fault, match="/delta", retry_after=7, delay=1.0)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after == retry_after


def test_throttled_sub_request_sent_again(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder, sleeps: list[float]
) -> None:
    ids = [server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ordre {n}")) for n in range(3)]
    server.fail_next(Fault.THROTTLED, match=f"{ids[1]}/$value", retry_after=1)
    server.clear_requests()

    items = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert [item.item_id for item in items] == ids
    assert all(item.raw is not None for item in items)
    assert sleeps == [1.0]
    assert [len([r for r in server.requests if r.batched and r.path.endswith("$value")])] == [4]


def test_throttled_sub_request_gives_up(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder, sleeps: list[float]
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.THROTTLED, count=10, match=f"{item_id}/$value", retry_after=5)

    with pytest.raises(TransientBackendError) as caught:
        drain(backend, sync_folder, None)

    assert caught.value.retry_after == 5.0
    assert sleeps == [5.0, 5.0, 5.0]


def test_unauthorized_once_refreshes_token(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder, provider: StubTokenProvider
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.UNAUTHORIZED, match="/delta")
    server.clear_requests()

    items = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]
    assert provider.calls == 2
    assert server.authorizations == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]


def test_unauthorized_twice_raises_auth_error(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    server.fail_next(Fault.UNAUTHORIZED, count=2)

    with pytest.raises(BackendAuthError) as caught:
        drain(backend, sync_folder, None)

    assert MAILBOX in str(caught.value)
    assert "token-" not in str(caught.value)


def test_rejected_token_replaced_by_checker(make_backend: BackendFactory, provider: StubTokenProvider) -> None:
    with FakeGraphServer(token_checker=lambda token: token != "token-1") as fake:
        fake.add_mailbox(MAILBOX)
        backend = make_backend(base_url=fake.base_url)

        [report] = backend.ensure_folders()

    assert report.created is True
    assert provider.calls == 2


def test_access_denied_raises_auth_error(server: FakeGraphServer, backend: GraphBackend) -> None:
    server.fail_next(Fault.ACCESS_DENIED)

    with pytest.raises(BackendAuthError) as caught:
        backend.ensure_folders()

    assert "Mail.ReadWrite" in str(caught.value)


def test_access_denied_sub_request_raises_auth_error(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.ACCESS_DENIED, match="/$value")

    with pytest.raises(BackendAuthError):
        drain(backend, sync_folder, None)


def test_unknown_mailbox_raises_permanent(server: FakeGraphServer, provider: StubTokenProvider) -> None:
    backend = GraphBackend(
        "ukjent@example.test", token_provider=provider, base_url=server.base_url, folder_names=["CRM-arkiv"]
    )
    try:
        with pytest.raises(PermanentBackendError, match="ErrorInvalidUser"):
            backend.ensure_folders()
    finally:
        backend.close()


def test_backend_recovers_after_transient_fault(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.DROP, match="POST /$batch")
    with pytest.raises(TransientBackendError):
        drain(backend, sync_folder, None)

    items = [item for batch in drain(backend, sync_folder, None) for item in batch.items]

    assert [item.item_id for item in items] == [item_id]


# -- tokens --------------------------------------------------------------------------


def test_token_cached_between_requests(backend: GraphBackend, sync_folder: Folder, provider: StubTokenProvider) -> None:
    drain(backend, sync_folder, None)

    assert provider.calls == 1


def test_token_fetched_again_after_expiry(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    provider = StubTokenProvider(lifetime=1)
    backend = make_backend(token_provider=provider)
    [report] = backend.ensure_folders()
    time.sleep(1.1)
    server.clear_requests()

    drain(backend, report.folder, None)

    assert server.authorizations == ["Bearer token-2"]
    assert provider.calls == 2


def test_token_provider_error_raises_auth_error(make_backend: BackendFactory) -> None:
    def rejecting_provider() -> dict[str, Any]:
        return {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}

    backend = make_backend(token_provider=rejecting_provider)

    with pytest.raises(BackendAuthError, match="invalid_client"):
        backend.ensure_folders()


def test_token_provider_outage_raises_transient(make_backend: BackendFactory) -> None:
    backend = make_backend(token_provider=lambda: {"error": "temporarily_unavailable"})

    with pytest.raises(TransientBackendError):
        backend.ensure_folders()


def test_token_provider_network_error_raises_transient(make_backend: BackendFactory) -> None:
    def unreachable_provider() -> dict[str, Any]:
        raise requests.ConnectionError("login.microsoftonline.com unreachable")

    backend = make_backend(token_provider=unreachable_provider)

    with pytest.raises(TransientBackendError):
        backend.ensure_folders()


def test_expired_token_raises_auth_error(make_backend: BackendFactory) -> None:
    backend = make_backend(token_provider=StubTokenProvider(lifetime=0))

    with pytest.raises(BackendAuthError, match="expires in 0 s"):
        backend.ensure_folders()


# -- feedback ------------------------------------------------------------------------


def test_feedback_appends_category_and_moves(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Kontrakt"), categories=["Blå kategori"])
    request = FeedbackRequest(sync_folder.key, item_id, Outcome.FILED)

    applied = backend.apply_feedback([request])

    [moved] = server.items(MAILBOX, "CRM-arkiv/Behandlet")
    assert applied == [request]
    assert moved.categories == ["Blå kategori", "Arkivert i CRM"]
    assert moved.id == item_id
    assert server.items(MAILBOX, "CRM-arkiv") == []


def test_feedback_writes_through_batch(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend()
    [report] = backend.ensure_folders()
    requests_ = [
        FeedbackRequest(report.folder.key, server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}")), outcome)
        for n, outcome in enumerate([Outcome.FILED, Outcome.UNMATCHED, Outcome.DUPLICATE])
    ]
    backend.apply_feedback(requests_[:1])
    server.clear_requests()

    backend.apply_feedback(requests_[1:])

    assert kinds(http_requests(server)) == ["$batch", "$batch", "$batch"]
    assert [r.method for r in server.requests if r.batched] == ["GET", "GET", "PATCH", "PATCH", "POST", "POST"]


def test_feedback_reuses_delta_categories(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Sak 1"))
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Egen kategori"), categories=["Blå kategori"])
    server.clear_requests()

    [batch] = drain(backend, report.folder, None)
    backend.apply_feedback([FeedbackRequest(report.folder.key, item.item_id, Outcome.FILED) for item in batch.items])

    # The delta page carries the categories, so feedback reads none.
    sub_requests = [(r.method, r.path.rsplit("/", 1)[-1]) for r in server.requests if r.batched]
    assert [method for method, _ in sub_requests] == ["GET", "GET", "PATCH", "PATCH"]
    assert all(last == "$value" for method, last in sub_requests if method == "GET")
    stored = {item.subject: item.categories for item in server.items(MAILBOX, "CRM-arkiv")}
    assert stored == {"Sak 1": ["Arkivert i CRM"], "Egen kategori": ["Blå kategori", "Arkivert i CRM"]}


def test_feedback_keeps_category_set_after_fetch(server: FakeGraphServer, make_backend: BackendFactory) -> None:
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
    # The PATCH with the stale entity tag gets 412, and only that message is read again.
    assert [r.method for r in server.requests if r.batched] == ["PATCH", "PATCH", "GET", "PATCH"]


def test_feedback_unmatched_category(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())

    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.UNMATCHED)])

    [stored] = server.items(MAILBOX, "CRM-arkiv")
    assert stored.categories == ["Ikke arkivert i CRM"]


def test_feedback_twice_adds_category_once(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    request = FeedbackRequest(report.folder.key, item_id, Outcome.FILED)

    backend.apply_feedback([request])
    applied = backend.apply_feedback([request])

    [stored] = server.items(MAILBOX, "CRM-arkiv")
    assert applied == [request]
    assert stored.categories == ["Arkivert i CRM"]


def test_feedback_missing_item_counts_as_applied(backend: GraphBackend, sync_folder: Folder) -> None:
    request = FeedbackRequest(sync_folder.key, "AAkALgfinnesikkelenger", Outcome.FILED)

    assert backend.apply_feedback([request]) == [request]


def test_feedback_delete_moves_to_deleted_items(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    backend = make_backend(post_action="delete")
    [report] = backend.ensure_folders()
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Søppel"))

    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED)])

    [deleted] = server.items(MAILBOX, "deleteditems")
    assert deleted.subject == "Søppel"
    assert deleted.categories == ["Arkivert i CRM"]


def test_feedback_throttled_batch_raises_transient(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.THROTTLED, match="POST /$batch", retry_after=4)

    with pytest.raises(TransientBackendError) as caught:
        backend.apply_feedback([FeedbackRequest(sync_folder.key, item_id, Outcome.FILED)])

    assert caught.value.retry_after == 4.0


def test_feedback_broken_item_left_out(server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder) -> None:
    good = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("God"))
    broken = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Ødelagt"))
    server.fail_next(Fault.SERVER_ERROR, match=f"PATCH /users/{MAILBOX}/messages/{broken}")
    requests_ = [FeedbackRequest(sync_folder.key, item_id, Outcome.FILED) for item_id in (good, broken)]

    applied = backend.apply_feedback(requests_)

    assert applied == requests_[:1]


def test_feedback_recreates_deleted_processed_folder(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder
) -> None:
    first = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Første"))
    backend.apply_feedback([FeedbackRequest(sync_folder.key, first, Outcome.FILED)])
    server.remove_folder(MAILBOX, "CRM-arkiv/Behandlet")
    second = FeedbackRequest(sync_folder.key, server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Andre")), Outcome.FILED)

    left_for_later = backend.apply_feedback([second])
    applied = backend.apply_feedback([second])

    assert left_for_later == []
    assert applied == [second]
    assert [m.subject for m in server.items(MAILBOX, "CRM-arkiv/Behandlet")] == ["Andre"]


# -- concurrency ---------------------------------------------------------------------


def drain_in_threads(backend: GraphBackend, folders: list[Folder]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(folder: Folder) -> None:
        try:
            drain(backend, folder, None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrency_stays_within_cap(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    names = ["CRM-arkiv", "CRM-tilbud", "CRM-levering"]
    backend = make_backend(folder_names=names, max_concurrency=2, batch_size=6)
    folders = [report.folder for report in backend.ensure_folders()]
    for name in names:
        for n in range(6):
            server.drop(MAILBOX, name, norwegian_mail(f"{name} {n}"))
    server.latency = 0.02
    server.clear_requests()

    errors = drain_in_threads(backend, folders)

    assert errors == []
    assert server.max_concurrency(MAILBOX) == 2


def test_batch_counts_against_default_cap(server: FakeGraphServer, make_backend: BackendFactory) -> None:
    names = ["CRM-arkiv", "CRM-tilbud"]
    backend = make_backend(folder_names=names, batch_size=20)
    folders = [report.folder for report in backend.ensure_folders()]
    for name in names:
        for n in range(20):
            server.drop(MAILBOX, name, norwegian_mail(f"{name} {n}"))
    server.latency = 0.01
    server.clear_requests()

    errors = drain_in_threads(backend, folders)

    assert errors == []
    assert server.max_concurrency(MAILBOX) == 4


# -- error translation ------------------------------------------------------------------


#: Every failure the backend relies on, and the syncd error it must become.
RELIED_ON_STATUSES: list[tuple[int, str | None, type[Exception]]] = [
    (410, "syncStateNotFound", SyncStateInvalidError),
    (400, "resyncRequired", SyncStateInvalidError),
    (404, "SyncStateNotFound", SyncStateInvalidError),
    (429, "ApplicationThrottled", TransientBackendError),
    (503, None, TransientBackendError),
    (504, None, TransientBackendError),
    (500, "InternalServerError", TransientBackendError),
    (401, "InvalidAuthenticationToken", BackendAuthError),
    (403, "ErrorAccessDenied", BackendAuthError),
    (404, "ErrorItemNotFound", PermanentBackendError),
    (404, "ErrorInvalidUser", PermanentBackendError),
    (400, "ErrorInvalidRequest", PermanentBackendError),
]


@pytest.mark.parametrize(
    ("status", "code", "expected"), RELIED_ON_STATUSES, ids=[f"{s}-{c}" for s, c, _ in RELIED_ON_STATUSES]
)
def test_translation_maps_relied_on_status(status: int, code: str | None, expected: type[Exception]) -> None:
    body = {"error": {"code": code, "message": "x"}} if code else None

    translated = error_for_status(status, {}, body, mailbox=MAILBOX, action="sync")

    assert type(translated) is expected
    assert translated.mailbox == MAILBOX


RELIED_ON_EXCEPTIONS: list[tuple[BaseException, type[Exception]]] = [
    (requests.ConnectionError("reset"), TransientBackendError),
    (requests.ReadTimeout("slow"), TransientBackendError),
    (requests.exceptions.ChunkedEncodingError("cut"), TransientBackendError),
    (requests.exceptions.SSLError("bad certificate"), PermanentBackendError),
    (requests.exceptions.InvalidURL("no host"), PermanentBackendError),
]


@pytest.mark.parametrize(
    ("error", "expected"), RELIED_ON_EXCEPTIONS, ids=[type(e).__name__ for e, _ in RELIED_ON_EXCEPTIONS]
)
def test_translation_maps_relied_on_exception(error: BaseException, expected: type[Exception]) -> None:
    translated = translate_error(error, mailbox=MAILBOX, action="sync")

    assert type(translated) is expected


def test_translation_passes_other_errors() -> None:
    assert translate_error(KeyError("x"), mailbox=MAILBOX, action="sync") is None


def test_translation_redacts_bearer_token() -> None:
    body = {"error": {"code": "BadRequest", "message": "header Authorization: Bearer eyJ0eXAiOiJKV1Qi.abc.def"}}

    translated = error_for_status(400, {}, body, mailbox=MAILBOX, action="sync")

    assert "eyJ0eXAiOiJKV1Qi" not in str(translated)


def test_retry_after_reads_http_date() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


# -- logging and memory --------------------------------------------------------------------


def test_logs_never_contain_token(
    server: FakeGraphServer, backend: GraphBackend, sync_folder: Folder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    server.fail_next(Fault.UNAUTHORIZED, match="/delta")

    drain(backend, sync_folder, None)

    assert any(r.name == "syncd.graph" for r in caplog.records)
    assert "token-1" not in caplog.text
    assert "token-2" not in caplog.text


def test_tag_memory_is_bounded(
    server: FakeGraphServer, make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("syncd.backends.graph.MAX_REMEMBERED_TAGS", 2)
    backend = make_backend(post_action="keep")
    [report] = backend.ensure_folders()
    ids = [server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}")) for n in range(3)]

    backend.apply_feedback([FeedbackRequest(report.folder.key, item_id, Outcome.FILED) for item_id in ids])

    assert list(backend._tagged) == [(report.folder.key, item_id) for item_id in ids[1:]]
    assert MAX_REMEMBERED_TAGS == 10_000


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"post_action": "archive"},
        {"post_action": "move", "processed_folder_name": None},
        {"batch_size": 0},
        {"batch_size": 1001},
        {"max_concurrency": 5},
        {"max_concurrency": 0},
        {"timeout": 0},
        {"folder_names": []},
        {"folder_names": ["CRM-arkiv", " "]},
        {"categories": {"arkivert": "Arkivert i CRM"}},
        {"base_url": "graph.microsoft.com/v1.0"},
    ],
    ids=[
        "post-action", "processed-name", "batch-zero", "batch-large", "concurrency-large",
        "concurrency-zero", "timeout", "no-folders", "blank-folder", "outcome", "base-url",
    ],
)
def test_backend_rejects_invalid_setting(make_backend: BackendFactory, overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_backend(**overrides)
