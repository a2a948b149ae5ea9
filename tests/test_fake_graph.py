"""The fake Graph server through plain requests: folders, delta rounds, $value, $batch, moves and faults."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
import requests
from fakes.graph_server import FakeGraphServer, Fault

MAILBOX = "kari.nordmann@example.test"
IMMUTABLE = 'IdType="ImmutableId"'


def norwegian_mail(
    subject: str = "Tilbud på møbler til kontoret i Tromsø",
    sender: str = "Åse Ødegård <ase.odegard@example.test>",
    message_id: str | None = None,
) -> bytes:
    """Return the RFC 5322 bytes of a small mail with Norwegian defaults."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"Kari Nordmann <{MAILBOX}>"
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="example.test")
    message.set_content("Hei Kari,\n\nvedlagt er tilbudet vi snakket om.\n\nHilsen Åse\n")
    return message.as_bytes()


@pytest.fixture
def server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer() as fake:
        fake.add_mailbox(MAILBOX)
        yield fake


def call(
    server: FakeGraphServer,
    method: str,
    path: str,
    *,
    json: Any = None,
    prefer: tuple[str, ...] = (IMMUTABLE,),
    token: str | None = "token-1",
    timeout: float = 5.0,
) -> requests.Response:
    """Send one request to the fake; `path` is below /v1.0, or a full link the fake handed out."""
    headers = {"Prefer": ", ".join(prefer)} if prefer else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = path if path.startswith("http") else server.base_url + path
    return requests.request(method, url, headers=headers, json=json, timeout=timeout)


def user(path: str = "") -> str:
    return f"/users/{MAILBOX}{path}"


def create_folder(server: FakeGraphServer, name: str = "CRM-arkiv", parent: str = "msgfolderroot") -> str:
    response = call(server, "POST", user(f"/mailFolders/{parent}/childFolders"), json={"displayName": name})
    assert response.status_code == 201
    return response.json()["id"]


