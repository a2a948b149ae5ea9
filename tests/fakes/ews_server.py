"""A stateful fake Exchange Web Services endpoint on 127.0.0.1 for tests.

The server speaks SOAP 1.1 on one POST endpoint, `/EWS/Exchange.asmx`, in the
shapes that Exchange 2016 sends and exchangelib 5.6 parses. It keeps a folder
tree, items with MIME bytes and a change log per mailbox, and builds the
SyncFolderItems responses from that log. The mailbox of a request comes from the
ExchangeImpersonation SOAP header, else from the X-AnchorMailbox HTTP header.

Item ids change when an item moves, as they do on Exchange. Sync states are
opaque to the client and encode a position in the mailbox's change log.

Operations: GetFolder, FindFolder, CreateFolder, SyncFolderItems, GetItem,
UpdateItem (categories and subject; NeverOverwrite refuses a stale ChangeKey),
MoveItem and DeleteItem. Anything else is
answered with a SOAP fault that names the unsupported operation, so a test
never passes against a silently ignored request.

Authentication is off unless a test turns it on. `require_bearer` checks
OAuth 2.0 tokens per request, and `require_ntlm` makes every connection
complete an NTLM handshake (fakes/ntlm.py) before its requests are served.
"""

from __future__ import annotations

import base64
import binascii
import enum
import http.server
import itertools
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from typing import NamedTuple

from fakes import ntlm

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
ERRORS_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"

for _prefix, _uri in (("s", SOAP_NS), ("m", MESSAGES_NS), ("t", TYPES_NS), ("e", ERRORS_NS)):
    ET.register_namespace(_prefix, _uri)

ENDPOINT_PATH = "/EWS/Exchange.asmx"

#: Distinguished folders every mailbox starts with: id, display name, parent.
DISTINGUISHED_FOLDERS = (
    ("root", "", None),
    ("msgfolderroot", "Top of Information Store", "root"),
    ("inbox", "Inbox", "msgfolderroot"),
    ("sentitems", "Sent Items", "msgfolderroot"),
    ("deleteditems", "Deleted Items", "msgfolderroot"),
    ("drafts", "Drafts", "msgfolderroot"),
    ("outbox", "Outbox", "msgfolderroot"),
    ("junkemail", "Junk Email", "msgfolderroot"),
)

#: Operations whose response messages carry a sync state, even on errors.
SYNC_OPERATIONS = frozenset({"SyncFolderItems"})


def _m(name: str) -> str:
    return f"{{{MESSAGES_NS}}}{name}"


def _t(name: str) -> str:
    return f"{{{TYPES_NS}}}{name}"


class Fault(enum.StrEnum):
    """A failure that `FakeEwsServer.fail_next` injects into the next matching requests."""

    #: SOAP fault ErrorServerBusy with BackOffMilliseconds in its detail, HTTP 500.
    SERVER_BUSY = "server_busy"
    #: ErrorServerBusy as the code of the response message, HTTP 200.
    SERVER_BUSY_MESSAGE = "server_busy_message"
    #: HTTP 503 with a Retry-After header.
    HTTP_503 = "http_503"
    #: HTTP 429 with a Retry-After header.
    HTTP_429 = "http_429"
    #: HTTP 401 with a Basic challenge.
    HTTP_401 = "http_401"
    #: The socket is closed without any response.
    DROP = "drop"
    #: The response is sent after `delay` seconds. The server still carries out the request.
    SLOW = "slow"
    #: ErrorInvalidSyncStateData with an empty m:SyncState element.
    INVALID_SYNC_STATE = "invalid_sync_state"
    #: ErrorInvalidSyncStateData without m:SyncState and m:IncludesLastItemInRange.
    INVALID_SYNC_STATE_BARE = "invalid_sync_state_bare"


class RequestRecord(NamedTuple):
    """One request as the server saw it: the mailbox it targeted and the SOAP operation."""

    mailbox: str | None
    operation: str


@dataclass(frozen=True)
class FolderInfo:
    """A folder under the mailbox's top of information store, as tests inspect it."""

    id: str
    name: str
    parent_id: str
    path: str
    folder_class: str | None


@dataclass(frozen=True)
class ItemInfo:
    """An item in a folder, as tests inspect it."""

    id: str
    changekey: str
    subject: str
    message_id: str | None
    categories: list[str]
    mime: bytes


@dataclass
class _Folder:
    id: str
    changekey: str
    name: str
    parent_id: str | None
    folder_class: str | None
    distinguished: str | None = None


@dataclass
class _Item:
    id: str
    changekey: str
    folder_id: str
    mime: bytes
    subject: str
    message_id: str | None
    received: datetime
    categories: list[str] = field(default_factory=list)
    #: A response code that GetItem returns for this item instead of the item.
    error_code: str | None = None
    #: When true, GetItem sends MimeContent that is not valid base64.
    garbled_mime: bool = False


@dataclass(frozen=True)
class _Change:
    folder_id: str
    kind: str  # "Create", "Update" or "Delete"
    item_id: str
    changekey: str


@dataclass
class _Mailbox:
    address: str
    folders: dict[str, _Folder] = field(default_factory=dict)
    items: dict[str, _Item] = field(default_factory=dict)
    changes: list[_Change] = field(default_factory=list)


@dataclass
class _PendingFault:
    operation: str
    fault: Fault
    remaining: int
    back_off_ms: int
    retry_after: int
    delay: float


