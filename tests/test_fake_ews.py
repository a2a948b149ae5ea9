"""The fake EWS server against plain exchangelib: the requests it sends and the responses it parses."""

from __future__ import annotations

import base64
import http.client
import struct
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid

import exchangelib
import pytest
import spnego
from exchangelib import (
    DELEGATE,
    IMPERSONATION,
    UTC,
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    Folder,
    Version,
)
from exchangelib.errors import (
    ErrorFolderExists,
    ErrorFolderNotFound,
    ErrorInvalidSyncStateData,
    ErrorItemCorrupt,
    ErrorItemNotFound,
    ErrorNonExistentMailbox,
    ErrorServerBusy,
    ErrorTimeoutExpired,
    MalformedResponseError,
    UnauthorizedError,
)
from exchangelib.items import HARD_DELETE, ID_ONLY, MOVE_TO_DELETED_ITEMS
from exchangelib.properties import FolderId
from exchangelib.services import CreateFolder, SyncFolderItems
from exchangelib.transport import BASIC, NTLM
from fakes.ews_server import FakeEwsServer, Fault, RequestRecord

MAILBOX = "kari.nordmann@example.test"


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
def server() -> Iterator[FakeEwsServer]:
    with FakeEwsServer() as fake:
        fake.add_mailbox(MAILBOX)
        yield fake
        exchangelib.close_connections()


def make_account(server: FakeEwsServer, access: str = IMPERSONATION, mailbox: str = MAILBOX) -> Account:
    # A fresh credentials object per account keeps exchangelib's process-wide
    # protocol cache from handing one test another test's connection pool.
    config = Configuration(
        service_endpoint=server.url,
        credentials=Credentials("svc-crm@example.test", "testpassord"),
        auth_type=BASIC,
        version=Version(build=Build(15, 1, 2507, 6)),
        retry_policy=FailFast(),
    )
    return Account(mailbox, config=config, access_type=access, autodiscover=False, default_timezone=UTC)


@pytest.fixture
def account(server: FakeEwsServer) -> Account:
    return make_account(server)


def create_folder(account: Account, name: str = "CRM-arkiv", parent: Folder | None = None) -> Folder:
    spec = Folder(root=account.root, name=name, folder_class="IPF.Note")
    return CreateFolder(account=account).get(parent_folder=parent or account.msg_folder_root, folders=[spec])


def sync_page(account: Account, folder_id: str, state: str | None, page_size: int = 10) -> tuple[list, SyncFolderItems]:
    service = SyncFolderItems(account=account)
    changes = list(
        service.call(
            folder=FolderId(id=folder_id),
            shape=ID_ONLY,
            additional_fields=None,
            sync_state=state,
            ignore=None,
            max_changes_returned=page_size,
            sync_scope="NormalItems",
        )
    )
    return changes, service


def test_create_folder_adds_mail_folder(server: FakeEwsServer, account: Account) -> None:
    created = create_folder(account)

    folders = {f.path: f for f in server.folders(MAILBOX)}
    assert folders["CRM-arkiv"].id == created.id
    assert folders["CRM-arkiv"].folder_class == "IPF.Note"


def test_create_folder_twice_raises_folder_exists(account: Account) -> None:
    create_folder(account)

    with pytest.raises(ErrorFolderExists):
        create_folder(account)


def test_find_folder_by_name_sends_shallow_find(server: FakeEwsServer, account: Account) -> None:
    created = create_folder(account, "Særskilt arkiv")
    server.clear_requests()

    found = account.msg_folder_root // "særskilt arkiv"

    assert found.id == created.id
    assert RequestRecord(MAILBOX, "FindFolder") in server.requests


def test_find_folder_missing_raises_not_found(account: Account) -> None:
    with pytest.raises(ErrorFolderNotFound):
        account.msg_folder_root // "Finnes ikke"


def test_drop_into_subfolder_path(server: FakeEwsServer, account: Account) -> None:
    parent = create_folder(account)
    create_folder(account, "Behandlet", parent=parent)

    item_id = server.drop(MAILBOX, "CRM-arkiv/Behandlet", norwegian_mail())

    assert [i.id for i in server.items(MAILBOX, "CRM-arkiv/Behandlet")] == [item_id]


def test_sync_pages_through_dropped_items(server: FakeEwsServer, account: Account) -> None:
    folder = create_folder(account)
    dropped = [server.drop(MAILBOX, "CRM-arkiv", norwegian_mail(f"Ærend nr. {n}")) for n in range(5)]

    pages, state = [], None
    while True:
        changes, service = sync_page(account, folder.id, state, page_size=2)
        pages.append(changes)
        state = service.sync_state
        if service.includes_last_item_in_range:
            break

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [item.id for page in pages for _, item in page] == dropped
    assert {kind for page in pages for kind, _ in page} == {"create"}


