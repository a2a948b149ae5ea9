"""A stateful fake Microsoft Graph mail API on 127.0.0.1 for tests.

The server speaks JSON over real HTTP under `http://127.0.0.1:<port>/v1.0`, in
the shapes that Graph v1.0 documents for mail folders, message delta, `$value`,
move, PATCH and `$batch`. It keeps per mailbox a folder tree, messages with
their MIME bytes and a change log, and builds delta pages from that log.

Ids: every message has an immutable id, which survives moves, and a default
id, which changes on every move. A request that carries
`Prefer: IdType="ImmutableId"` gets immutable ids, and any other request gets
default ids. Both forms are accepted as input, but a default id from before a
move gets 404 ErrorItemNotFound, as on Exchange Online.

Delta: a round starts from `messages/delta` (optionally with `$select`) and
returns every message in the folder. Page links carry `$skiptoken`, and the
last page carries a deltaLink with `$deltatoken`. `$select` is baked into both
tokens. A round from a deltaLink returns the net changes since: messages added
or changed (in full, since Graph does not say which), and
`{"id", "@removed": {"reason": "deleted"}}` for messages that left the folder.
Tokens stay valid until `reset_sync_states`, after which they get 410
syncStateNotFound.

`$batch` takes at most 20 sub-requests and runs up to 4 of them at once (all
of them one after another when any has `dependsOn`). Each sub-request is
logged, counted against its mailbox's concurrency and can be failed on its
own. A `$value` sub-response carries the MIME bytes as a base64 string, which
is what Graph's batching documentation describes for bodies that are not JSON.
NOTE: that encoding was not checked against Exchange Online.

PATCH honours If-Match: a tag other than the message's current `@odata.etag`
(or `*`) gets 412 ErrorIrresolvableConflict, the answer Exchange Online gives
for a stale change key. NOTE: whether Graph checks If-Match on messages, rather
than only a change key in the body, was not checked against Exchange Online.

Anything the fake does not implement gets 400 BadRequest naming
the request, so a test never passes against a silently ignored request.
"""

from __future__ import annotations

import base64
import binascii
import enum
import http.server
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

API_ROOT = "/v1.0"

#: Maximum number of sub-requests in one `$batch`, per Graph's JSON batching documentation.
MAX_BATCH_REQUESTS = 20

#: Sub-requests of one `$batch` without `dependsOn` that run at the same time.
BATCH_PARALLELISM = 4

#: Delta page size when the request has no `Prefer: odata.maxpagesize`.
DEFAULT_DELTA_PAGE_SIZE = 10

#: Well-known folders every mailbox starts with: well-known name, display name, parent.
WELL_KNOWN_FOLDERS = (
    ("msgfolderroot", "Top of Information Store", None),
    ("inbox", "Inbox", "msgfolderroot"),
    ("sentitems", "Sent Items", "msgfolderroot"),
    ("deleteditems", "Deleted Items", "msgfolderroot"),
    ("drafts", "Drafts", "msgfolderroot"),
    ("junkemail", "Junk Email", "msgfolderroot"),
)

#: Message properties a delta item or GET carries when the request has no `$select`.
MESSAGE_PROPERTIES = (
    "subject",
    "internetMessageId",
    "receivedDateTime",
    "categories",
    "parentFolderId",
)

FOLDER_PROPERTIES = (
    "id",
    "displayName",
    "parentFolderId",
    "childFolderCount",
    "unreadItemCount",
    "totalItemCount",
)

_DISPLAY_NAME_FILTER = re.compile(r"^\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_ODATA_KEY_SEGMENT = re.compile(r"^([^()]+)\('((?:[^']|'')*)'\)$")
_DELTA_SEGMENTS = frozenset({"delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"})