def delta_round(server: FakeGraphServer, url: str, page_size: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """Follow nextLinks from `url` and return every page's entries and the final deltaLink."""
    prefer = (IMMUTABLE, f"odata.maxpagesize={page_size}") if page_size else (IMMUTABLE,)
    pages: list[dict[str, Any]] = []
    while True:
        response = call(server, "GET", url, prefer=prefer)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        if "@odata.deltaLink" in body:
            return pages, body["@odata.deltaLink"]
        url = body["@odata.nextLink"]


def entries(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for page in pages for entry in page["value"]]


def batch(server: FakeGraphServer, requests_: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    response = call(server, "POST", "/$batch", json={"requests": requests_})
    assert response.status_code == 200, response.text
    return {answer["id"]: answer for answer in response.json()["responses"]}


# -- folders ---------------------------------------------------------------------


def test_well_known_folder_by_name(server: FakeGraphServer) -> None:
    response = call(server, "GET", user("/mailFolders/inbox"))

    assert response.status_code == 200
    assert response.json()["displayName"] == "Inbox"


def test_odata_key_segments_address_folder(server: FakeGraphServer) -> None:
    response = call(server, "GET", f"/users('{MAILBOX}')/mailFolders('inbox')")

    assert response.json()["displayName"] == "Inbox"


def test_create_folder_returns_201(server: FakeGraphServer) -> None:
    response = call(server, "POST", user("/mailFolders/msgfolderroot/childFolders"), json={"displayName": "CRM-arkiv"})

    assert response.status_code == 201
    assert [f.path for f in server.folders(MAILBOX)][-1] == "CRM-arkiv"
    assert response.json()["id"] == server.folders(MAILBOX)[-1].id


def test_create_duplicate_folder_returns_409(server: FakeGraphServer) -> None:
    create_folder(server, "CRM-arkiv")

    response = call(server, "POST", user("/mailFolders/msgfolderroot/childFolders"), json={"displayName": "crm-ARKIV"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ErrorFolderExists"


def test_child_folders_filter_by_display_name(server: FakeGraphServer) -> None:
    wanted = create_folder(server, "Kari's æøå-arkiv")
    create_folder(server, "Tilbud")

    response = call(
        server, "GET", user("/mailFolders/msgfolderroot/childFolders"
                            "?$filter=displayName%20eq%20'Kari''s%20%C3%A6%C3%B8%C3%A5-arkiv'&$select=id,displayName"),
    )

    assert [f["id"] for f in response.json()["value"]] == [wanted]
    assert set(response.json()["value"][0]) == {"id", "displayName"}


def test_child_folders_reject_other_filters(server: FakeGraphServer) -> None:
    response = call(server, "GET", user("/mailFolders/msgfolderroot/childFolders?$filter=totalItemCount gt 0"))

    assert response.status_code == 400


def test_drop_into_subfolder_path(server: FakeGraphServer) -> None:
    parent = create_folder(server)
    create_folder(server, "Behandlet", parent=parent)

    message_id = server.drop(MAILBOX, "CRM-arkiv/Behandlet", norwegian_mail())

    assert [m.id for m in server.items(MAILBOX, "CRM-arkiv/Behandlet")] == [message_id]


def test_unknown_mailbox_returns_404(server: FakeGraphServer) -> None:
    response = call(server, "GET", "/users/ingen.her@example.test/mailFolders/inbox")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ErrorInvalidUser"


def test_unknown_route_returns_400(server: FakeGraphServer) -> None:
    response = call(server, "GET", user("/calendars"))

    assert response.status_code == 400
    assert "/calendars" in response.json()["error"]["message"]


# -- authorization -------------------------------------------------------------------


def test_missing_token_returns_401(server: FakeGraphServer) -> None:
    response = call(server, "GET", user("/mailFolders/inbox"), token=None)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_token_checker_rejects_token() -> None:
    with FakeGraphServer(token_checker=lambda token: token == "gyldig") as fake:
        fake.add_mailbox(MAILBOX)

        rejected = call(fake, "GET", user("/mailFolders/inbox"), token="utløpt")
        accepted = call(fake, "GET", user("/mailFolders/inbox"), token="gyldig")

    assert rejected.status_code == 401
    assert accepted.status_code == 200
    assert fake.authorizations == ["Bearer utløpt", "Bearer gyldig"]


# -- delta ---------------------------------------------------------------------------


def test_delta_pages_follow_max_page_size(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    dropped = [server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ærend nr. {n}")) for n in range(5)]

    pages, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"), page_size=2)

    assert [len(page["value"]) for page in pages] == [2, 2, 1]
    assert [entry["id"] for entry in entries(pages)] == dropped
    assert all("$skiptoken=" in page["@odata.nextLink"] for page in pages[:-1])
    assert "$deltatoken=" in delta_link


def test_delta_default_page_size_is_ten(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    for n in range(12):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}"))

    pages, _ = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))

    assert [len(page["value"]) for page in pages] == [10, 2]


def test_delta_bakes_select_into_links(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    for n in range(3):
        server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Sak {n}"))

    pages, _ = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta?$select=subject"), page_size=2)

    keys = {key for entry in entries(pages) for key in entry}
    assert keys == {"@odata.type", "@odata.etag", "id", "subject"}
    assert "$select" not in server.requests[-1].query


def test_delta_link_returns_only_new_messages(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Første"))
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))
    later = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Svar på tilbud"))

    pages, _ = delta_round(server, delta_link)

    assert [entry["id"] for entry in entries(pages)] == [later]


def test_delta_link_can_be_used_again(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))
    later = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    delta_round(server, delta_link)

    pages, _ = delta_round(server, delta_link)

    assert [entry["id"] for entry in entries(pages)] == [later]


def test_delta_reports_move_out_as_removal(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    message_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))
    call(server, "POST", user(f"/messages/{message_id}/move"), json={"destinationId": "inbox"})

    pages, _ = delta_round(server, delta_link)

    assert entries(pages) == [
        {"@odata.type": "#microsoft.graph.message", "id": message_id, "@removed": {"reason": "deleted"}}
    ]


def test_delta_reports_category_write_as_change(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    message_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))
    call(server, "PATCH", user(f"/messages/{message_id}"), json={"categories": ["Arkivert i CRM"]})

    pages, _ = delta_round(server, delta_link)

    [entry] = entries(pages)
    assert entry["id"] == message_id
    assert entry["categories"] == ["Arkivert i CRM"]


def test_delta_skips_message_added_and_removed_between_rounds(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))
    message_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    call(server, "DELETE", user(f"/messages/{message_id}"))

    pages, _ = delta_round(server, delta_link)

    assert entries(pages) == []