def test_sync_resumes_from_state(server: FakeEwsServer, account: Account) -> None:
    folder = create_folder(account)
    server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    _, first = sync_page(account, folder.id, None)
    later = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail("Svar på tilbud"))

    changes, _ = sync_page(account, folder.id, first.sync_state)

    assert [(kind, item.id) for kind, item in changes] == [("create", later)]


def test_sync_reports_move_out_as_delete(server: FakeEwsServer, account: Account) -> None:
    folder = create_folder(account)
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    _, first = sync_page(account, folder.id, None)

    account.bulk_move([(item_id, None)], to_folder=account.inbox)
    changes, _ = sync_page(account, folder.id, first.sync_state)

    assert [(kind, item.id) for kind, item in changes] == [("delete", item_id)]


def test_sync_reports_category_write_as_update(server: FakeEwsServer, account: Account) -> None:
    folder = create_folder(account)
    item_id = server.drop(MAILBOX, "CRM-arkiv", norwegian_mail())
    _, first = sync_page(account, folder.id, None)

    [item] = account.fetch([(item_id, None)], only_fields=["categories"])
    item.categories = ["Arkivert i CRM"]
    account.bulk_update([(item, ["categories"])])
    changes, _ = sync_page(account, folder.id, first.sync_state)

    assert [(kind, item.id) for kind, item in changes] == [("update", item_id)]


def test_sync_with_foreign_state_raises_invalid(account: Account) -> None:
    folder = create_folder(account)

    with pytest.raises(ErrorInvalidSyncStateData):
        sync_page(account, folder.id, "ikke-en-gyldig-tilstand")


def test_fetch_returns_mime_and_message_id(server: FakeEwsServer, account: Account) -> None:
    raw = norwegian_mail(message_id="<tilbud-42@example.test>")
    item_id = server.drop(MAILBOX, "inbox", raw)

    [item] = account.fetch([(item_id, None)], only_fields=["mime_content", "message_id"])

    assert item.mime_content == raw
    assert item.message_id == "<tilbud-42@example.test>"


def test_fetch_several_ids_keeps_order_and_errors(server: FakeEwsServer, account: Account) -> None:
    first = server.drop(MAILBOX, "inbox", norwegian_mail("Første"))
    second = server.drop(MAILBOX, "inbox", norwegian_mail("Andre"))
    server.clear_requests()

    results = list(
        account.fetch([(first, None), ("AAMkAfinnesikke", None), (second, None)], only_fields=["subject"])
    )

    assert [r.subject for r in (results[0], results[2])] == ["Første", "Andre"]
    assert isinstance(results[1], ErrorItemNotFound)
    assert server.requests.count(RequestRecord(MAILBOX, "GetItem")) == 1


def test_fetch_broken_item_yields_its_error(server: FakeEwsServer, account: Account) -> None:
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail())
    server.break_item(MAILBOX, item_id, "ErrorItemCorrupt")

    [result] = account.fetch([(item_id, None)], only_fields=["mime_content"])

    assert isinstance(result, ErrorItemCorrupt)


def test_fetch_garbled_mime_gives_none(server: FakeEwsServer, account: Account) -> None:
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail())
    server.garble_mime(MAILBOX, item_id)

    [item] = account.fetch([(item_id, None)], only_fields=["mime_content"])

    assert item.mime_content is None


def test_update_categories_replaces_list(server: FakeEwsServer, account: Account) -> None:
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail(), categories=["Blå kategori"])
    [item] = account.fetch([(item_id, None)], only_fields=["categories"])

    item.categories = [*item.categories, "Arkivert i CRM"]
    [(new_id, new_changekey)] = account.bulk_update([(item, ["categories"])])

    [stored] = server.items(MAILBOX, "inbox")
    assert stored.categories == ["Blå kategori", "Arkivert i CRM"]
    assert new_id == item_id
    assert new_changekey == stored.changekey


def test_move_gives_new_id(server: FakeEwsServer, account: Account) -> None:
    folder = create_folder(account)
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    [(new_id, _)] = account.bulk_move([(item_id, None)], to_folder=folder)

    assert new_id != item_id
    assert [i.id for i in server.items(MAILBOX, "CRM-arkiv")] == [new_id]
    assert server.items(MAILBOX, "inbox") == []


def test_move_missing_item_yields_not_found(account: Account) -> None:
    folder = create_folder(account)

    [result] = account.bulk_move([("AAMkAfinnesikke", None)], to_folder=folder)

    assert isinstance(result, ErrorItemNotFound)


