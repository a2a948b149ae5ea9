"""The mailbox backend for Microsoft Graph (Exchange Online), on plain HTTP with requests.

One `GraphBackend` serves one mailbox. It finds or creates the sync folders,
reads each folder's changes with message delta, fetches the MIME of new
messages through `$batch`, and writes categories and moves through `$batch`.
Access tokens come from an injected token provider, such as an msal
client-credentials flow; this module never imports msal.

Apart from one token refresh after HTTP 401 and a few waits for throttled
`$batch` sub-requests, every call makes a single attempt: the sync loop
retries `TransientBackendError` and reads its `retry_after`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from syncd import metrics, tls
from syncd.backends.base import (
    Batch,
    FeedbackRequest,
    Folder,
    FolderReport,
    Item,
    check_categories,
)
from syncd.backends.tagging import Known, plan_writes, wanted_categories, write_in_rounds
from syncd.backends.graph_errors import (
    THROTTLING_STATUSES,
    describe_failure,
    error_for_response,
    error_for_status,
    error_for_token_result,
    graph_errors,
    malformed_response_error,
    retry_after_seconds,
)
from syncd.errors import (
    BackendAuthError,
    ConfigError,
    PermanentBackendError,
    SyncStateInvalidError,
)

log = logging.getLogger("syncd.graph")

GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"

#: Makes Graph return ids that survive moves inside the mailbox.
IMMUTABLE_ID_PREFERENCE = 'IdType="ImmutableId"'

#: Properties read per message in a delta round; `$select` is baked into the later links.
DELTA_SELECT = "id,internetMessageId,subject,receivedDateTime,categories"

#: Maximum number of sub-requests in one `$batch`, per Graph's JSON batching documentation.
MAX_BATCH_REQUESTS = 20

#: Sub-requests of one `$batch` that Graph runs at the same time when none has `dependsOn`.
BATCH_PARALLELISM = 4

#: Exchange Online's limit of concurrent requests per app and mailbox.
MAX_MAILBOX_CONCURRENCY = 4

#: Largest delta page size syncd requests. Graph documents no maximum for message delta.
MAX_DELTA_PAGE = 1000

#: Times the throttled sub-requests of one `$batch` are sent again before the call fails.
BATCH_THROTTLE_RETRIES = 3

#: Seconds to wait for a throttled sub-request without Retry-After; doubled on each retry.
DEFAULT_THROTTLE_WAIT = 2.0

#: Seconds before the provider's expiry at which a cached access token is replaced.
TOKEN_EXPIRY_MARGIN = 60

#: Item ids per folder that the backend remembers having tagged, to skip their category updates.
MAX_REMEMBERED_TAGS = 10_000

POST_ACTIONS = ("keep", "move", "delete")

TokenProvider = Callable[[], Mapping[str, Any]]
"""Returns an msal-style token result: access_token and expires_in (seconds), or error and error_description."""


# -- access tokens and request slots --------------------------------------------------


class AccessTokens:
    """Access tokens from a token provider, each kept until TOKEN_EXPIRY_MARGIN before it expires."""

    def __init__(self, provider: TokenProvider, mailbox: str) -> None:
        self._provider = provider
        self._mailbox = mailbox
        self._lock = threading.Lock()
        self._token: str | None = None
        self._valid_until = 0.0

    def current(self) -> str:
        """Return the cached token, or a new one when none is cached or it is about to expire."""
        with self._lock:
            if self._token is not None and time.monotonic() < self._valid_until:
                return self._token
            return self._fetch()

    def replace(self, rejected: str) -> str:
        """Return a new token in place of `rejected`, unless another thread has already replaced it."""
        with self._lock:
            if self._token is not None and self._token != rejected and time.monotonic() < self._valid_until:
                return self._token
            # A provider with a cache of its own (msal) must forget the
            # rejected token, or it would hand the same one out again.
            invalidate = getattr(self._provider, "invalidate", None)
            if invalidate is not None:
                invalidate(rejected)
            return self._fetch()

    def _fetch(self) -> str:
        with graph_errors(self._mailbox, "token request"):
            result = self._provider()
        token = result.get("access_token")
        if not isinstance(token, str) or not token:
            raise error_for_token_result(result, mailbox=self._mailbox)
        try:
            expires_in = int(result.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600
        lifetime = expires_in - TOKEN_EXPIRY_MARGIN if expires_in > TOKEN_EXPIRY_MARGIN else expires_in
        if lifetime <= 0:
            raise BackendAuthError(
                f"The token provider for mailbox {self._mailbox} returned a token that expires in "
                f"{expires_in} s; check the provider and the system clock.",
                mailbox=self._mailbox,
            )
        self._token = token
        self._valid_until = time.monotonic() + lifetime
        log.debug("Mailbox %s: new Graph access token, valid for %d s", self._mailbox, lifetime)
        return token


class RequestSlots:
    """A counting semaphore for the requests one mailbox has in flight at Graph.

    A `$batch` takes one slot per sub-request that Graph runs at the same
    time, because Exchange Online counts those against the mailbox's limit.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._condition = threading.Condition()

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        count = min(count, self.capacity)
        with self._condition:
            self._condition.wait_for(lambda: self._free >= count)
            self._free -= count
        try:
            yield
        finally:
            with self._condition:
                self._free += count
                self._condition.notify_all()