class Fault(enum.StrEnum):
    """A failure that `FakeGraphServer.fail_next` injects into the next matching requests."""

    #: 429 with Retry-After and code ApplicationThrottled; also works on one `$batch` sub-request.
    THROTTLED = "throttled"
    #: 503 with Retry-After.
    UNAVAILABLE = "unavailable"
    #: 504 with Retry-After.
    GATEWAY_TIMEOUT = "gateway_timeout"
    #: 401 with code InvalidAuthenticationToken.
    UNAUTHORIZED = "unauthorized"
    #: 410 with code syncStateNotFound.
    SYNC_STATE_NOT_FOUND = "sync_state_not_found"
    #: 404 with code ErrorItemNotFound.
    NOT_FOUND = "not_found"
    #: 403 with code ErrorAccessDenied.
    ACCESS_DENIED = "access_denied"
    #: 500 with code InternalServerError.
    SERVER_ERROR = "server_error"
    #: The socket is closed without a response. Applies to HTTP requests only, never to sub-requests.
    DROP = "drop"
    #: The response is sent after `delay` seconds; the server still carries out the request.
    SLOW = "slow"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it.

    `path` is below /v1.0 with OData key segments kept as sent. `mailbox` is
    the lower-cased UPN from the path (for a `$batch`: the one mailbox of all
    its sub-requests, else None). `concurrency` is the number of requests in
    flight for that mailbox when this one started, itself included. It is
    None for the `$batch` envelope, because only its sub-requests count.
    `batched` marks sub-requests of a `$batch`.
    """

    method: str
    path: str
    query: str
    mailbox: str | None
    concurrency: int | None
    batched: bool = False
    prefer: tuple[str, ...] = ()


@dataclass(frozen=True)
class FolderInfo:
    """A folder below the top of information store, as tests inspect it."""

    id: str
    display_name: str
    parent_id: str
    path: str


@dataclass(frozen=True)
class MessageInfo:
    """A message in a folder, as tests inspect it; `id` is the immutable id."""

    id: str
    rest_id: str
    subject: str
    internet_message_id: str | None
    categories: list[str]
    mime: bytes


@dataclass
class _Folder:
    id: str
    display_name: str
    parent_id: str | None
    well_known: str | None = None


@dataclass
class _Message:
    key: int
    immutable_id: str
    rest_id: str
    folder_id: str
    mime: bytes
    subject: str
    internet_message_id: str | None
    received: datetime
    change_key: str
    categories: list[str] = field(default_factory=list)
    #: Status and error code that `$value` returns for this message instead of its bytes.
    mime_error: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Change:
    kind: str  # "added", "removed" or "updated"
    key: int
    folder_id: str
    #: The default id the message had in that folder at the time.
    rest_id: str
    immutable_id: str


@dataclass
class _Mailbox:
    upn: str
    folders: dict[str, _Folder] = field(default_factory=dict)
    messages: dict[int, _Message] = field(default_factory=dict)
    changes: list[_Change] = field(default_factory=list)
    #: Counter that `reset_sync_states` raises. Tokens of an older generation get 410.
    sync_generation: int = 0


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int
    match: str | None
    retry_after: int
    delay: float


@dataclass
class _Call:
    """One request or `$batch` sub-request, parsed."""

    method: str
    #: Path below /v1.0 as sent, e.g. "/users/kari@example.test/messages/AAk…/$value".
    path: str
    #: Decoded path segments with OData keys split out: "users('x')" becomes "users", "x".
    segments: list[str]
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    prefer: tuple[str, ...]
    body: Any
    batched: bool

    @property
    def immutable_ids(self) -> bool:
        return any(p.replace(" ", "").lower() == 'idtype="immutableid"' for p in self.prefer)

    @property
    def max_page_size(self) -> int | None:
        for preference in self.prefer:
            name, _, value = preference.partition("=")
            if name.strip().lower() == "odata.maxpagesize" and value.strip().isdigit():
                return int(value.strip())
        return None

    @property
    def target(self) -> str:
        """Method, path and query, the string that `fail_next(match=…)` searches."""
        return f"{self.method} {self.path}?{self.raw_query}" if self.raw_query else f"{self.method} {self.path}"


@dataclass
class _Reply:
    status: int
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class FakeGraphServer:
    """A fake Graph endpoint with mailboxes, folders, messages and switchable faults.

    `token_checker` receives the bearer token of every HTTP request and
    returns whether it is valid; by default any non-empty token is.
    `concurrency_limit`, when set, rejects a request that would put more
    than that many requests in flight for one mailbox with 429
    ApplicationThrottled, as Exchange Online does above 4.
    Use it as a context manager, or call `start()` and `close()`.
    """

    def __init__(
        self,
        *,
        token_checker: Callable[[str], bool] | None = None,
        concurrency_limit: int | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._faults: list[_PendingFault] = []
        self._counter = itertools.count(1)
        self._in_flight: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._http: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.token_checker = token_checker
        self.concurrency_limit = concurrency_limit
        #: Seconds every request and sub-request stays in flight before it is carried out.
        self.latency = 0.0
        #: How a `$batch` sub-response carries bytes: "base64", or "text" (decoded as UTF-8),
        #: which lets a test check a client against the encoding Graph's documentation does not describe.
        self.batch_body_encoding = "base64"
        #: Every request and sub-request, in arrival order.
        self.requests: list[RequestRecord] = []
        #: The Authorization header of every HTTP request that carried one.
        self.authorizations: list[str] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeGraphServer:
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

    def __enter__(self) -> FakeGraphServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The Graph base URL, e.g. http://127.0.0.1:50123/v1.0."""
        if self._http is None:
            raise RuntimeError("the fake Graph server is not started; call start() first")
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}{API_ROOT}"

    # -- test API ----------------------------------------------------------------

    def add_mailbox(self, upn: str) -> None:
        """Create a mailbox with the well-known folders msgfolderroot, inbox, deleteditems and the like."""
        key = upn.lower()
        with self._lock:
            if key in self._mailboxes:
                raise ValueError(f"mailbox {upn!r} exists already")
            mailbox = _Mailbox(upn=key)
            ids: dict[str, str] = {}
            for well_known, name, parent in WELL_KNOWN_FOLDERS:
                folder = _Folder(
                    id=self._new_id("AAMkAF", key),
                    display_name=name,
                    parent_id=ids[parent] if parent else None,
                    well_known=well_known,
                )
                ids[well_known] = folder.id
                mailbox.folders[folder.id] = folder
            self._mailboxes[key] = mailbox

    def drop(self, upn: str, folder: str, mime: bytes, *, categories: list[str] | None = None) -> str:
        """Put a message into a folder, as a user's drag and drop would, and return its immutable id.

        `folder` is a folder id, a well-known name ("inbox"), or a path of
        display names below the top of information store ("CRM-arkiv/Behandlet").
        """
        headers = BytesHeaderParser(policy=policy.default).parsebytes(mime)
        with self._lock:
            mailbox = self._mailbox(upn)
            target = self._folder_by_reference(mailbox, folder)
            message = _Message(
                key=next(self._counter),
                immutable_id=self._new_id("AAkALg", mailbox.upn),
                rest_id=self._new_id("AAMkAG", mailbox.upn),
                folder_id=target.id,
                mime=mime,
                subject=str(headers.get("Subject", "")),
                internet_message_id=str(headers["Message-ID"]).strip() if headers["Message-ID"] else None,
                received=datetime.now(UTC).replace(microsecond=0),
                change_key=self._new_change_key(),
                categories=list(categories or []),
            )
            mailbox.messages[message.key] = message
            self._log_change(mailbox, "added", message)
            return message.immutable_id

    def folders(self, upn: str) -> list[FolderInfo]:
        """Return every folder below the top of information store, parents before children."""
        with self._lock:
            mailbox = self._mailbox(upn)
            result: list[FolderInfo] = []
            self._collect_folders(mailbox, self._well_known(mailbox, "msgfolderroot"), "", result)
            return result

    def items(self, upn: str, folder: str) -> list[MessageInfo]:
        """Return the messages in a folder (id, well-known name or display-name path), oldest first."""
        with self._lock:
            mailbox = self._mailbox(upn)
            target = self._folder_by_reference(mailbox, folder)
            return [
                MessageInfo(
                    id=message.immutable_id,
                    rest_id=message.rest_id,
                    subject=message.subject,
                    internet_message_id=message.internet_message_id,
                    categories=list(message.categories),
                    mime=message.mime,
                )
                for message in mailbox.messages.values()
                if message.folder_id == target.id
            ]

    def break_mime(self, upn: str, message_id: str, status: int = 500, code: str = "ErrorCorruptData") -> None:
        """Make `$value` of this message return `status` with error `code` from now on."""
        with self._lock:
            mailbox = self._mailbox(upn)
            message = self._message_by_id(mailbox, message_id)
            if message is None:
                raise KeyError(f"mailbox {upn!r} has no message {message_id!r}")
            message.mime_error = (status, code)

    def set_categories(self, upn: str, message_id: str, categories: list[str]) -> None:
        """Replace a message's categories as a user in Outlook would: the message gets a new change key."""
        with self._lock:
            mailbox = self._mailbox(upn)
            message = self._message_by_id(mailbox, message_id)
            if message is None:
                raise KeyError(f"mailbox {upn!r} has no message {message_id!r}")
            message.categories = list(categories)
            message.change_key = self._new_change_key()
            self._log_change(mailbox, "updated", message)

    def remove_folder(self, upn: str, folder: str) -> None:
        """Delete a folder below the top of information store with its messages and subfolders."""
        with self._lock:
            mailbox = self._mailbox(upn)
            target = self._folder_by_reference(mailbox, folder)
            if target.well_known is not None:
                raise ValueError(f"well-known folder {folder!r} cannot be removed")
            doomed = {target.id}
            while True:
                more = {f.id for f in mailbox.folders.values() if f.parent_id in doomed} - doomed
                if not more:
                    break
                doomed |= more
            for message in [m for m in mailbox.messages.values() if m.folder_id in doomed]:
                del mailbox.messages[message.key]
                self._log_change(mailbox, "removed", message)
            for folder_id in doomed:
                del mailbox.folders[folder_id]

    def reset_sync_states(self, upn: str) -> None:
        """Forget every delta token of the mailbox, as Exchange does when it evicts sync states."""
        with self._lock:
            self._mailbox(upn).sync_generation += 1

    def fail_next(
        self,
        kind: Fault | str,
        count: int = 1,
        match: str | None = None,
        *,
        retry_after: int = 2,
        delay: float = 1.0,
    ) -> None:
        """Fail the next `count` requests or sub-requests whose target contains `match` with `kind`.

        The target is "METHOD /path?query" below /v1.0, e.g.
        "GET /users/kari@example.test/messages/AAk…/$value"; `match=None`
        matches every request, the `$batch` envelope included. `retry_after`
        (seconds) goes into the Retry-After header of 429, 503 and 504, and
        `delay` (seconds) is how long a slow response is held back.
        """
        with self._lock:
            self._faults.append(_PendingFault(Fault(kind), count, match, retry_after, delay))

    def max_concurrency(self, upn: str) -> int:
        """Return the highest number of requests that were in flight at once for the mailbox."""
        with self._lock:
            return self._peak.get(upn.lower(), 0)

    def clear_requests(self) -> None:
        """Forget the request log and the concurrency peaks, so a test can assert on what follows."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self._peak.clear()

    # -- request handling ----------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw_body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        if parts.path != API_ROOT and not parts.path.startswith(API_ROOT + "/"):
            message = f"No API version root in {parts.path!r}; use {API_ROOT}/…"
            handler.send_reply(_error(404, "ResourceNotFound", message))
            return
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            handler.send_reply(_error(400, "BadRequest", "The request body is not valid JSON."))
            return
        headers = {name.lower(): value for name, value in handler.headers.items()}
        call = _parse_call(
            method,
            parts.path[len(API_ROOT):] or "/",
            parts.query,
            headers,
            tuple(_split_prefer(handler.headers.get_all("Prefer") or [])),
            body,
            batched=False,
        )

        authorization = handler.headers.get("Authorization", "")
        with self._lock:
            if authorization:
                self.authorizations.append(authorization)
        if not self._authorized(authorization):
            self._record(call, self._mailbox_of(call), None)
            handler.send_reply(
                _error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
            )
            return

        if call.segments == ["$batch"]:
            reply = self._run_batch(call)
        else:
            reply = self._execute(call)
        if reply is None:
            handler.close_connection = True
            return
        handler.send_reply(reply)

    def _authorized(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self.token_checker(token.strip()) if self.token_checker is not None else True

    def _execute(self, call: _Call) -> _Reply | None:
        """Carry out one request or sub-request; None means the connection is to be dropped."""
        mailbox = self._mailbox_of(call)
        with self._lock:
            concurrency = self._enter(mailbox)
            self._record(call, mailbox, concurrency)
            pending = self._take_fault(call)
        try:
            if pending is not None:
                if pending.fault is Fault.DROP:
                    return None
                if pending.fault is Fault.SLOW:
                    time.sleep(pending.delay)
                else:
                    return _fault_reply(pending)
            if self.concurrency_limit is not None and concurrency is not None and concurrency > self.concurrency_limit:
                return _error(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            if self.latency:
                time.sleep(self.latency)
            return self._route(call)
        finally:
            # Leaving before the response is written keeps a client that sends
            # its next request right after this response from being counted twice.
            with self._lock:
                self._leave(mailbox)

    def _enter(self, mailbox: str | None) -> int | None:
        if mailbox is None:
            return None
        self._in_flight[mailbox] = self._in_flight.get(mailbox, 0) + 1
        self._peak[mailbox] = max(self._peak.get(mailbox, 0), self._in_flight[mailbox])
        return self._in_flight[mailbox]

    def _leave(self, mailbox: str | None) -> None:
        if mailbox is not None:
            self._in_flight[mailbox] -= 1

    def _record(self, call: _Call, mailbox: str | None, concurrency: int | None) -> None:
        with self._lock:
            self.requests.append(
                RequestRecord(call.method, call.path, call.raw_query, mailbox, concurrency, call.batched, call.prefer)
            )

    def _take_fault(self, call: _Call) -> _PendingFault | None:
        for pending in self._faults:
            if call.batched and pending.fault is Fault.DROP:
                continue
            if pending.match is not None and pending.match not in call.target:
                continue
            pending.remaining -= 1
            if pending.remaining <= 0:
                self._faults.remove(pending)
            return pending
        return None

    @staticmethod
    def _mailbox_of(call: _Call) -> str | None:
        if len(call.segments) >= 2 and call.segments[0].lower() == "users":
            return call.segments[1].lower()
        return None

    # -- $batch --------------------------------------------------------------------

    def _run_batch(self, call: _Call) -> _Reply | None:
        if call.method != "POST":
            return _error(405, "BadRequest", "$batch accepts POST only.")
        requests = call.body.get("requests") if isinstance(call.body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "BadRequest", "A $batch body needs a non-empty 'requests' array.")
        if len(requests) > MAX_BATCH_REQUESTS:
            return _error(
                400,
                "BadRequest",
                f"A $batch may carry at most {MAX_BATCH_REQUESTS} requests; this one has {len(requests)}.",
            )
        try:
            sub_calls = [_parse_sub_request(request) for request in requests]
        except ValueError as exc:
            return _error(400, "BadRequest", str(exc))
        ids = [sub_id for sub_id, _, _ in sub_calls]
        if len(set(ids)) != len(ids):
            return _error(400, "BadRequest", "The ids of the requests in a $batch must be unique.")

        mailboxes = {self._mailbox_of(sub) for _, sub, _ in sub_calls}
        envelope_mailbox = mailboxes.pop() if len(mailboxes) == 1 else None
        with self._lock:
            self._record(call, envelope_mailbox, None)
            pending = self._take_fault(call)
        if pending is not None:
            if pending.fault is Fault.DROP:
                return None
            if pending.fault is Fault.SLOW:
                time.sleep(pending.delay)
            else:
                return _fault_reply(pending)

        if any(depends_on for _, _, depends_on in sub_calls):
            responses = self._run_in_order(sub_calls)
        else:
            with ThreadPoolExecutor(max_workers=BATCH_PARALLELISM) as pool:
                futures = [pool.submit(self._sub_response, sub_id, sub) for sub_id, sub, _ in sub_calls]
                # Graph may list responses in any order, so finishing order keeps clients honest about matching ids.
                responses = sorted((f.result() for f in futures), key=lambda r: r.pop("_finished"))
        return _Reply(200, {"responses": responses})

    def _run_in_order(self, sub_calls: list[tuple[str, _Call, list[str]]]) -> list[dict[str, Any]]:
        statuses: dict[str, int] = {}
        responses = []
        for sub_id, sub, depends_on in sub_calls:
            failed = [d for d in depends_on if not 200 <= statuses.get(d, 424) < 300]
            if failed:
                reply = _error(424, "FailedDependency", f"Request {failed[0]} that this request depends on failed.")
                response = _sub_response_body(sub_id, reply, self.batch_body_encoding)
            else:
                response = self._sub_response(sub_id, sub)
                response.pop("_finished")
            statuses[sub_id] = response["status"]
            responses.append(response)
        return responses

    def _sub_response(self, sub_id: str, sub: _Call) -> dict[str, Any]:
        reply = self._execute(sub)
        if reply is None:  # pragma: no cover - DROP never matches a sub-request
            reply = _error(500, "InternalServerError", "The fake dropped a sub-request.")
        response = _sub_response_body(sub_id, reply, self.batch_body_encoding)
        response["_finished"] = time.monotonic()
        return response

    # -- routing -------------------------------------------------------------------

    def _route(self, call: _Call) -> _Reply:
        segments = call.segments
        if len(segments) < 3 or segments[0].lower() != "users":
            return _unsupported(call)
        with self._lock:
            mailbox = self._mailboxes.get(segments[1].lower())
            if mailbox is None:
                return _error(404, "ErrorInvalidUser", f"The requested user '{segments[1]}' is invalid.")
            rest = [segments[2].lower(), *segments[3:]]
            method = call.method

            if rest[0] == "mailfolders" and len(rest) >= 2:
                folder = self._folder_by_id_or_name(mailbox, rest[1])
                if folder is None:
                    return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
                tail = [s.lower() for s in rest[2:]]
                if tail == [] and method == "GET":
                    return _Reply(200, self._folder_json(mailbox, folder, call))
                if tail == ["childfolders"] and method == "GET":
                    return self._list_child_folders(mailbox, folder, call)
                if tail == ["childfolders"] and method == "POST":
                    return self._create_child_folder(mailbox, folder, call)
                if len(tail) == 2 and tail[0] == "messages" and tail[1] in _DELTA_SEGMENTS and method == "GET":
                    return self._delta(mailbox, folder, call)
                return _unsupported(call)

            if rest[0] == "messages" and len(rest) >= 2:
                message = self._message_by_id(mailbox, rest[1])
                if message is None:
                    return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
                tail = [s.lower() for s in rest[2:]]
                if tail == [] and method == "GET":
                    return _Reply(200, self._message_json(mailbox, message, call, _selected(call.query)))
                if tail == [] and method == "PATCH":
                    return self._patch_message(mailbox, message, call)
                if tail == [] and method == "DELETE":
                    del mailbox.messages[message.key]
                    self._log_change(mailbox, "removed", message)
                    return _Reply(204)
                if tail == ["$value"] and method == "GET":
                    return self._mime(message)
                if tail == ["move"] and method == "POST":
                    return self._move_message(mailbox, message, call)
            return _unsupported(call)

    # -- folders ---------------------------------------------------------------------

    def _list_child_folders(self, mailbox: _Mailbox, parent: _Folder, call: _Call) -> _Reply:
        children = self._children(mailbox, parent)
        filter_text = call.query.get("$filter")
        if filter_text is not None:
            matched = _DISPLAY_NAME_FILTER.match(filter_text)
            if matched is None:
                message = f"The fake supports only $filter=displayName eq '…', not {filter_text!r}."
                return _error(400, "BadRequest", message)
            wanted = matched.group(1).replace("''", "'").casefold()
            children = [f for f in children if f.display_name.casefold() == wanted]
        return _Reply(200, {"value": [self._folder_json(mailbox, f, call) for f in children]})

    def _create_child_folder(self, mailbox: _Mailbox, parent: _Folder, call: _Call) -> _Reply:
        name = call.body.get("displayName") if isinstance(call.body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return _error(400, "ErrorInvalidRequest", "A new folder needs a non-empty displayName.")
        if any(f.display_name.casefold() == name.casefold() for f in self._children(mailbox, parent)):
            return _error(409, "ErrorFolderExists", "A folder with the specified name already exists.")
        folder = _Folder(id=self._new_id("AAMkAF", mailbox.upn), display_name=name, parent_id=parent.id)
        mailbox.folders[folder.id] = folder
        return _Reply(201, self._folder_json(mailbox, folder, call))

    def _folder_json(self, mailbox: _Mailbox, folder: _Folder, call: _Call) -> dict[str, Any]:
        contents = [m for m in mailbox.messages.values() if m.folder_id == folder.id]
        full: dict[str, Any] = {
            "id": folder.id,
            "displayName": folder.display_name,
            "parentFolderId": folder.parent_id,
            "childFolderCount": len(self._children(mailbox, folder)),
            "unreadItemCount": 0,
            "totalItemCount": len(contents),
        }
        wanted = _selected(call.query)
        if wanted is None:
            return full
        return {name: value for name, value in full.items() if name == "id" or name in wanted}

    # -- messages ----------------------------------------------------------------------

    def _message_json(
        self, mailbox: _Mailbox, message: _Message, call: _Call, wanted: tuple[str, ...] | None
    ) -> dict[str, Any]:
        full: dict[str, Any] = {
            "subject": message.subject,
            "internetMessageId": message.internet_message_id,
            "receivedDateTime": message.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "categories": list(message.categories),
            "parentFolderId": message.folder_id,
        }
        body: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{message.change_key}"',
            "id": message.immutable_id if call.immutable_ids else message.rest_id,
        }
        for name in MESSAGE_PROPERTIES:
            if wanted is None or name in wanted:
                body[name] = full[name]
        return body

    def _patch_message(self, mailbox: _Mailbox, message: _Message, call: _Call) -> _Reply:
        if not isinstance(call.body, dict) or not call.body:
            return _error(400, "ErrorInvalidRequest", "PATCH needs a JSON object with the properties to change.")
        unsupported = set(call.body) - {"categories", "subject"}
        if unsupported:
            return _error(400, "ErrorInvalidRequest", f"The fake cannot change {sorted(unsupported)}.")
        categories = call.body.get("categories", message.categories)
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            return _error(400, "ErrorInvalidRequest", "categories must be an array of strings.")
        if_match = call.headers.get("if-match")
        if if_match is not None and if_match not in ("*", f'W/"{message.change_key}"'):
            return _error(
                412,
                "ErrorIrresolvableConflict",
                "The send or update operation could not be performed because the change key passed in the request "
                "does not match the current change key for the item.",
            )
        message.categories = list(categories)
        message.subject = str(call.body.get("subject", message.subject))
        message.change_key = self._new_change_key()
        self._log_change(mailbox, "updated", message)
        return _Reply(200, self._message_json(mailbox, message, call, None))

    def _move_message(self, mailbox: _Mailbox, message: _Message, call: _Call) -> _Reply:
        destination_id = call.body.get("destinationId") if isinstance(call.body, dict) else None
        destination = self._folder_by_id_or_name(mailbox, destination_id) if isinstance(destination_id, str) else None
        if destination is None:
            return _error(404, "ErrorItemNotFound", f"The destination folder {destination_id!r} was not found.")
        self._log_change(mailbox, "removed", message)
        message.folder_id = destination.id
        # Exchange gives a moved item a new default id; the immutable id stays.
        message.rest_id = self._new_id("AAMkAG", mailbox.upn)
        message.change_key = self._new_change_key()
        self._log_change(mailbox, "added", message)
        return _Reply(201, self._message_json(mailbox, message, call, None))

    @staticmethod
    def _mime(message: _Message) -> _Reply:
        if message.mime_error is not None:
            status, code = message.mime_error
            return _error(status, code, "The message content cannot be read.")
        # NOTE: the Content-Type Graph sends for $value was not checked.
        return _Reply(200, message.mime, content_type="message/rfc822")

    # -- delta ---------------------------------------------------------------------------

    def _delta(self, mailbox: _Mailbox, folder: _Folder, call: _Call) -> _Reply:
        if "$skiptoken" in call.query or "$deltatoken" in call.query:
            is_skip = "$skiptoken" in call.query
            token = _decode_token(call.query["$skiptoken" if is_skip else "$deltatoken"])
            if (
                token is None
                or token.get("generation") != mailbox.sync_generation
                or token.get("folder") != folder.id
                or not 0 <= token.get("end", -1) <= len(mailbox.changes)
            ):
                return _error(410, "syncStateNotFound", "The sync state generation is not found or has expired.")
            select = tuple(token["select"]) if token.get("select") is not None else None
            if is_skip:
                start, end, offset = token["start"], token["end"], token["offset"]
            else:
                start, end, offset = token["end"], len(mailbox.changes), 0
        else:
            select = _selected(call.query)
            start, end, offset = 0, len(mailbox.changes), 0

        entries = self._delta_entries(mailbox, folder, start, end, call, select)
        page_size = call.max_page_size or DEFAULT_DELTA_PAGE_SIZE
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/$metadata#Collection(message)",
            "value": entries[offset : offset + page_size],
        }
        # Graph's own links use OData key segments; clients must follow them as they are.
        user = quote(mailbox.upn, safe="@")
        link = f"{self.base_url}/users('{user}')/mailFolders('{folder.id}')/messages/microsoft.graph.delta()"
        common = {"generation": mailbox.sync_generation, "folder": folder.id, "select": select}
        if offset + page_size < len(entries):
            skip_token = _encode_token({**common, "start": start, "end": end, "offset": offset + page_size})
            body["@odata.nextLink"] = f"{link}?$skiptoken={skip_token}"
        else:
            delta_token = _encode_token({**common, "end": end})
            body["@odata.deltaLink"] = f"{link}?$deltatoken={delta_token}"
        applied = [f"odata.maxpagesize={page_size}"] if call.max_page_size else []
        if call.immutable_ids:
            applied.append('IdType="ImmutableId"')
        headers = {"Preference-Applied": ", ".join(applied)} if applied else {}
        return _Reply(200, body, headers)

    def _delta_entries(
        self,
        mailbox: _Mailbox,
        folder: _Folder,
        start: int,
        end: int,
        call: _Call,
        select: tuple[str, ...] | None,
    ) -> list[dict[str, Any]]:
        """Return the net changes to `folder` between two change-log positions, in first-change order."""
        before = _membership(mailbox.changes[:start], folder.id)
        after = _membership(mailbox.changes[:end], folder.id)
        # A dict keeps the order of first insertion, so the entries follow the
        # first change of each message while the value is its last change.
        last_change: dict[int, _Change] = {}
        for change in mailbox.changes[start:end]:
            if change.folder_id == folder.id:
                last_change[change.key] = change

        entries = []
        for key, change in last_change.items():
            message = mailbox.messages.get(key)
            if after.get(key) and message is not None:
                entries.append(self._message_json(mailbox, message, call, select))
            elif before.get(key):
                entries.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": change.immutable_id if call.immutable_ids else change.rest_id,
                        "@removed": {"reason": "deleted"},
                    }
                )
        return entries

    # -- state helpers -----------------------------------------------------------------

    def _log_change(self, mailbox: _Mailbox, kind: str, message: _Message) -> None:
        mailbox.changes.append(_Change(kind, message.key, message.folder_id, message.rest_id, message.immutable_id))

    def _new_id(self, prefix: str, upn: str) -> str:
        # Graph ids are long URL-safe base64 strings, often ending in "=".
        raw = f"{next(self._counter):010d}:{upn}".encode()
        return prefix + base64.urlsafe_b64encode(raw).decode().rstrip("=") + "AAA="

    def _new_change_key(self) -> str:
        return "CQAAABYAAAA" + base64.b64encode(f"{next(self._counter):08d}".encode()).decode()

    def _mailbox(self, upn: str) -> _Mailbox:
        try:
            return self._mailboxes[upn.lower()]
        except KeyError:
            raise KeyError(f"no mailbox {upn!r}; call add_mailbox() first") from None

    @staticmethod
    def _well_known(mailbox: _Mailbox, name: str) -> _Folder:
        for folder in mailbox.folders.values():
            if folder.well_known == name:
                return folder
        raise KeyError(f"mailbox {mailbox.upn!r} has no well-known folder {name!r}")

    def _folder_by_id_or_name(self, mailbox: _Mailbox, reference: str) -> _Folder | None:
        if reference in mailbox.folders:
            return mailbox.folders[reference]
        for folder in mailbox.folders.values():
            if folder.well_known is not None and folder.well_known == reference.lower():
                return folder
        return None

    def _folder_by_reference(self, mailbox: _Mailbox, reference: str) -> _Folder:
        found = self._folder_by_id_or_name(mailbox, reference)
        if found is not None:
            return found
        folder = self._well_known(mailbox, "msgfolderroot")
        for name in reference.strip("/").split("/"):
            matches = [f for f in self._children(mailbox, folder) if f.display_name.casefold() == name.casefold()]
            if not matches:
                raise KeyError(f"mailbox {mailbox.upn!r} has no folder {reference!r}")
            folder = matches[0]
        return folder

    @staticmethod
    def _children(mailbox: _Mailbox, parent: _Folder) -> list[_Folder]:
        return [f for f in mailbox.folders.values() if f.parent_id == parent.id]

    @staticmethod
    def _message_by_id(mailbox: _Mailbox, message_id: str) -> _Message | None:
        for message in mailbox.messages.values():
            if message_id in (message.immutable_id, message.rest_id):
                return message
        return None

    def _collect_folders(self, mailbox: _Mailbox, parent: _Folder, prefix: str, result: list[FolderInfo]) -> None:
        for child in self._children(mailbox, parent):
            path = f"{prefix}{child.display_name}"
            result.append(FolderInfo(child.id, child.display_name, parent.id, path))
            self._collect_folders(mailbox, child, path + "/", result)


# -- parsing ---------------------------------------------------------------------------


def _parse_call(
    method: str,
    path: str,
    raw_query: str,
    headers: dict[str, str],
    prefer: tuple[str, ...],
    body: Any,
    *,
    batched: bool,
) -> _Call:
    return _Call(
        method=method.upper(),
        path=path,
        segments=_segments(path),
        raw_query=raw_query,
        query=dict(parse_qsl(raw_query, keep_blank_values=True)),
        headers=headers,
        prefer=prefer,
        body=body,
        batched=batched,
    )


def _segments(path: str) -> list[str]:
    """Split a path into decoded segments, with OData keys ("users('x')") as segments of their own."""
    result: list[str] = []
    for raw in path.strip("/").split("/"):
        segment = unquote(raw)
        keyed = _ODATA_KEY_SEGMENT.match(segment)
        if keyed:
            result.extend([keyed.group(1), keyed.group(2).replace("''", "'")])
        elif segment:
            result.append(segment)
    return result


def _parse_sub_request(request: Any) -> tuple[str, _Call, list[str]]:
    if not isinstance(request, dict):
        raise ValueError("Each $batch request must be a JSON object.")
    sub_id, method, url = request.get("id"), request.get("method"), request.get("url")
    if not isinstance(sub_id, str) or not sub_id:
        raise ValueError("Each $batch request needs a string id.")
    if not isinstance(method, str) or not isinstance(url, str):
        raise ValueError(f"$batch request {sub_id!r} needs a method and a url.")
    if "://" in url:
        raise ValueError(f"$batch request {sub_id!r} has an absolute url; give it relative to the version root.")
    headers = request.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError(f"$batch request {sub_id!r} has headers that are not an object.")
    depends_on = request.get("dependsOn") or []
    if not isinstance(depends_on, list):
        raise ValueError(f"$batch request {sub_id!r} has a dependsOn that is not an array.")
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    path, _, raw_query = ("/" + url.lstrip("/")).partition("?")
    prefer = tuple(_split_prefer([lowered["prefer"]])) if "prefer" in lowered else ()
    call = _parse_call(method, path, raw_query, lowered, prefer, request.get("body"), batched=True)
    return sub_id, call, [str(d) for d in depends_on]


def _split_prefer(values: list[str]) -> list[str]:
    """Split Prefer header values into preferences at commas outside quotes (RFC 7240)."""
    preferences: list[str] = []
    for value in values:
        current, quoted = "", False
        for char in value:
            if char == '"':
                quoted = not quoted
            if char == "," and not quoted:
                preferences.append(current.strip())
                current = ""
            else:
                current += char
        if current.strip():
            preferences.append(current.strip())
    return [p for p in preferences if p]


def _selected(query: Mapping[str, str]) -> tuple[str, ...] | None:
    select = query.get("$select")
    if select is None:
        return None
    return tuple(name.strip() for name in select.split(",") if name.strip())


def _membership(changes: list[_Change], folder_id: str) -> dict[int, bool]:
    """Return, per message key, whether the message was in the folder after `changes`."""
    present: dict[int, bool] = {}
    for change in changes:
        if change.folder_id != folder_id:
            continue
        if change.kind == "added":
            present[change.key] = True
        elif change.kind == "removed":
            present[change.key] = False
    return present


def _encode_token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any] | None:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


# -- responses ---------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Reply:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "request-id": str(uuid.uuid4()),
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            },
        }
    }
    return _Reply(status, body, dict(headers or {}))


def _unsupported(call: _Call) -> _Reply:
    return _error(400, "BadRequest", f"The fake Graph server does not implement {call.method} {call.path}.")


def _fault_reply(pending: _PendingFault) -> _Reply:
    retry_after = {"Retry-After": str(pending.retry_after)}
    if pending.fault is Fault.THROTTLED:
        return _error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", retry_after)
    if pending.fault is Fault.UNAVAILABLE:
        return _error(503, "ServiceNotAvailable", "The service is temporarily unavailable.", retry_after)
    if pending.fault is Fault.GATEWAY_TIMEOUT:
        return _error(504, "GatewayTimeout", "The gateway timed out.", retry_after)
    if pending.fault is Fault.UNAUTHORIZED:
        return _error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
    if pending.fault is Fault.SYNC_STATE_NOT_FOUND:
        return _error(410, "syncStateNotFound", "The sync state generation is not found or has expired.")
    if pending.fault is Fault.NOT_FOUND:
        return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    if pending.fault is Fault.ACCESS_DENIED:
        return _error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    if pending.fault is Fault.SERVER_ERROR:
        return _error(500, "InternalServerError", "An internal server error occurred.")
    raise AssertionError(f"fault {pending.fault} has no HTTP response")


def _sub_response_body(sub_id: str, reply: _Reply, encoding: str) -> dict[str, Any]:
    response: dict[str, Any] = {"id": sub_id, "status": reply.status, "headers": dict(reply.headers)}
    if isinstance(reply.body, bytes):
        response["headers"]["Content-Type"] = reply.content_type
        if encoding == "text":
            response["body"] = reply.body.decode("utf-8", errors="replace")
        else:
            response["body"] = base64.b64encode(reply.body).decode()
    elif reply.body is not None:
        response["headers"]["Content-Type"] = "application/json"
        response["body"] = reply.body
    return response


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK, about 40 ms per request.
    disable_nagle_algorithm = True
    fake: FakeGraphServer

    def do_GET(self) -> None:  # noqa: N802 - names fixed by BaseHTTPRequestHandler
        self.fake._handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.fake._handle(self, "POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self.fake._handle(self, "PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.fake._handle(self, "DELETE")

    def send_reply(self, reply: _Reply) -> None:
        if isinstance(reply.body, bytes):
            payload = reply.body
        elif reply.body is not None:
            payload = json.dumps(reply.body).encode()
        else:
            payload = b""
        try:
            self.send_response(reply.status)
            if reply.body is not None:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up first, as it does after a slow response.
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed by the base class
        # Tests read `FakeGraphServer.requests`; access lines on stderr would only add noise.
        return