def test_hard_delete_removes_item(server: FakeEwsServer, account: Account) -> None:
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail())

    assert account.bulk_delete([(item_id, None)], delete_type=HARD_DELETE) == [True]
    assert server.items(MAILBOX, "inbox") == []
    assert server.items(MAILBOX, "deleteditems") == []


def test_delete_to_deleted_items_moves_item(server: FakeEwsServer, account: Account) -> None:
    item_id = server.drop(MAILBOX, "inbox", norwegian_mail("Slett meg"))

    account.bulk_delete([(item_id, None)], delete_type=MOVE_TO_DELETED_ITEMS)

    assert [i.subject for i in server.items(MAILBOX, "deleteditems")] == ["Slett meg"]


def test_impersonation_header_selects_mailbox(server: FakeEwsServer) -> None:
    server.add_mailbox("ola.hansen@example.test")
    account = make_account(server, mailbox="ola.hansen@example.test")
    server.drop("ola.hansen@example.test", "inbox", norwegian_mail())

    assert account.inbox.total_count == 1
    assert {r.mailbox for r in server.requests} == {"ola.hansen@example.test"}


def test_delegate_access_uses_anchor_mailbox(server: FakeEwsServer) -> None:
    account = make_account(server, access=DELEGATE)

    account.inbox  # noqa: B018 - the property sends GetFolder

    assert server.requests[-1] == RequestRecord(MAILBOX, "GetFolder")


def test_unknown_mailbox_raises_non_existent(server: FakeEwsServer) -> None:
    account = make_account(server, mailbox="ingen.her@example.test")

    with pytest.raises(ErrorNonExistentMailbox):
        account.inbox  # noqa: B018 - the property sends GetFolder


def test_basic_auth_header_reaches_server(server: FakeEwsServer, account: Account) -> None:
    account.inbox  # noqa: B018 - the property sends GetFolder

    expected = "Basic " + base64.b64encode(b"svc-crm@example.test:testpassord").decode()
    assert server.authorizations[-1] == expected


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.SERVER_BUSY, ErrorServerBusy),
        (Fault.SERVER_BUSY_MESSAGE, ErrorServerBusy),
        (Fault.HTTP_503, ErrorServerBusy),
        (Fault.HTTP_429, MalformedResponseError),
        (Fault.HTTP_401, UnauthorizedError),
        (Fault.DROP, ErrorTimeoutExpired),
        (Fault.SLOW, ErrorTimeoutExpired),
        (Fault.INVALID_SYNC_STATE, ErrorInvalidSyncStateData),
        (Fault.INVALID_SYNC_STATE_BARE, AttributeError),
    ],
)
def test_fault_surfaces_as_exchangelib_error(
    server: FakeEwsServer, account: Account, fault: Fault, expected: type[Exception]
) -> None:
    inbox_id = account.inbox.id
    account.protocol.TIMEOUT = 0.3
    server.fail_next("SyncFolderItems", fault, delay=0.8)

    with pytest.raises(expected):
        sync_page(account, inbox_id, None)


def test_server_busy_fault_carries_back_off(server: FakeEwsServer, account: Account) -> None:
    inbox_id = account.inbox.id
    server.fail_next("SyncFolderItems", Fault.SERVER_BUSY, back_off_ms=2500)

    with pytest.raises(ErrorServerBusy) as caught:
        sync_page(account, inbox_id, None)

    assert caught.value.back_off == 2.5


def test_fault_applies_count_times(server: FakeEwsServer, account: Account) -> None:
    inbox_id = account.inbox.id
    server.fail_next("SyncFolderItems", Fault.HTTP_503, count=2)

    for _ in range(2):
        with pytest.raises(ErrorServerBusy):
            sync_page(account, inbox_id, None)
    changes, _ = sync_page(account, inbox_id, None)

    assert changes == []


def test_fault_for_other_operation_waits(server: FakeEwsServer, account: Account) -> None:
    server.fail_next("GetItem", Fault.HTTP_401)

    inbox = account.inbox

    assert inbox.name == "Inbox"


# -- NTLM ---------------------------------------------------------------------------

NTLM_USER = "EKSEMPEL\\svc-crm"
NTLM_PASSWORD = "testpassord-æøå"

# NegotiateFlags bits from [MS-NLMP] 2.2.2.5.
NEGOTIATE_UNICODE = 0x00000001
NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NEGOTIATE_TARGET_INFO = 0x00800000


def make_ntlm_account(server: FakeEwsServer, password: str = NTLM_PASSWORD) -> Account:
    config = Configuration(
        service_endpoint=server.url,
        credentials=Credentials(NTLM_USER, password),
        auth_type=NTLM,
        version=Version(build=Build(15, 1, 2507, 6)),
        retry_policy=FailFast(),
    )
    return Account(MAILBOX, config=config, access_type=IMPERSONATION, autodiscover=False, default_timezone=UTC)