class _SoapFault(Exception):
    """Raised by an operation handler to respond with an HTTP 500 SOAP fault."""

    def __init__(self, code: str, text: str, back_off_ms: int | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.back_off_ms = back_off_ms


class FakeEwsServer:
    """A fake EWS endpoint with mailboxes, folders, items and switchable faults.

    Use it as a context manager, or call `start()` and `close()`.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._faults: list[_PendingFault] = []
        self._ids = itertools.count(1)
        self._http: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: (mailbox, operation) of every request, in arrival order.
        self.requests: list[RequestRecord] = []
        #: The Authorization header of every request that carried one.
        self.authorizations: list[str] = []
        #: Request bodies, kept only while `record_bodies` is true (for debugging a test).
        self.bodies: list[bytes] = []
        self.record_bodies = False
        self._bearer_checker: Callable[[str], bool] | None = None
        self._ntlm_accounts: list[ntlm.NtlmAccount] = []
        #: The names that the server sends in the target info of its NTLM challenges.
        self.ntlm_identity = ntlm.ServerIdentity()
        #: The account ("DOMAIN\\user") of every NTLM handshake that succeeded, in order.
        self.ntlm_logons: list[str] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeEwsServer:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> FakeEwsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The EWS endpoint URL, e.g. http://127.0.0.1:50123/EWS/Exchange.asmx."""
        if self._http is None:
            raise RuntimeError("the fake EWS server is not started; call start() first")
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}{ENDPOINT_PATH}"

    # -- test API ----------------------------------------------------------------

    def add_mailbox(self, address: str) -> None:
        """Create a mailbox with the distinguished folders root, msgfolderroot, inbox and the like."""
        key = address.lower()
        with self._lock:
            if key in self._mailboxes:
                raise ValueError(f"mailbox {address!r} exists already")
            mailbox = _Mailbox(address=key)
            ids: dict[str, str] = {}
            for distinguished, name, parent in DISTINGUISHED_FOLDERS:
                folder_id = self._new_id("F", key)
                ids[distinguished] = folder_id
                mailbox.folders[folder_id] = _Folder(
                    id=folder_id,
                    changekey=self._new_changekey(),
                    name=name,
                    parent_id=ids[parent] if parent else None,
                    folder_class=None if parent in (None, "root") else "IPF.Note",
                    distinguished=distinguished,
                )
            self._mailboxes[key] = mailbox

    def drop(
        self, address: str, folder: str, mime: bytes, *, categories: list[str] | None = None
    ) -> str:
        """Put a message into a folder, as a user's drag and drop would, and return its item id.

        `folder` is a folder id, a distinguished folder id ("inbox"), or a path
        of display names below the top of information store ("CRM-arkiv/Behandlet").
        """
        headers = BytesHeaderParser(policy=policy.default).parsebytes(mime)
        with self._lock:
            mailbox = self._mailbox(address)
            target = self._folder_by_reference(mailbox, folder)
            item = _Item(
                id=self._new_id("I", mailbox.address),
                changekey=self._new_changekey(),
                folder_id=target.id,
                mime=mime,
                subject=str(headers.get("Subject", "")),
                message_id=str(headers["Message-ID"]).strip() if headers["Message-ID"] else None,
                received=datetime.now(UTC).replace(microsecond=0),
                categories=list(categories or []),
            )
            mailbox.items[item.id] = item
            self._log_change(mailbox, "Create", item)
            return item.id

    def folders(self, address: str) -> list[FolderInfo]:
        """Return every folder below the top of information store, parents before children."""
        with self._lock:
            mailbox = self._mailbox(address)
            top = self._distinguished(mailbox, "msgfolderroot")
            result: list[FolderInfo] = []
            self._collect_folders(mailbox, top, "", result)
            return result

    def items(self, address: str, folder: str) -> list[ItemInfo]:
        """Return the items in a folder (id, distinguished id or display-name path), oldest first."""
        with self._lock:
            mailbox = self._mailbox(address)
            target = self._folder_by_reference(mailbox, folder)
            return [
                ItemInfo(
                    id=item.id,
                    changekey=item.changekey,
                    subject=item.subject,
                    message_id=item.message_id,
                    categories=list(item.categories),
                    mime=item.mime,
                )
                for item in mailbox.items.values()
                if item.folder_id == target.id
            ]

    def break_item(self, address: str, item_id: str, code: str = "ErrorItemCorrupt") -> None:
        """Make GetItem return the response code `code` for this item from now on."""
        with self._lock:
            self._mailbox(address).items[item_id].error_code = code

    def set_categories(self, address: str, item_id: str, categories: list[str]) -> None:
        """Replace an item's categories as a user in Outlook would: the item gets a new change key."""
        with self._lock:
            mailbox = self._mailbox(address)
            item = mailbox.items[item_id]
            item.categories = list(categories)
            item.changekey = self._new_changekey()
            self._log_change(mailbox, "Update", item)

    def garble_mime(self, address: str, item_id: str) -> None:
        """Make GetItem send MimeContent for this item that is not valid base64."""
        with self._lock:
            self._mailbox(address).items[item_id].garbled_mime = True

    def fail_next(
        self,
        operation: str,
        fault: Fault | str,
        count: int = 1,
        *,
        back_off_ms: int = 2500,
        retry_after: int = 7,
        delay: float = 1.0,
    ) -> None:
        """Fail the next `count` requests for `operation` ("*" for any) with `fault`.

        `back_off_ms` goes into ErrorServerBusy, `retry_after` (seconds) into the
        Retry-After header of HTTP 503 and 429, and `delay` (seconds) is how long
        a slow response is held back.
        """
        with self._lock:
            self._faults.append(
                _PendingFault(operation, Fault(fault), count, back_off_ms, retry_after, delay)
            )

    def require_bearer(self, token_checker: Callable[[str], bool]) -> None:
        """Answer HTTP 401 to every request whose Bearer token `token_checker` does not accept.

        Requests without an `Authorization: Bearer` header are rejected too.
        Rejected requests are still recorded in `requests` and `authorizations`.
        """
        with self._lock:
            self._bearer_checker = token_checker

    def require_ntlm(self, username: str, password: str) -> None:
        """Serve only connections that authenticated with NTLMv2 as one of the accounts added here.

        `username` is "DOMAIN\\user" or a UPN, as syncd's --username takes it.
        A connection without a logon gets HTTP 401 with `WWW-Authenticate: NTLM`,
        a NEGOTIATE_MESSAGE gets 401 with the CHALLENGE_MESSAGE, and an
        AUTHENTICATE_MESSAGE with the right password lets its request through.
        Later requests on that connection need no Authorization header. A wrong
        password gets a 401 without a challenge. Handshake requests that the
        server stops are recorded in `authorizations`, not in `requests`.

        Calling it again for the same account changes its password, as a reset
        on the domain controller does. Connections that authenticated before
        stay authenticated, as they do on Exchange.
        """
        account = ntlm.NtlmAccount.parse(username, password)
        with self._lock:
            self._ntlm_accounts = [a for a in self._ntlm_accounts if not a.same_account(account)]
            self._ntlm_accounts.append(account)

    def clear_requests(self) -> None:
        """Forget the request log, so a test can assert on what follows."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.bodies.clear()
            self.ntlm_logons.clear()

    # -- request handling ----------------------------------------------------------

    def _handle(self, handler: _Handler, body: bytes) -> None:
        with self._lock:
            accounts = list(self._ntlm_accounts)
        if accounts and not self._authenticate_ntlm(handler, accounts):
            return
        try:
            envelope = ET.fromstring(body)
        except ET.ParseError as exc:
            handler.send_plain(400, f"request body is not XML: {exc}")
            return
        request = self._request_element(envelope)
        if request is None:
            handler.send_plain(400, "SOAP body has no operation element")
            return
        operation = request.tag.rsplit("}", 1)[-1]
        address = self._request_mailbox(envelope, handler)

        with self._lock:
            self.requests.append(RequestRecord(address, operation))
            authorization = handler.headers.get("Authorization")
            if authorization:
                self.authorizations.append(authorization)
            if self.record_bodies:
                self.bodies.append(body)
            rejected = self._bearer_checker is not None and not _has_valid_bearer(authorization, self._bearer_checker)
            fault = None if rejected else self._take_fault(operation)

        if rejected:
            handler.send_plain(401, "Unauthorized", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        if fault is not None and self._send_transport_fault(handler, fault):
            return
        status, payload = self._dispatch(operation, request, address, fault)
        handler.send_xml(status, payload)

    @staticmethod
    def _request_element(envelope: ET.Element) -> ET.Element | None:
        body = envelope.find(f"{{{SOAP_NS}}}Body")
        if body is None or len(body) == 0:
            return None
        return body[0]

    @staticmethod
    def _request_mailbox(envelope: ET.Element, handler: _Handler) -> str | None:
        header = envelope.find(f"{{{SOAP_NS}}}Header")
        if header is not None:
            sid = header.find(f"{_t('ExchangeImpersonation')}/{_t('ConnectingSID')}")
            if sid is not None:
                for tag in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                    value = sid.findtext(_t(tag))
                    if value:
                        return value.strip().lower()
        anchor = handler.headers.get("X-AnchorMailbox")
        return anchor.strip().lower() if anchor else None

    def _authenticate_ntlm(self, handler: _Handler, accounts: list[ntlm.NtlmAccount]) -> bool:
        """Take one step of the NTLM handshake on the handler's connection, and return True to serve the request."""
        connection = handler.ntlm_connection
        authorization = handler.headers.get("Authorization") or ""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "ntlm" or not encoded.strip():
            if connection.account is not None:
                return True
            self._record_stopped(authorization)
            handler.send_plain(401, "Unauthorized", {"WWW-Authenticate": "NTLM"})
            return False

        try:
            token = base64.b64decode(encoded.strip(), validate=True)
            if ntlm.message_type(token) == ntlm.MessageType.NEGOTIATE:
                challenge = connection.challenge_for(ntlm.parse_negotiate(token), self.ntlm_identity)
                self._record_stopped(authorization)
                handler.send_plain(
                    401, "Unauthorized", {"WWW-Authenticate": f"NTLM {base64.b64encode(challenge).decode()}"}
                )
                return False
            message = ntlm.parse_authenticate(token)
        except (binascii.Error, ntlm.NtlmError) as exc:
            connection.reset()
            self._record_stopped(authorization)
            handler.send_plain(400, f"invalid NTLM token: {exc}")
            return False

        if connection.authenticate(message, accounts) is None:
            self._record_stopped(authorization)
            # The reply carries no new challenge, so the client has to start over with a NEGOTIATE_MESSAGE.
            handler.send_plain(401, "Unauthorized", {"WWW-Authenticate": "NTLM"})
            return False
        with self._lock:
            self.ntlm_logons.append(f"{message.domain}\\{message.user}")
        return True

    def _record_stopped(self, authorization: str) -> None:
        if authorization:
            with self._lock:
                self.authorizations.append(authorization)

    def _take_fault(self, operation: str) -> _PendingFault | None:
        for pending in self._faults:
            if pending.operation in (operation, "*"):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    self._faults.remove(pending)
                return pending
        return None

    @staticmethod
    def _send_transport_fault(handler: _Handler, pending: _PendingFault) -> bool:
        """Send a fault that replaces the whole HTTP response, or return False for the other faults."""
        fault = pending.fault
        if fault is Fault.SERVER_BUSY:
            handler.send_xml(
                500,
                _fault_envelope(
                    "ErrorServerBusy",
                    "The server cannot service this request right now. Try again later.",
                    pending.back_off_ms,
                ),
            )
            return True
        if fault is Fault.HTTP_503:
            handler.send_plain(503, "Service Unavailable", {"Retry-After": str(pending.retry_after)})
            return True
        if fault is Fault.HTTP_429:
            handler.send_plain(429, "Too Many Requests", {"Retry-After": str(pending.retry_after)})
            return True
        if fault is Fault.HTTP_401:
            handler.send_plain(401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="fake-ews"'})
            return True
        if fault is Fault.DROP:
            handler.close_connection = True
            return True
        if fault is Fault.SLOW:
            time.sleep(pending.delay)
        return False

    def _dispatch(
        self,
        operation: str,
        request: ET.Element,
        address: str | None,
        pending: _PendingFault | None,
    ) -> tuple[int, bytes]:
        handlers = {
            "GetFolder": self._get_folder,
            "FindFolder": self._find_folder,
            "CreateFolder": self._create_folder,
            "SyncFolderItems": self._sync_folder_items,
            "GetItem": self._get_item,
            "UpdateItem": self._update_item,
            "MoveItem": self._move_item,
            "DeleteItem": self._delete_item,
        }
        operation_handler = handlers.get(operation)
        if operation_handler is None:
            return 500, _fault_envelope(
                "ErrorInvalidOperation", f"The fake EWS server does not implement {operation}."
            )
        with self._lock:
            mailbox = self._mailboxes.get(address or "")
            if mailbox is None:
                return 500, _fault_envelope(
                    "ErrorNonExistentMailbox",
                    f"The SMTP address {address!r} has no mailbox associated with it.",
                )
            if pending is not None and pending.fault is not Fault.SLOW:
                messages = [self._injected_error_message(operation, pending)]
            else:
                try:
                    messages = operation_handler(mailbox, request)
                except _SoapFault as fault:
                    return 500, _fault_envelope(fault.code, fault.text, fault.back_off_ms)
        return 200, _response_envelope(operation, messages)

    def _injected_error_message(self, operation: str, pending: _PendingFault) -> ET.Element:
        if pending.fault is Fault.SERVER_BUSY_MESSAGE:
            message = _error_message(
                operation, "ErrorServerBusy", "The server cannot service this request right now."
            )
            message_xml = ET.SubElement(message, _m("MessageXml"))
            value = ET.SubElement(message_xml, _t("Value"), Name="BackOffMilliseconds")
            value.text = str(pending.back_off_ms)
            if operation in SYNC_OPERATIONS:
                _add_empty_sync_state(message)
            return message
        message = _error_message(
            operation, "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
        )
        if pending.fault is Fault.INVALID_SYNC_STATE:
            _add_empty_sync_state(message)
        return message

    # -- operations ------------------------------------------------------------------

    def _get_folder(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        messages = []
        for reference in _children(request.find(_m("FolderIds"))):
            folder = self._folder_by_element(mailbox, reference)
            if folder is None:
                message = _error_message("GetFolder", "ErrorFolderNotFound", "The specified folder could not be found in the store.")
                ET.SubElement(message, _m("Folders"))
            else:
                message = _success_message("GetFolder")
                container = ET.SubElement(message, _m("Folders"))
                container.append(self._folder_element(mailbox, folder))
            messages.append(message)
        return messages

    def _find_folder(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        traversal = request.get("Traversal", "Shallow")
        if traversal not in ("Shallow", "Deep"):
            raise _SoapFault("ErrorInvalidOperation", f"The fake EWS server does not support Traversal={traversal}.")
        wanted_name = _display_name_restriction(request.find(_m("Restriction")))
        view = request.find(_m("IndexedPageFolderView"))
        offset = int(view.get("Offset", "0")) if view is not None else 0
        max_entries = int(view.get("MaxEntriesReturned", "1000")) if view is not None else 1000

        messages = []
        for reference in _children(request.find(_m("ParentFolderIds"))):
            parent = self._folder_by_element(mailbox, reference)
            if parent is None:
                message = _error_message("FindFolder", "ErrorFolderNotFound", "The specified folder could not be found in the store.")
                messages.append(message)
                continue
            found = self._subfolders(mailbox, parent, deep=traversal == "Deep")
            if wanted_name is not None:
                found = [f for f in found if f.name.casefold() == wanted_name.casefold()]
            page = found[offset : offset + max_entries]
            end = offset + len(page)
            message = _success_message("FindFolder")
            root = ET.SubElement(
                message,
                _m("RootFolder"),
                IndexedPagingOffset=str(end),
                TotalItemsInView=str(len(found)),
                IncludesLastItemInRange=_xml_bool(end >= len(found)),
            )
            container = ET.SubElement(root, _t("Folders"))
            for folder in page:
                container.append(self._folder_element(mailbox, folder))
            messages.append(message)
        return messages

    def _create_folder(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        parent_reference = _children(request.find(_m("ParentFolderId")))
        parent = self._folder_by_element(mailbox, parent_reference[0]) if parent_reference else None
        messages = []
        for spec in _children(request.find(_m("Folders"))):
            name = spec.findtext(_t("DisplayName")) or ""
            if parent is None:
                message = _error_message("CreateFolder", "ErrorParentFolderNotFound", "The parent folder could not be found.")
                ET.SubElement(message, _m("Folders"))
            elif any(f.name.casefold() == name.casefold() for f in self._subfolders(mailbox, parent, deep=False)):
                message = _error_message("CreateFolder", "ErrorFolderExists", "A folder with the specified name already exists.")
                ET.SubElement(message, _m("Folders"))
            else:
                folder = _Folder(
                    id=self._new_id("F", mailbox.address),
                    changekey=self._new_changekey(),
                    name=name,
                    parent_id=parent.id,
                    folder_class=spec.findtext(_t("FolderClass")),
                )
                mailbox.folders[folder.id] = folder
                message = _success_message("CreateFolder")
                container = ET.SubElement(message, _m("Folders"))
                created = ET.SubElement(container, spec.tag)
                ET.SubElement(created, _t("FolderId"), Id=folder.id, ChangeKey=folder.changekey)
            messages.append(message)
        return messages

    def _sync_folder_items(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        references = _children(request.find(_m("SyncFolderId")))
        folder = self._folder_by_element(mailbox, references[0]) if references else None
        if folder is None:
            message = _error_message("SyncFolderItems", "ErrorFolderNotFound", "The specified folder could not be found in the store.")
            _add_empty_sync_state(message)
            return [message]
        position = _decode_sync_state(request.findtext(_m("SyncState")), folder.id)
        if position is None or position > len(mailbox.changes):
            message = _error_message(
                "SyncFolderItems", "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
            )
            _add_empty_sync_state(message)
            return [message]

        shape = _ItemShape.parse(request.find(_m("ItemShape")))
        ignored = {e.get("Id") for e in _children(request.find(_m("Ignore")))}
        max_changes = int(request.findtext(_m("MaxChangesReturned")) or "100")
        changes, position = self._changes_since(mailbox, folder, position, max_changes, ignored, shape)
        remaining = any(c.folder_id == folder.id for c in mailbox.changes[position:])

        message = _success_message("SyncFolderItems")
        ET.SubElement(message, _m("SyncState")).text = _encode_sync_state(folder.id, position)
        ET.SubElement(message, _m("IncludesLastItemInRange")).text = _xml_bool(not remaining)
        container = ET.SubElement(message, _m("Changes"))
        container.extend(changes)
        return [message]

    def _changes_since(
        self,
        mailbox: _Mailbox,
        folder: _Folder,
        position: int,
        max_changes: int,
        ignored: set[str | None],
        shape: _ItemShape,
    ) -> tuple[list[ET.Element], int]:
        """Return up to `max_changes` change elements after `position`, and the position after them.

        A create or update of an item that has left the folder since is
        skipped, and an update of an item created in the same page is folded
        into the create, the way Exchange reports net changes.
        """
        elements: list[ET.Element] = []
        reported: set[str] = set()
        while position < len(mailbox.changes) and len(elements) < max_changes:
            change = mailbox.changes[position]
            position += 1
            if change.folder_id != folder.id or change.item_id in ignored:
                continue
            if change.kind == "Delete":
                wrapper = ET.Element(_t("Delete"))
                ET.SubElement(wrapper, _t("ItemId"), Id=change.item_id, ChangeKey=change.changekey)
                elements.append(wrapper)
                continue
            item = mailbox.items.get(change.item_id)
            if item is None or item.folder_id != folder.id or item.id in reported:
                continue
            reported.add(item.id)
            wrapper = ET.Element(_t(change.kind))
            wrapper.append(self._item_element(mailbox, item, shape))
            elements.append(wrapper)
        return elements, position

    def _get_item(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        shape = _ItemShape.parse(request.find(_m("ItemShape")))
        messages = []
        for reference in _children(request.find(_m("ItemIds"))):
            item = mailbox.items.get(reference.get("Id", ""))
            if item is None:
                message = _item_not_found("GetItem")
            elif item.error_code:
                message = _error_message("GetItem", item.error_code, f"The item cannot be read ({item.error_code}).")
                ET.SubElement(message, _m("Items"))
            else:
                message = _success_message("GetItem")
                ET.SubElement(message, _m("Items")).append(self._item_element(mailbox, item, shape))
            messages.append(message)
        return messages

    def _update_item(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        # Under NeverOverwrite, Exchange rejects a change whose ChangeKey is no
        # longer the item's. AutoResolve and AlwaysOverwrite write in most
        # cases, which the fake models as always.
        never_overwrite = request.get("ConflictResolution") == "NeverOverwrite"
        messages = []
        for change in _children(request.find(_m("ItemChanges"))):
            reference = change.find(_t("ItemId"))
            item = mailbox.items.get(reference.get("Id", "") if reference is not None else "")
            if item is None:
                messages.append(_item_not_found("UpdateItem"))
                continue
            changekey = reference.get("ChangeKey") if reference is not None else None
            if never_overwrite and changekey and changekey != item.changekey:
                message = _error_message(
                    "UpdateItem",
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key passed in the "
                    "request does not match the current change key for the item.",
                )
                ET.SubElement(message, _m("Items"))
                messages.append(message)
                continue
            for update in _children(change.find(_t("Updates"))):
                _apply_update(item, update)
            item.changekey = self._new_changekey()
            self._log_change(mailbox, "Update", item)
            message = _success_message("UpdateItem")
            items = ET.SubElement(message, _m("Items"))
            element = ET.SubElement(items, _t("Message"))
            ET.SubElement(element, _t("ItemId"), Id=item.id, ChangeKey=item.changekey)
            conflicts = ET.SubElement(message, _m("ConflictResults"))
            ET.SubElement(conflicts, _t("Count")).text = "0"
            messages.append(message)
        return messages

    def _move_item(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        targets = _children(request.find(_m("ToFolderId")))
        target = self._folder_by_element(mailbox, targets[0]) if targets else None
        messages = []
        for reference in _children(request.find(_m("ItemIds"))):
            item = mailbox.items.get(reference.get("Id", ""))
            if item is None:
                messages.append(_item_not_found("MoveItem"))
                continue
            if target is None:
                message = _error_message("MoveItem", "ErrorToFolderNotFound", "The destination folder could not be found.")
                ET.SubElement(message, _m("Items"))
                messages.append(message)
                continue
            moved = self._move(mailbox, item, target)
            message = _success_message("MoveItem")
            element = ET.SubElement(ET.SubElement(message, _m("Items")), _t("Message"))
            ET.SubElement(element, _t("ItemId"), Id=moved.id, ChangeKey=moved.changekey)
            messages.append(message)
        return messages

    def _delete_item(self, mailbox: _Mailbox, request: ET.Element) -> list[ET.Element]:
        delete_type = request.get("DeleteType", "HardDelete")
        messages = []
        for reference in _children(request.find(_m("ItemIds"))):
            item = mailbox.items.get(reference.get("Id", ""))
            if item is None:
                messages.append(_item_not_found("DeleteItem"))
                continue
            if delete_type == "MoveToDeletedItems":
                self._move(mailbox, item, self._distinguished(mailbox, "deleteditems"))
            else:
                del mailbox.items[item.id]
                self._log_change(mailbox, "Delete", item)
            messages.append(_success_message("DeleteItem"))
        return messages

    # -- state helpers -----------------------------------------------------------------

    def _move(self, mailbox: _Mailbox, item: _Item, target: _Folder) -> _Item:
        """Move an item; like Exchange, the moved item gets a new id."""
        del mailbox.items[item.id]
        self._log_change(mailbox, "Delete", item)
        moved = _Item(
            id=self._new_id("I", mailbox.address),
            changekey=self._new_changekey(),
            folder_id=target.id,
            mime=item.mime,
            subject=item.subject,
            message_id=item.message_id,
            received=item.received,
            categories=list(item.categories),
            error_code=item.error_code,
            garbled_mime=item.garbled_mime,
        )
        mailbox.items[moved.id] = moved
        self._log_change(mailbox, "Create", moved)
        return moved

    @staticmethod
    def _log_change(mailbox: _Mailbox, kind: str, item: _Item) -> None:
        mailbox.changes.append(_Change(item.folder_id, kind, item.id, item.changekey))

    def _new_id(self, kind: str, address: str) -> str:
        # Exchange ids are long base64 strings; these are shorter but alike in alphabet.
        raw = f"{kind}{next(self._ids):08d}:{address}".encode()
        return "AAMkA" + base64.b64encode(raw).decode()

    def _new_changekey(self) -> str:
        return "CQAAAB" + base64.b64encode(f"{next(self._ids):08d}".encode()).decode()

    def _mailbox(self, address: str) -> _Mailbox:
        try:
            return self._mailboxes[address.lower()]
        except KeyError:
            raise KeyError(f"no mailbox {address!r}; call add_mailbox() first") from None

    @staticmethod
    def _distinguished(mailbox: _Mailbox, distinguished: str) -> _Folder:
        for folder in mailbox.folders.values():
            if folder.distinguished == distinguished:
                return folder
        raise KeyError(f"mailbox {mailbox.address!r} has no distinguished folder {distinguished!r}")

    def _folder_by_element(self, mailbox: _Mailbox, reference: ET.Element) -> _Folder | None:
        folder_id = reference.get("Id", "")
        if reference.tag == _t("DistinguishedFolderId"):
            try:
                return self._distinguished(mailbox, folder_id)
            except KeyError:
                return None
        return mailbox.folders.get(folder_id)

    def _folder_by_reference(self, mailbox: _Mailbox, reference: str) -> _Folder:
        if reference in mailbox.folders:
            return mailbox.folders[reference]
        try:
            return self._distinguished(mailbox, reference)
        except KeyError:
            pass
        folder = self._distinguished(mailbox, "msgfolderroot")
        for name in reference.strip("/").split("/"):
            matches = [f for f in self._subfolders(mailbox, folder, deep=False) if f.name.casefold() == name.casefold()]
            if not matches:
                raise KeyError(f"mailbox {mailbox.address!r} has no folder {reference!r}")
            folder = matches[0]
        return folder

    @staticmethod
    def _subfolders(mailbox: _Mailbox, parent: _Folder, *, deep: bool) -> list[_Folder]:
        children = [f for f in mailbox.folders.values() if f.parent_id == parent.id]
        if not deep:
            return children
        result = []
        for child in children:
            result.append(child)
            result.extend(FakeEwsServer._subfolders(mailbox, child, deep=True))
        return result

    def _collect_folders(self, mailbox: _Mailbox, parent: _Folder, prefix: str, result: list[FolderInfo]) -> None:
        for child in self._subfolders(mailbox, parent, deep=False):
            path = f"{prefix}{child.name}"
            result.append(FolderInfo(child.id, child.name, parent.id, path, child.folder_class))
            self._collect_folders(mailbox, child, path + "/", result)

    def _folder_element(self, mailbox: _Mailbox, folder: _Folder) -> ET.Element:
        element = ET.Element(_t("Folder"))
        ET.SubElement(element, _t("FolderId"), Id=folder.id, ChangeKey=folder.changekey)
        if folder.parent_id:
            parent = mailbox.folders[folder.parent_id]
            ET.SubElement(element, _t("ParentFolderId"), Id=parent.id, ChangeKey=parent.changekey)
        if folder.folder_class:
            ET.SubElement(element, _t("FolderClass")).text = folder.folder_class
        ET.SubElement(element, _t("DisplayName")).text = folder.name
        count = sum(1 for item in mailbox.items.values() if item.folder_id == folder.id)
        ET.SubElement(element, _t("TotalCount")).text = str(count)
        children = sum(1 for f in mailbox.folders.values() if f.parent_id == folder.id)
        ET.SubElement(element, _t("ChildFolderCount")).text = str(children)
        ET.SubElement(element, _t("UnreadCount")).text = "0"
        return element

    @staticmethod
    def _item_element(mailbox: _Mailbox, item: _Item, shape: _ItemShape) -> ET.Element:
        # Children follow the order of ItemType and MessageType in the EWS schema.
        element = ET.Element(_t("Message"))
        if shape.wants("item:MimeContent"):
            mime = ET.SubElement(element, _t("MimeContent"), CharacterSet="UTF-8")
            mime.text = "@@not base64@@" if item.garbled_mime else base64.b64encode(item.mime).decode()
        ET.SubElement(element, _t("ItemId"), Id=item.id, ChangeKey=item.changekey)
        if shape.wants("item:ParentFolderId"):
            parent = mailbox.folders[item.folder_id]
            ET.SubElement(element, _t("ParentFolderId"), Id=parent.id, ChangeKey=parent.changekey)
        if shape.wants("item:ItemClass"):
            ET.SubElement(element, _t("ItemClass")).text = "IPM.Note"
        if shape.wants("item:Subject"):
            ET.SubElement(element, _t("Subject")).text = item.subject
        if shape.wants("item:DateTimeReceived"):
            ET.SubElement(element, _t("DateTimeReceived")).text = item.received.strftime("%Y-%m-%dT%H:%M:%SZ")
        if shape.wants("item:Size"):
            ET.SubElement(element, _t("Size")).text = str(len(item.mime))
        if shape.wants("item:Categories") and item.categories:
            categories = ET.SubElement(element, _t("Categories"))
            for category in item.categories:
                ET.SubElement(categories, _t("String")).text = category
        if shape.wants("message:InternetMessageId") and item.message_id:
            ET.SubElement(element, _t("InternetMessageId")).text = item.message_id
        return element


@dataclass(frozen=True)
class _ItemShape:
    """The requested item properties: a base shape plus additional field URIs."""

    base: str
    additional: frozenset[str]

    #: Properties that AllProperties and Default return. MIME content comes only when requested by name.
    FULL = frozenset(
        {
            "item:ParentFolderId",
            "item:ItemClass",
            "item:Subject",
            "item:DateTimeReceived",
            "item:Size",
            "item:Categories",
            "message:InternetMessageId",
        }
    )

    @classmethod
    def parse(cls, element: ET.Element | None) -> _ItemShape:
        if element is None:
            return cls("IdOnly", frozenset())
        additional = element.find(_t("AdditionalProperties"))
        uris = frozenset(e.get("FieldURI", "") for e in _children(additional) if e.tag == _t("FieldURI"))
        return cls(element.findtext(_t("BaseShape")) or "IdOnly", uris)

    def wants(self, field_uri: str) -> bool:
        if field_uri in self.additional:
            return True
        return self.base in ("Default", "AllProperties") and field_uri in self.FULL


def _apply_update(item: _Item, update: ET.Element) -> None:
    kind = update.tag.rsplit("}", 1)[-1]
    uri_element = update.find(_t("FieldURI"))
    uri = uri_element.get("FieldURI") if uri_element is not None else None
    if uri not in ("item:Categories", "item:Subject"):
        raise _SoapFault("ErrorInvalidOperation", f"The fake EWS server cannot update {uri or 'this property'}.")
    values = update.find(_t("Message"))
    if kind == "DeleteItemField":
        if uri == "item:Categories":
            item.categories = []
        else:
            item.subject = ""
        return
    if values is None:
        raise _SoapFault("ErrorInvalidOperation", f"{kind} for {uri} carries no t:Message element.")
    if uri == "item:Subject":
        item.subject = values.findtext(_t("Subject")) or ""
        return
    strings = [s.text or "" for s in _children(values.find(_t("Categories")))]
    item.categories = item.categories + strings if kind == "AppendToItemField" else strings


def _display_name_restriction(restriction: ET.Element | None) -> str | None:
    """Return the display name that a FindFolder restriction requests, or None without a restriction."""
    if restriction is None:
        return None
    equal = restriction.find(_t("IsEqualTo"))
    uri = equal.find(_t("FieldURI")) if equal is not None else None
    constant = equal.find(f"{_t('FieldURIOrConstant')}/{_t('Constant')}") if equal is not None else None
    if uri is None or uri.get("FieldURI") != "folder:DisplayName" or constant is None:
        raise _SoapFault(
            "ErrorInvalidOperation", "The fake EWS server supports only IsEqualTo on folder:DisplayName."
        )
    return constant.get("Value", "")


def _encode_sync_state(folder_id: str, position: int) -> str:
    payload = json.dumps({"folder": folder_id, "position": position}).encode()
    return base64.b64encode(payload).decode()


def _decode_sync_state(state: str | None, folder_id: str) -> int | None:
    """Return the change-log position in `state`, 0 for no state, or None when it is invalid."""
    if not state:
        return 0
    try:
        decoded = json.loads(base64.b64decode(state, validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(decoded, dict) or decoded.get("folder") != folder_id:
        return None
    position = decoded.get("position")
    return position if isinstance(position, int) and position >= 0 else None


def _has_valid_bearer(authorization: str | None, token_checker: Callable[[str], bool]) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and bool(token) and token_checker(token.strip())


def _children(element: ET.Element | None) -> list[ET.Element]:
    return list(element) if element is not None else []


def _xml_bool(value: bool) -> str:
    return "true" if value else "false"


def _success_message(operation: str) -> ET.Element:
    message = ET.Element(_m(f"{operation}ResponseMessage"), ResponseClass="Success")
    ET.SubElement(message, _m("ResponseCode")).text = "NoError"
    return message


def _error_message(operation: str, code: str, text: str) -> ET.Element:
    message = ET.Element(_m(f"{operation}ResponseMessage"), ResponseClass="Error")
    ET.SubElement(message, _m("MessageText")).text = text
    ET.SubElement(message, _m("ResponseCode")).text = code
    ET.SubElement(message, _m("DescriptiveLinkKey")).text = "0"
    return message


def _item_not_found(operation: str) -> ET.Element:
    message = _error_message(operation, "ErrorItemNotFound", "The specified object was not found in the store.")
    ET.SubElement(message, _m("Items"))
    return message


def _add_empty_sync_state(message: ET.Element) -> None:
    ET.SubElement(message, _m("SyncState"))
    ET.SubElement(message, _m("IncludesLastItemInRange")).text = "true"


def _envelope() -> tuple[ET.Element, ET.Element]:
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    header = ET.SubElement(envelope, f"{{{SOAP_NS}}}Header")
    ET.SubElement(
        header,
        _t("ServerVersionInfo"),
        MajorVersion="15",
        MinorVersion="1",
        MajorBuildNumber="2507",
        MinorBuildNumber="6",
        Version="V2017_07_11",
    )
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    return envelope, body


def _response_envelope(operation: str, messages: list[ET.Element]) -> bytes:
    envelope, body = _envelope()
    response = ET.SubElement(body, _m(f"{operation}Response"))
    ET.SubElement(response, _m("ResponseMessages")).extend(messages)
    return ET.tostring(envelope, encoding="utf-8", xml_declaration=True)


def _fault_envelope(code: str, text: str, back_off_ms: int | None = None) -> bytes:
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    fault = ET.SubElement(body, f"{{{SOAP_NS}}}Fault")
    ET.SubElement(fault, "faultcode").text = f"a:{code}"
    ET.SubElement(fault, "faultstring").text = text
    detail = ET.SubElement(fault, "detail")
    ET.SubElement(detail, f"{{{ERRORS_NS}}}ResponseCode").text = code
    ET.SubElement(detail, f"{{{ERRORS_NS}}}Message").text = text
    if back_off_ms is not None:
        message_xml = ET.SubElement(detail, _t("MessageXml"))
        ET.SubElement(message_xml, _t("Value"), Name="BackOffMilliseconds").text = str(back_off_ms)
    return ET.tostring(envelope, encoding="utf-8", xml_declaration=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK, about 40 ms per request.
    disable_nagle_algorithm = True
    fake: FakeEwsServer
    #: The NTLM state of this connection; the server makes one handler per connection.
    ntlm_connection: ntlm.NtlmConnection

    def setup(self) -> None:
        super().setup()
        self.ntlm_connection = ntlm.NtlmConnection()

    def do_POST(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0].lower() != ENDPOINT_PATH.lower():
            self.send_plain(404, f"no EWS endpoint at {self.path}")
            return
        self.fake._handle(self, body)

    def send_xml(self, status: int, payload: bytes) -> None:
        self._send(status, "text/xml; charset=utf-8", payload, {})

    def send_plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode(), headers or {})

    def _send(self, status: int, content_type: str, payload: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up first, as it does after a slow response.
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed by the base class
        # Tests read `FakeEwsServer.requests`; access lines on stderr would only add noise.
        return