@dataclass(frozen=True)
class SubRequest:
    """One request inside a `$batch`; `url` is relative to the version root."""

    method: str
    url: str
    body: dict[str, Any] | None = None
    #: The entity tag a write is conditional on (If-Match), or None for an unconditional write.
    if_match: str | None = None


@dataclass(frozen=True)
class SubResponse:
    """One response inside a `$batch` response."""

    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# -- the backend ---------------------------------------------------------------------


class GraphBackend:
    """One Exchange Online mailbox through Microsoft Graph: sync folders, new items with their MIME, and feedback.

    `folder_names` are display names of sync folders directly below the top
    of information store. With `inbound`, the Inbox is the only sync folder.
    `categories` maps an outcome ("filed", "unmatched", "failed",
    "duplicate") to the Outlook category added to the message. `post_action`
    "move" moves a handled message into the subfolder `processed_folder_name`
    of its sync folder, and "delete" moves it to Deleted Items, where the
    user can still restore it. `batch_size` is the delta page size.
    `timeout` is in seconds per HTTP request. `max_concurrency` caps the
    requests in flight for this backend, sub-requests of a `$batch`
    included, at most 4. `sleep` waits out throttled `$batch` sub-requests.
    `verify` sets the check of Graph's TLS certificate (see `syncd.tls`) and
    applies to the session the backend builds, not to a `session` passed in.
    """

    kind = "graph"

    def __init__(
        self,
        mailbox: str,
        *,
        token_provider: TokenProvider,
        base_url: str = GRAPH_BASE_URL,
        folder_names: Sequence[str] = (),
        inbound: bool = False,
        categories: Mapping[str, str] | None = None,
        post_action: str = "keep",
        processed_folder_name: str | None = None,
        batch_size: int = 50,
        timeout: float = 60.0,
        max_concurrency: int = MAX_MAILBOX_CONCURRENCY,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        verify: tls.Verify = True,
    ) -> None:
        _check_settings(
            mailbox, base_url, folder_names, inbound, post_action, processed_folder_name,
            batch_size, timeout, max_concurrency,
        )
        self.mailbox = mailbox
        self._base_url = base_url.rstrip("/")
        self._user_path = f"/users/{quote(mailbox, safe='@')}"
        self._folder_names = list(folder_names)
        self._inbound = inbound
        self._categories = check_categories(categories or {})
        self._own_categories = frozenset(self._categories.values())
        self._post_action = post_action
        self._processed_folder_name = processed_folder_name
        self._batch_size = batch_size
        self._timeout = timeout
        self._sleep = sleep
        self._tokens = AccessTokens(token_provider, mailbox)
        self._slots = RequestSlots(max_concurrency)
        # Graph runs up to 4 sub-requests of a batch at once. With a lower cap,
        # a batch carries no more sub-requests than may run at once.
        self._batch_limit = MAX_BATCH_REQUESTS if max_concurrency >= BATCH_PARALLELISM else max_concurrency
        self._processed_folders: dict[str, str] = {}
        self._tagged: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: Entity tag and categories per message of the last fetched delta page, until its feedback.
        self._read_categories: Known = {}
        self._warned_undecodable = False

        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            tls.mount_adapter(session, verify, pool_maxsize=max_concurrency)
            session.hooks["response"].append(metrics.request_counter("graph", mailbox))
        self._session = session

    # -- folders ---------------------------------------------------------------

    def ensure_folders(self) -> list[FolderReport]:
        """Find the sync folders below the top of information store by name and create the missing ones.

        An inbound mailbox has one sync folder, its Inbox, which is never created.
        """
        if self._inbound:
            inbox = self._get_json(f"{self._user_path}/mailFolders/inbox?$select=id,displayName", action="Inbox lookup")
            return [FolderReport(Folder(key=inbox["id"], name=inbox.get("displayName") or "Inbox"), created=False)]

        reports = []
        for name in self._folder_names:
            found = self._find_child("msgfolderroot", name)
            if found is not None:
                reports.append(FolderReport(Folder(key=found, name=name), created=False))
                continue
            folder_id, is_new = self._create_child("msgfolderroot", name)
            if is_new:
                log.info("Created sync folder %r in mailbox %s", name, self.mailbox)
            reports.append(FolderReport(Folder(key=folder_id, name=name), created=is_new))
        return reports

    def ensure_subfolder(self, parent: Folder, name: str) -> FolderReport:
        """Find the mail folder `name` among the child folders of `parent`, creating it when missing."""
        found = self._find_child(parent.key, name)
        if found is not None:
            return FolderReport(Folder(key=found, name=name), created=False)
        folder_id, is_new = self._create_child(parent.key, name)
        if is_new:
            log.info("Created folder %r below %r in mailbox %s", name, parent.name, self.mailbox)
        return FolderReport(Folder(key=folder_id, name=name), created=is_new)

    def _find_child(self, parent: str, name: str) -> str | None:
        """Return the id of the child folder of `parent` named `name`, or None."""
        escaped = name.replace("'", "''")
        query = "$filter=" + quote(f"displayName eq '{escaped}'", safe="'") + "&$select=id,displayName"
        url: str | None = f"{self._user_path}/mailFolders/{_quote_id(parent)}/childFolders?{query}"
        while url is not None:
            page = self._get_json(url, action=f"lookup of folder {name!r}")
            for folder in page.get("value", []):
                # Exchange compares folder names without regard to case.
                if str(folder.get("displayName", "")).casefold() == name.casefold():
                    return str(folder["id"])
            url = self._checked_link(page.get("@odata.nextLink"), f"lookup of folder {name!r}")
        return None

    def _create_child(self, parent: str, name: str) -> tuple[str, bool]:
        """Create a mail folder under `parent`; return its id, with False when another client was quicker."""
        action = f"creation of folder {name!r}"
        response = self._send(
            "POST", f"{self._user_path}/mailFolders/{_quote_id(parent)}/childFolders",
            action=action, json_body={"displayName": name},
        )
        if response.status_code == 409:
            found = self._find_child(parent, name)
            if found is None:
                raise error_for_response(response, mailbox=self.mailbox, action=action)
            return found, False
        if not response.ok:
            raise error_for_response(response, mailbox=self.mailbox, action=action)
        return str(self._json(response, action)["id"]), True

    # -- new items ----------------------------------------------------------------

    def batches(
        self, folder: Folder, state: str | None, known: Callable[[str], bool] | None = None
    ) -> Iterator[Batch]:
        """Yield one batch per delta page, with the MIME of the messages new in it.

        `state` is the deltaLink of the last complete round. Only the last
        page's batch carries the new deltaLink: page links go stale, so a
        round that breaks off is replayed from the previous deltaLink.
        Removals are skipped, and so are repeats within the round and the
        category updates that this backend's own feedback causes.
        """
        action = f"delta of folder {folder.name!r}"
        if state is None:
            url = f"{self._user_path}/mailFolders/{_quote_id(folder.key)}/messages/delta?$select={DELTA_SELECT}"
        elif state.startswith(self._base_url + "/"):
            url = state
        else:
            raise SyncStateInvalidError(
                f"The stored sync state of folder {folder.name!r} in mailbox {self.mailbox} is not a deltaLink "
                f"of {self._base_url}; the folder will be synced from the start.",
                mailbox=self.mailbox,
            )

        seen: set[str] = set()
        prefer = (f"odata.maxpagesize={self._batch_size}",)
        while True:
            page = self._get_json(url, action=action, prefer=prefer)
            entries = page.get("value", [])
            new = self._new_messages(folder, entries, seen, known)
            log.debug(
                "Mailbox %s folder %r: delta page with %d changes, %d new messages",
                self.mailbox, folder.name, len(entries), len(new),
            )
            items = self._fetch_items(folder, new)

            next_link = self._checked_link(page.get("@odata.nextLink"), action)
            if next_link is not None:
                yield Batch(folder=folder, items=items, state=None)
                url = next_link
                continue
            delta_link = page.get("@odata.deltaLink")
            if not isinstance(delta_link, str) or not delta_link.startswith(self._base_url + "/"):
                raise PermanentBackendError(
                    f"Graph {action} for mailbox {self.mailbox} failed: the last page carried no deltaLink "
                    f"under {self._base_url}; check the Graph base URL.",
                    mailbox=self.mailbox,
                )
            yield Batch(folder=folder, items=items, state=delta_link)
            return

    def _new_messages(
        self, folder: Folder, entries: list[Any], seen: set[str], known: Callable[[str], bool] | None
    ) -> list[dict[str, Any]]:
        """Return the entries of a delta page that need their MIME fetched."""
        new = []
        for entry in entries:
            if not isinstance(entry, dict) or "@removed" in entry or not isinstance(entry.get("id"), str):
                continue
            item_id = entry["id"]
            # Graph may repeat a message within a round.
            if item_id in seen:
                continue
            if self._is_own_tagging(folder, item_id, entry):
                log.debug("Mailbox %s: skipped message %s, changed only by syncd's category", self.mailbox, item_id)
                continue
            if known is not None and known(item_id):
                log.debug("Mailbox %s: skipped message %s, recorded before", self.mailbox, item_id)
                continue
            seen.add(item_id)
            new.append(entry)
        return new

    def _is_own_tagging(self, folder: Folder, item_id: str, entry: Mapping[str, Any]) -> bool:
        """Return True for a message that this backend tagged in this folder and that still carries the tag.

        Graph reports a changed message the same way as a new one, so the
        category that feedback writes brings a message back in the next round.
        """
        if (folder.key, item_id) not in self._tagged:
            return False
        categories = entry.get("categories")
        return isinstance(categories, list) and any(c in self._own_categories for c in categories)

    def _fetch_items(self, folder: Folder, entries: list[dict[str, Any]]) -> list[Item]:
        # The delta page carries each message's categories (they are in
        # $select), so feedback appends to them without reading them again.
        # Feedback on a page comes before the next page is fetched, so only the
        # latest page's are kept.
        self._read_categories = {
            str(entry["id"]): _categories_of(entry) for entry in entries if isinstance(entry.get("categories"), list)
        }
        if not entries:
            return []
        requests_ = [SubRequest("GET", f"{self._message_path(e['id'])}/$value") for e in entries]
        responses = self._run_batch(requests_, action=f"MIME fetch in folder {folder.name!r}")
        return [
            self._item_from_response(folder, entry, response)
            for entry, response in zip(entries, responses, strict=True)
        ]

    def _item_from_response(self, folder: Folder, entry: Mapping[str, Any], response: SubResponse) -> Item:
        item_id = str(entry["id"])
        if response.ok:
            raw = _decoded_body(response.body)
            if raw is not None:
                return Item(folder=folder, item_id=item_id, raw=raw)
            return self._fetch_item_directly(folder, entry)
        error = self._item_failure(response.status, response.headers, response.body, "MIME fetch")
        return self._failed_item(folder, entry, f"$value failed: {error}")

    def _fetch_item_directly(self, folder: Folder, entry: Mapping[str, Any]) -> Item:
        """Fetch one message's MIME with its own GET, for a `$batch` body that was not base64."""
        # NOTE: Graph documents base64 for non-JSON bodies inside $batch
        # responses, but that was not checked against Exchange Online, so a
        # body in any other form costs one direct request.
        if not self._warned_undecodable:
            log.warning(
                "Mailbox %s: a $batch response carried MIME in a form other than base64; "
                "fetching such messages one by one", self.mailbox,
            )
            self._warned_undecodable = True
        item_id = str(entry["id"])
        response = self._send("GET", f"{self._message_path(item_id)}/$value", action="MIME fetch")
        if response.ok:
            return Item(folder=folder, item_id=item_id, raw=response.content)
        body = _json_or_text(response)
        error = self._item_failure(response.status_code, response.headers, body, "MIME fetch")
        return self._failed_item(folder, entry, f"$value failed: {error}")

    def _failed_item(self, folder: Folder, entry: Mapping[str, Any], error: str) -> Item:
        message_id = entry.get("internetMessageId")
        if message_id:
            error = f"{error} (Message-ID {message_id})"
        log.warning(
            "Mailbox %s: item %s in folder %r kept as failed: %s", self.mailbox, entry["id"], folder.name, error
        )
        return Item(folder=folder, item_id=str(entry["id"]), raw=None, error=error)

    def _item_failure(self, status: int, headers: Mapping[str, str], body: Any, action: str) -> str:
        """Describe a per-message failure, or raise when it concerns the whole mailbox.

        Throttling and rejected credentials are raised, because every other
        message would fail the same way; anything else is one message's problem.
        """
        if status in THROTTLING_STATUSES or status in (401, 403):
            raise error_for_status(status, headers, body, mailbox=self.mailbox, action=action)
        return describe_failure(status, body)

    # -- feedback -------------------------------------------------------------------

    def apply_feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackRequest]:
        """Append each outcome's category to the message's categories, then keep, move or delete it.

        Categories are read and written through `$batch`; a message that no
        longer exists counts as applied, because nothing is left to tell.
        """
        if not requests:
            return []
        by_item: dict[str, list[FeedbackRequest]] = {}
        for request in requests:
            by_item.setdefault(request.item_id, []).append(request)

        vanished, tagged = self._tag(by_item)
        if self._post_action == "keep":
            done = vanished + tagged
        else:
            done = vanished + self._post_process(tagged, by_item)
        return [request for item_id in done for request in by_item[item_id]]

    def _tag(self, by_item: dict[str, list[FeedbackRequest]]) -> tuple[list[str], list[str]]:
        """Write the categories and return the ids of vanished messages and of messages that now carry theirs.

        The categories of the delta page are reused, so feedback on a fresh
        page costs one PATCH per message. Each PATCH is conditional on the
        entity tag of that read (If-Match). When the user changed the message
        since, Graph returns 412 instead of replacing the user's categories,
        and the message is read and written again.
        """
        wanted = wanted_categories(by_item, self._categories)
        vanished: list[str] = []
        tagged = [item_id for item_id, names in wanted.items() if not names]
        pending = write_in_rounds(
            [item_id for item_id, names in wanted.items() if names],
            self._read_categories,
            lambda item_ids: self._read_message_categories(item_ids, vanished),
            lambda known: self._write_categories(known, wanted, vanished, tagged),
        )
        for item_id in pending:
            log.warning(
                "Mailbox %s: message %s changed while its categories were written; it is tried again on a later pass",
                self.mailbox, item_id,
            )

        for item_id in tagged:
            self._remember_tagged(by_item[item_id][0].folder_key, item_id)
        return vanished, tagged

    def _read_message_categories(self, item_ids: list[str], vanished: list[str]) -> Known:
        """Return the entity tag and categories of each readable message."""
        if not item_ids:
            return {}
        reads = self._run_batch(
            [SubRequest("GET", f"{self._message_path(i)}?$select=categories") for i in item_ids], action="category read"
        )
        read: Known = {}
        for item_id, response in zip(item_ids, reads, strict=True):
            if not self._settled_by_failure(item_id, response, "reading categories", vanished):
                read[item_id] = _categories_of(response.body if isinstance(response.body, dict) else {})
        return read

    def _write_categories(
        self, known: Known, wanted: dict[str, list[str]], vanished: list[str], tagged: list[str]
    ) -> list[str]:
        """Append the missing categories to the known ones; return the ids that another client changed first."""
        updates = plan_writes(known, wanted, tagged)
        if not updates:
            return []

        # NOTE: Exchange Online returns 412 ErrorIrresolvableConflict for a PATCH
        # with a stale change key, but whether it checks If-Match on messages
        # was not verified. Where it does not, a category the user set after
        # the delta page was read is replaced by this write.
        writes = self._run_batch(
            [
                SubRequest("PATCH", self._message_path(w.item_id), {"categories": w.categories}, if_match=w.version)
                for w in updates
            ],
            action="category write",
        )
        conflicted: list[str] = []
        for item_id, response in zip((w.item_id for w in updates), writes, strict=True):
            if response.status == 412:
                log.info(
                    "Mailbox %s: message %s changed since its categories were read; reading them again",
                    self.mailbox, item_id,
                )
                conflicted.append(item_id)
            elif not self._settled_by_failure(item_id, response, "writing categories", vanished):
                tagged.append(item_id)
        return conflicted

    def _post_process(self, item_ids: list[str], by_item: dict[str, list[FeedbackRequest]]) -> list[str]:
        """Move tagged messages to the processed folder or to Deleted Items; return the ids that are done."""
        if not item_ids:
            return []
        destinations: dict[str, str] = {}
        for item_id in item_ids:
            if self._post_action == "delete":
                destinations[item_id] = "deleteditems"
            else:
                destinations[item_id] = self._processed_folder(by_item[item_id][0].folder_key)

        moves = self._run_batch(
            [
                SubRequest("POST", f"{self._message_path(i)}/move", {"destinationId": destinations[i]})
                for i in item_ids
            ],
            action="move" if self._post_action == "move" else "move to Deleted Items",
        )
        done: list[str] = []
        missing_folders: dict[str, bool] = {}
        for item_id, response in zip(item_ids, moves, strict=True):
            destination = destinations[item_id]
            if response.status == 404 and destination != "deleteditems":
                # Graph returns 404 for a missing message and for a missing
                # destination, and only the first settles the request.
                if destination not in missing_folders:
                    missing_folders[destination] = not self._folder_exists(destination)
                if missing_folders[destination]:
                    self._forget_processed_folder(destination)
                    log.warning(
                        "Mailbox %s: processed-items folder %s no longer exists; message %s is moved on a later pass",
                        self.mailbox, destination, item_id,
                    )
                    continue
            if not self._settled_by_failure(item_id, response, "moving", done):
                done.append(item_id)
        return done

    def _processed_folder(self, folder_key: str) -> str:
        """Return the id of the processed-items folder under a sync folder, creating it on first use."""
        cached = self._processed_folders.get(folder_key)
        if cached is not None:
            return cached
        name = str(self._processed_folder_name)
        folder_id = self._find_child(folder_key, name)
        if folder_id is None:
            folder_id, _ = self._create_child(folder_key, name)
            log.info("Created folder %r for processed items in mailbox %s", name, self.mailbox)
        self._processed_folders[folder_key] = folder_id
        return folder_id

    def _forget_processed_folder(self, folder_id: str) -> None:
        for key in [k for k, v in self._processed_folders.items() if v == folder_id]:
            del self._processed_folders[key]

    def _folder_exists(self, folder_id: str) -> bool:
        url = f"{self._user_path}/mailFolders/{_quote_id(folder_id)}?$select=id"
        response = self._send("GET", url, action="folder lookup")
        if response.status_code == 404:
            return False
        if not response.ok:
            raise error_for_response(response, mailbox=self.mailbox, action="folder lookup")
        return True

    def _settled_by_failure(self, item_id: str, response: SubResponse, action: str, vanished: list[str]) -> bool:
        """Return True when `response` failed, and add the message to `vanished` when it no longer exists."""
        if response.ok:
            return False
        if response.status == 404:
            log.info("Mailbox %s: message %s no longer exists; skipped %s", self.mailbox, item_id, action)
            vanished.append(item_id)
            return True
        error = self._item_failure(response.status, response.headers, response.body, action)
        log.warning(
            "Mailbox %s: %s failed for message %s: %s; it is tried again on a later pass",
            self.mailbox, action, item_id, error,
        )
        return True

    def _remember_tagged(self, folder_key: str, item_id: str) -> None:
        self._tagged[(folder_key, item_id)] = None
        self._tagged.move_to_end((folder_key, item_id))
        while len(self._tagged) > MAX_REMEMBERED_TAGS:
            self._tagged.popitem(last=False)

    # -- HTTP --------------------------------------------------------------------------

    def _run_batch(self, requests: Sequence[SubRequest], *, action: str) -> list[SubResponse]:
        """Send sub-requests in `$batch` requests and return their responses in the same order."""
        responses: list[SubResponse] = []
        for start in range(0, len(requests), self._batch_limit):
            responses.extend(self._run_batch_chunk(requests[start : start + self._batch_limit], action))
        return responses

    def _run_batch_chunk(self, requests: Sequence[SubRequest], action: str) -> list[SubResponse]:
        """Send one `$batch`, sending throttled sub-requests again after their Retry-After."""
        results: dict[int, SubResponse] = {}
        pending = list(range(len(requests)))
        for attempt in range(BATCH_THROTTLE_RETRIES + 1):
            answers = self._post_batch([requests[i] for i in pending], action)
            throttled = [(i, a) for i, a in zip(pending, answers, strict=True) if a.status in THROTTLING_STATUSES]
            results.update((i, a) for i, a in zip(pending, answers, strict=True) if a.status not in THROTTLING_STATUSES)
            if not throttled:
                break
            last = throttled[-1][1]
            if attempt == BATCH_THROTTLE_RETRIES:
                raise error_for_status(
                    last.status, last.headers, last.body, mailbox=self.mailbox,
                    action=f"{action} ({len(throttled)} requests throttled {BATCH_THROTTLE_RETRIES + 1} times)",
                )
            hints = [h for _, a in throttled if (h := retry_after_seconds(a.headers)) is not None]
            wait = max(hints) if hints else DEFAULT_THROTTLE_WAIT * 2**attempt
            log.warning(
                "Mailbox %s: %d of %d requests in a $batch for %s were throttled (HTTP %d); "
                "sending them again in %.1f s",
                self.mailbox, len(throttled), len(pending), action, last.status, wait,
            )
            self._sleep(wait)
            pending = [i for i, _ in throttled]
        return [results[i] for i in range(len(requests))]

    def _post_batch(self, requests: Sequence[SubRequest], action: str) -> list[SubResponse]:
        payload = {"requests": [_batch_entry(str(n), request) for n, request in enumerate(requests, 1)]}
        response = self._request(
            "POST", "/$batch", action=f"$batch for {action}", json_body=payload,
            slots=min(len(requests), BATCH_PARALLELISM),
        )
        body = self._json(response, f"$batch for {action}")
        # Graph may list the responses in any order, so they are matched by id.
        by_id = {str(r.get("id")): r for r in body.get("responses", []) if isinstance(r, dict)}
        results = []
        for n in range(1, len(requests) + 1):
            sub_response = by_id.get(str(n))
            if sub_response is None or not isinstance(sub_response.get("status"), int):
                raise malformed_response_error(
                    f"the $batch response has no valid response for request {n}",
                    mailbox=self.mailbox, action=f"$batch for {action}",
                )
            raw_headers = sub_response.get("headers")
            headers = {str(k): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
            results.append(SubResponse(sub_response["status"], headers, sub_response.get("body")))
        return results

    def _get_json(self, url: str, *, action: str, prefer: Sequence[str] = ()) -> dict[str, Any]:
        response = self._request("GET", url, action=action, prefer=prefer)
        return self._json(response, action)

    def _request(
        self,
        method: str,
        url: str,
        *,
        action: str,
        json_body: Any = None,
        prefer: Sequence[str] = (),
        slots: int = 1,
    ) -> requests.Response:
        """Send a request and return the response, or raise the syncd error for a failed one."""
        response = self._send(method, url, action=action, json_body=json_body, prefer=prefer, slots=slots)
        if not response.ok:
            raise error_for_response(response, mailbox=self.mailbox, action=action)
        return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        action: str,
        json_body: Any = None,
        prefer: Sequence[str] = (),
        slots: int = 1,
    ) -> requests.Response:
        """Send a request with a bearer token, and once more with a new token after HTTP 401.

        `url` is absolute, or a path below the base URL. Connection errors
        are raised as syncd errors; HTTP errors are returned.
        """
        if not url.startswith(("https://", "http://")):
            url = self._base_url + url
        token = self._tokens.current()
        for attempt in (1, 2):
            headers = {
                "Authorization": f"Bearer {token}",
                "Prefer": ", ".join([IMMUTABLE_ID_PREFERENCE, *prefer]),
            }
            started = time.monotonic()
            with self._slots.hold(slots), graph_errors(self.mailbox, action):
                response = self._session.request(method, url, headers=headers, json=json_body, timeout=self._timeout)
            log.debug(
                "Mailbox %s: %s %s returned HTTP %d in %.0f ms",
                self.mailbox, method, urlsplit(url).path, response.status_code, (time.monotonic() - started) * 1000,
            )
            if response.status_code != 401 or attempt == 2:
                return response
            log.info("Mailbox %s: Graph rejected the access token for %s; fetching a new one", self.mailbox, action)
            token = self._tokens.replace(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: requests.Response, action: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise malformed_response_error(
                f"the body of the HTTP {response.status_code} response is not a JSON object",
                mailbox=self.mailbox, action=action,
            )
        return body

    def _checked_link(self, link: Any, action: str) -> str | None:
        """Return a nextLink, which must point below the base URL so the token goes nowhere else."""
        if link is None:
            return None
        if isinstance(link, str) and link.startswith(self._base_url + "/"):
            return link
        raise PermanentBackendError(
            f"Graph {action} for mailbox {self.mailbox} failed: the server sent a next link outside "
            f"{self._base_url}; check the Graph base URL.",
            mailbox=self.mailbox,
        )

    def _message_path(self, item_id: str) -> str:
        return f"{self._user_path}/messages/{_quote_id(item_id)}"

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session, unless the caller passed it in."""
        if self._owns_session:
            self._session.close()


def _batch_entry(request_id: str, request: SubRequest) -> dict[str, Any]:
    # Headers of the $batch envelope do not reach its sub-requests, so each
    # carries its own Prefer.
    entry: dict[str, Any] = {
        "id": request_id,
        "method": request.method,
        "url": request.url,
        "headers": {"Prefer": IMMUTABLE_ID_PREFERENCE},
    }
    if request.body is not None:
        entry["headers"]["Content-Type"] = "application/json"
        entry["body"] = request.body
    if request.if_match is not None:
        entry["headers"]["If-Match"] = request.if_match
    return entry


def _categories_of(message: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """Return the entity tag and the categories of a message as Graph returned it."""
    etag = message.get("@odata.etag")
    categories = message.get("categories")
    names = [c for c in categories if isinstance(c, str)] if isinstance(categories, list) else []
    return (etag if isinstance(etag, str) and etag else None), names


def _decoded_body(body: Any) -> bytes | None:
    """Return the bytes of a base64 `$batch` body, or None when it is not base64 text."""
    if not isinstance(body, str):
        return None
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _quote_id(value: str) -> str:
    # Graph ids are URL-safe base64 and may end in "="; anything else is escaped.
    return quote(value, safe="=-_")


def _check_settings(
    mailbox: str,
    base_url: str,
    folder_names: Sequence[str],
    inbound: bool,
    post_action: str,
    processed_folder_name: str | None,
    batch_size: int,
    timeout: float,
    max_concurrency: int,
) -> None:
    if not mailbox or mailbox != mailbox.strip() or "/" in mailbox:
        raise ConfigError(
            f"mailbox {mailbox!r} is not a user principal name or user id; give e.g. ola@example.no."
        )
    if not base_url.startswith(("https://", "http://")):
        raise ConfigError(f"Graph base URL {base_url!r} is not an http(s) URL; give e.g. {GRAPH_BASE_URL}.")
    if not inbound and not folder_names:
        raise ConfigError(f"mailbox {mailbox} has no sync folder names; give at least one, e.g. ['CRM-arkiv'].")
    if any(not isinstance(name, str) or not name.strip() for name in folder_names):
        raise ConfigError(f"mailbox {mailbox} has an empty sync folder name in {list(folder_names)!r}; remove it.")
    if post_action not in POST_ACTIONS:
        raise ConfigError(f"post action {post_action!r} is invalid; use 'keep', 'move' or 'delete'.")
    if post_action == "move" and not processed_folder_name:
        raise ConfigError("post action 'move' needs processed_folder_name, e.g. 'Behandlet'.")
    if not 1 <= batch_size <= MAX_DELTA_PAGE:
        raise ConfigError(f"batch size {batch_size!r} is out of range; syncd accepts 1 to {MAX_DELTA_PAGE} for Graph.")
    if timeout <= 0:
        raise ConfigError(f"Graph timeout {timeout!r} must be a positive number of seconds.")
    if not 1 <= max_concurrency <= MAX_MAILBOX_CONCURRENCY:
        raise ConfigError(
            f"max_concurrency {max_concurrency!r} is out of range; Exchange Online allows 1 to "
            f"{MAX_MAILBOX_CONCURRENCY} concurrent requests per mailbox."
        )