def ntlm_message_types(authorizations: list[str]) -> list[int]:
    """Return the NTLM message type of each `Authorization: NTLM` header."""
    return [int.from_bytes(base64.b64decode(value.removeprefix("NTLM "))[8:12], "little") for value in authorizations]


def ntlm_av_ids(target_info: bytes) -> list[int]:
    """Return the AvId of each AV_PAIR in a target info field, MsvAvEOL included."""
    ids = []
    offset = 0
    while offset + 4 <= len(target_info):
        av_id, length = struct.unpack_from("<HH", target_info, offset)
        ids.append(av_id)
        offset += 4 + length
    return ids


def test_ntlm_handshake_authenticates_connection(server: FakeEwsServer) -> None:
    server.require_ntlm(NTLM_USER, NTLM_PASSWORD)
    account = make_ntlm_account(server)

    first = account.root.tois.name
    second = account.inbox.name

    assert (first, second) == ("Top of Information Store", "Inbox")
    assert server.ntlm_logons == [NTLM_USER]
    # Only the first request carries the handshake. The later GetFolder requests carry no header.
    assert ntlm_message_types(server.authorizations) == [1, 3]
    assert [record.operation for record in server.requests].count("GetFolder") >= 2


def test_ntlm_new_connection_needs_handshake(server: FakeEwsServer) -> None:
    server.require_ntlm(NTLM_USER, NTLM_PASSWORD)
    account = make_ntlm_account(server)
    account.inbox  # noqa: B018 - the property sends GetFolder

    account.protocol.close()
    account.inbox.refresh()

    assert server.ntlm_logons == [NTLM_USER, NTLM_USER]
    assert ntlm_message_types(server.authorizations) == [1, 3, 1, 3]


def test_ntlm_wrong_password_raises_unauthorized(server: FakeEwsServer) -> None:
    server.require_ntlm(NTLM_USER, NTLM_PASSWORD)
    account = make_ntlm_account(server, password="feil-passord")

    with pytest.raises(UnauthorizedError):
        account.inbox  # noqa: B018 - the property sends GetFolder

    assert server.ntlm_logons == []
    assert server.requests == []
    assert ntlm_message_types(server.authorizations) == [1, 3]


def test_ntlm_wire_shapes(server: FakeEwsServer) -> None:
    """One connection, as requests-ntlm drives it: 401, challenge, then a rejected AUTHENTICATE_MESSAGE."""
    server.require_ntlm(NTLM_USER, NTLM_PASSWORD)
    client = spnego.client(NTLM_USER, "feil-passord", protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
    host, port = server.url.split("/")[2].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    body = b"<not-read/>"

    def post(authorization: str | None) -> http.client.HTTPResponse:
        headers = {"Content-Type": "text/xml"} | ({"Authorization": authorization} if authorization else {})
        connection.request("POST", "/EWS/Exchange.asmx", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response

    anonymous = post(None)
    negotiate = client.step() or b""
    challenged = post("NTLM " + base64.b64encode(negotiate).decode())
    challenge_header = challenged.getheader("WWW-Authenticate") or ""
    challenge = base64.b64decode(challenge_header.removeprefix("NTLM "))
    rejected = post("NTLM " + base64.b64encode(client.step(challenge) or b"").decode())
    connection.close()

    assert (anonymous.status, anonymous.getheader("WWW-Authenticate")) == (401, "NTLM")
    assert challenged.status == 401
    assert challenge[:12] == b"NTLMSSP\0\x02\0\0\0"
    requested = int.from_bytes(negotiate[12:16], "little")
    granted = int.from_bytes(challenge[20:24], "little")
    assert requested & NEGOTIATE_UNICODE
    assert granted & NEGOTIATE_UNICODE
    assert requested & NEGOTIATE_EXTENDED_SESSIONSECURITY
    assert granted & NEGOTIATE_EXTENDED_SESSIONSECURITY
    assert granted & NEGOTIATE_TARGET_INFO
    assert challenge[24:32] != bytes(8)  # ServerChallenge
    length, _, offset = struct.unpack_from("<HHI", challenge, 40)
    av_ids = ntlm_av_ids(challenge[offset:offset + length])
    assert {1, 2, 7} <= set(av_ids)  # MsvAvNbComputerName, MsvAvNbDomainName, MsvAvTimestamp
    assert av_ids[-1] == 0  # MsvAvEOL
    assert (rejected.status, rejected.getheader("WWW-Authenticate")) == (401, "NTLM")