def test_delta_without_immutable_ids_gives_default_ids(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())

    response = call(server, "GET", user(f"/mailFolders/{folder_id}/messages/delta"), prefer=())

    [stored] = server.items(MAILBOX, "CRM-arkiv")
    assert [entry["id"] for entry in response.json()["value"]] == [stored.rest_id]


def test_reset_sync_states_gives_410(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    _, delta_link = delta_round(server, user(f"/mailFolders/{folder_id}/messages/delta"))

    server.reset_sync_states(MAILBOX)
    response = call(server, "GET", delta_link)

    assert response.status_code == 410
    assert response.json()["error"]["code"] == "syncStateNotFound"


def test_foreign_delta_token_gives_410(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)

    response = call(server, "GET", user(f"/mailFolders/{folder_id}/messages/delta?$deltatoken=ikke-gyldig"))

    assert response.status_code == 410


def test_delta_echoes_applied_preferences(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)

    response = call(
        server, "GET", user(f"/mailFolders/{folder_id}/messages/delta"), prefer=(IMMUTABLE, "odata.maxpagesize=5")
    )

    assert response.headers["Preference-Applied"] == 'odata.maxpagesize=5, IdType="ImmutableId"'


# -- messages ------------------------------------------------------------------------


def test_value_returns_mime_bytes(server: FakeGraphServer) -> None:
    raw = norwegian_mail(message_id="<tilbud-42@example.test>")
    message_id = server.drop(MAILBOX, "inbox", raw)

    response = call(server, "GET", user(f"/messages/{message_id}/$value"))

    assert response.status_code == 200
    assert response.content == raw


def test_broken_mime_returns_error(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())
    server.break_mime(MAILBOX, message_id, 500, "ErrorCorruptData")

    response = call(server, "GET", user(f"/messages/{message_id}/$value"))

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "ErrorCorruptData"


def test_get_message_selects_properties(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail(), categories=["Blå kategori"])

    response = call(server, "GET", user(f"/messages/{message_id}?$select=categories"))

    assert response.json()["categories"] == ["Blå kategori"]
    assert "subject" not in response.json()


def test_patch_replaces_categories(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail(), categories=["Blå kategori"])

    response = call(server, "PATCH", user(f"/messages/{message_id}"), json={"categories": ["Arkivert i CRM"]})

    [stored] = server.items(MAILBOX, "inbox")
    assert response.status_code == 200
    assert stored.categories == ["Arkivert i CRM"]


def test_move_with_immutable_id_keeps_id(server: FakeGraphServer) -> None:
    create_folder(server)
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    response = call(server, "POST", user(f"/messages/{message_id}/move"), json={"destinationId": "deleteditems"})

    assert response.status_code == 201
    assert response.json()["id"] == message_id
    assert [m.id for m in server.items(MAILBOX, "deleteditems")] == [message_id]


def test_move_without_immutable_id_changes_id(server: FakeGraphServer) -> None:
    folder_id = create_folder(server)
    server.drop(MAILBOX, "inbox", norwegian_mail())
    [before] = server.items(MAILBOX, "inbox")

    response = call(
        server, "POST", user(f"/messages/{before.rest_id}/move"), json={"destinationId": folder_id}, prefer=()
    )

    [after] = server.items(MAILBOX, "CRM-arkiv")
    assert response.json()["id"] == after.rest_id
    assert after.rest_id != before.rest_id
    assert call(server, "GET", user(f"/messages/{before.rest_id}"), prefer=()).status_code == 404


def test_move_to_missing_folder_returns_404(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    response = call(server, "POST", user(f"/messages/{message_id}/move"), json={"destinationId": "AAMkAFfinnesikke"})

    assert response.status_code == 404


def test_delete_removes_message(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    response = call(server, "DELETE", user(f"/messages/{message_id}"))

    assert response.status_code == 204
    assert server.items(MAILBOX, "inbox") == []


def test_remove_folder_drops_messages(server: FakeGraphServer) -> None:
    parent = create_folder(server)
    create_folder(server, "Behandlet", parent=parent)
    server.drop(MAILBOX, "CRM-arkiv/Behandlet", norwegian_mail())

    server.remove_folder(MAILBOX, "CRM-arkiv")

    assert server.folders(MAILBOX)[-1].path == "Junk Email"


# -- $batch --------------------------------------------------------------------------


def test_batch_carries_value_as_base64(server: FakeGraphServer) -> None:
    raw = norwegian_mail()
    message_id = server.drop(MAILBOX, "inbox", raw)

    answers = batch(server, [{"id": "1", "method": "GET", "url": user(f"/messages/{message_id}/$value")}])

    assert answers["1"]["status"] == 200
    assert base64.b64decode(answers["1"]["body"]) == raw


def test_batch_text_encoding_carries_value_as_text(server: FakeGraphServer) -> None:
    raw = norwegian_mail()
    message_id = server.drop(MAILBOX, "inbox", raw)
    server.batch_body_encoding = "text"

    answers = batch(server, [{"id": "1", "method": "GET", "url": user(f"/messages/{message_id}/$value")}])

    assert answers["1"]["body"] == raw.decode()


def test_batch_runs_patch_and_reports_each(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())
    patch = {
        "id": "a",
        "method": "PATCH",
        "url": user(f"/messages/{message_id}"),
        "headers": {"Content-Type": "application/json", "Prefer": IMMUTABLE},
        "body": {"categories": ["Arkivert i CRM"]},
    }
    missing = {"id": "b", "method": "GET", "url": user("/messages/AAkALgfinnesikke/$value")}

    answers = batch(server, [patch, missing])

    assert answers["a"]["status"] == 200
    assert answers["a"]["body"]["id"] == message_id
    assert answers["b"]["status"] == 404
    assert server.items(MAILBOX, "inbox")[0].categories == ["Arkivert i CRM"]


def test_batch_sub_requests_need_their_own_prefer(server: FakeGraphServer) -> None:
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    answers = batch(server, [{"id": "1", "method": "GET", "url": user(f"/messages/{message_id}")}])

    assert answers["1"]["body"]["id"] == server.items(MAILBOX, "inbox")[0].rest_id


def test_batch_rejects_more_than_20(server: FakeGraphServer) -> None:
    requests_ = [{"id": str(n), "method": "GET", "url": user("/mailFolders/inbox")} for n in range(21)]

    response = call(server, "POST", "/$batch", json={"requests": requests_})

    assert response.status_code == 400


def test_batch_logs_sub_requests(server: FakeGraphServer) -> None:
    batch(server, [{"id": "1", "method": "GET", "url": user("/mailFolders/inbox")}])

    envelope, sub_request = server.requests
    assert envelope.path == "/$batch"
    assert envelope.mailbox == MAILBOX
    assert envelope.batched is False
    assert envelope.concurrency is None
    assert sub_request.path == user("/mailFolders/inbox")
    assert sub_request.batched is True
    assert sub_request.concurrency == 1


def test_batch_throttles_one_sub_request(server: FakeGraphServer) -> None:
    first = server.drop(MAILBOX, "inbox", norwegian_mail("Første"))
    second = server.drop(MAILBOX, "inbox", norwegian_mail("Andre"))
    server.fail_next(Fault.THROTTLED, match=f"{second}/$value", retry_after=3)

    answers = batch(
        server,
        [
            {"id": "1", "method": "GET", "url": user(f"/messages/{first}/$value")},
            {"id": "2", "method": "GET", "url": user(f"/messages/{second}/$value")},
        ],
    )

    assert answers["1"]["status"] == 200
    assert answers["2"]["status"] == 429
    assert answers["2"]["headers"]["Retry-After"] == "3"
    assert answers["2"]["body"]["error"]["code"] == "ApplicationThrottled"


def test_batch_runs_four_sub_requests_at_once(server: FakeGraphServer) -> None:
    server.latency = 0.05

    batch(server, [{"id": str(n), "method": "GET", "url": user("/mailFolders/inbox")} for n in range(8)])

    assert server.max_concurrency(MAILBOX) == 4


def test_batch_depends_on_fails_dependants(server: FakeGraphServer) -> None:
    server.latency = 0.02
    answers = batch(
        server,
        [
            {"id": "1", "method": "GET", "url": user("/messages/AAkALgfinnesikke")},
            {"id": "2", "method": "GET", "url": user("/mailFolders/inbox"), "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": user("/mailFolders/inbox")},
        ],
    )

    assert [answers[n]["status"] for n in ("1", "2", "3")] == [404, 424, 200]
    assert server.max_concurrency(MAILBOX) == 1


# -- faults and concurrency -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "retry_after"),
    [
        (Fault.THROTTLED, 429, "ApplicationThrottled", "3"),
        (Fault.UNAVAILABLE, 503, "ServiceNotAvailable", "3"),
        (Fault.GATEWAY_TIMEOUT, 504, "GatewayTimeout", "3"),
        (Fault.UNAUTHORIZED, 401, "InvalidAuthenticationToken", None),
        (Fault.SYNC_STATE_NOT_FOUND, 410, "syncStateNotFound", None),
        (Fault.NOT_FOUND, 404, "ErrorItemNotFound", None),
        (Fault.ACCESS_DENIED, 403, "ErrorAccessDenied", None),
        (Fault.SERVER_ERROR, 500, "InternalServerError", None),
    ],
)
def test_fault_answers_with_graph_error(
    server: FakeGraphServer, fault: Fault, status: int, code: str, retry_after: str | None
) -> None:
    server.fail_next(fault, retry_after=3)

    response = call(server, "GET", user("/mailFolders/inbox"))

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.headers.get("Retry-After") == retry_after


def test_drop_fault_closes_connection(server: FakeGraphServer) -> None:
    server.fail_next(Fault.DROP)

    with pytest.raises(requests.ConnectionError):
        call(server, "GET", user("/mailFolders/inbox"))


def test_slow_fault_delays_answer(server: FakeGraphServer) -> None:
    server.fail_next(Fault.SLOW, delay=0.6)

    with pytest.raises(requests.ReadTimeout):
        call(server, "GET", user("/mailFolders/inbox"), timeout=0.2)


def test_fault_waits_for_matching_request(server: FakeGraphServer) -> None:
    server.fail_next(Fault.NOT_FOUND, match="/$value")

    folder = call(server, "GET", user("/mailFolders/inbox"))
    message_id = server.drop(MAILBOX, "inbox", norwegian_mail())
    value = call(server, "GET", user(f"/messages/{message_id}/$value"))

    assert folder.status_code == 200
    assert value.status_code == 404


def test_fault_applies_count_times(server: FakeGraphServer) -> None:
    server.fail_next(Fault.UNAVAILABLE, count=2)

    statuses = [call(server, "GET", user("/mailFolders/inbox")).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]


def test_requests_log_method_path_and_prefer(server: FakeGraphServer) -> None:
    call(server, "GET", user("/mailFolders/inbox?$select=id"), prefer=(IMMUTABLE, "odata.maxpagesize=5"))

    [record] = server.requests
    assert record.method == "GET"
    assert record.path == user("/mailFolders/inbox")
    assert record.query == "$select=id"
    assert record.mailbox == MAILBOX
    assert record.prefer == (IMMUTABLE, "odata.maxpagesize=5")


def run_in_parallel(server: FakeGraphServer, count: int) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        status = call(server, "GET", user("/mailFolders/inbox")).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=fetch) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_max_concurrency_counts_parallel_requests(server: FakeGraphServer) -> None:
    server.latency = 0.1

    run_in_parallel(server, 3)

    assert server.max_concurrency(MAILBOX) == 3


def test_concurrency_limit_throttles_excess() -> None:
    with FakeGraphServer(concurrency_limit=1) as fake:
        fake.add_mailbox(MAILBOX)
        fake.latency = 0.1

        statuses = run_in_parallel(fake, 3)

    assert sorted(statuses) == [200, 429, 429]
