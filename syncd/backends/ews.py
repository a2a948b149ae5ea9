"""The mailbox backend for Exchange Web Services, on exchangelib 5.6.

One `EwsBackend` serves one mailbox on one EWS endpoint with one credentials
object and one exchangelib `Configuration` for its lifetime. It never retries:
the sync loop retries `TransientBackendError` and reads its `retry_after`.

The module also provides the credentials factory (`make_credentials`, with an
msal-backed OAuth 2.0 path). With OAuth 2.0, a request that Exchange rejects
with HTTP 401 is sent once more with a new access token (`RejectedTokenRetry`).
`syncd.redact` keeps exchangelib's and
requests-oauthlib's tokens, passwords and SOAP bodies out of syncd's logs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any

import requests
from exchangelib import UTC as EWS_UTC
from exchangelib import (
    Account,
    Build,
    Configuration,
    Credentials,
    FailFast,
    OAuth2AuthorizationCodeCredentials,
    Version,
)
from exchangelib.credentials import (
    DELEGATE,
    IMPERSONATION,
    BaseCredentials,
    BaseOAuth2Credentials,
)
from exchangelib.errors import (
    ErrorFolderExists,
    ErrorInternalServerTransientError,
    ErrorIrresolvableConflict,
    ErrorItemNotFound,
    ErrorServerBusy,
)
from exchangelib.folders import SHALLOW, SingleFolderQuerySet
from exchangelib.folders import Folder as ExchangeFolder
from exchangelib.items import ID_ONLY, MOVE_TO_DELETED_ITEMS, NEVER_OVERWRITE, SAVE_ONLY, SEND_TO_NONE, Message
from exchangelib.properties import FolderId
from exchangelib.protocol import Protocol
from exchangelib.services import CreateFolder, SyncFolderItems, UpdateItem
from exchangelib.transport import BASIC, NTLM, OAUTH2
from oauthlib.oauth2 import OAuth2Token
from oauthlib.oauth2.rfc6749 import errors as oauth_errors

from syncd import metrics, tls
from syncd.auth import DEFAULT_AUTHORITY_HOST, EWS_SCOPE, token_provider_for
from syncd.backends.base import (
    Batch,
    FeedbackRequest,
    Folder,
    FolderReport,
    Item,
    check_categories,
)
from syncd.backends.tagging import Known, plan_writes, wanted_categories, write_in_rounds
from syncd.backends.ews_errors import ews_errors
from syncd.backends.throttling import retry_after_seconds
from syncd.errors import BackendError, ConfigError
from syncd.redact import redact_secrets

log = logging.getLogger("syncd.ews")

#: Exchange 2016 CU23. Pinning a build skips exchangelib's version probe, and
#: exchangelib 5.6 sends RequestServerVersion "Exchange2016" for every 2016,
#: 2019, SE and Exchange Online build anyway.
EXCHANGE_BUILD = Build(15, 1, 2507, 6)

#: Maximum MaxChangesReturned of SyncFolderItems, per Microsoft's EWS reference.
MAX_SYNC_PAGE = 512

ACCESS_TYPES = (IMPERSONATION, DELEGATE)
POST_ACTIONS = ("keep", "move", "delete")

#: Fields read per new item: the MIME bytes, the Message-ID for log lines, and
#: the categories that feedback appends to without reading them again.
MIME_FIELDS = ("mime_content", "message_id", "categories")

# -- credentials -------------------------------------------------------------------

TokenProvider = Callable[[], Mapping[str, Any]]
"""Returns an msal-style token result: access_token, token_type and expires_in (seconds).

A provider that caches tokens, such as `syncd.auth.MsalTokenProvider`, may
also have an `invalidate(token)` method, which drops a rejected token from
its cache.
"""


class BasicCredentials(Credentials):
    """A username and password sent with HTTP Basic authentication."""

    auth_type = BASIC


class NtlmCredentials(Credentials):
    """A username (DOMAIN\\user or UPN) and password for NTLM authentication."""

    auth_type = NTLM


class ProvidedTokenCredentials(OAuth2AuthorizationCodeCredentials):
    """OAuth 2.0 credentials whose access tokens come from a token provider such as msal.

    The authorization-code class is the base because exchangelib clears the
    token of client-credentials classes whenever it closes a session, and then
    fetches one itself. Without a client id and secret, requests-oauthlib never
    refreshes on its own: it raises TokenExpiredError, exchangelib calls
    `refresh()`, builds a new session and sends the request again.

    exchangelib keys its connection pools on the hash of the credentials, which
    covers every attribute, so all attributes here are hashable.
    """

    auth_type = OAUTH2

    def __init__(
        self, token_provider: TokenProvider, *, tenant_id: str | None = None, expiry_margin: int = 30
    ) -> None:
        super().__init__(tenant_id=tenant_id)
        self.token_provider = token_provider
        #: Seconds before the provider's expiry at which a token counts as expired.
        self.expiry_margin = expiry_margin
        # exchangelib caches `client` in __dict__ on first use, which changes
        # the hash; creating it now keeps one pool for this object's lifetime.
        self.client  # noqa: B018

    def session_params(self) -> dict[str, Any]:
        # The first token is fetched lazily, so building a backend makes no network call.
        with self.lock:
            if self.access_token is None:  # type: ignore[has-type]
                self.access_token = self._new_token()
        return super().session_params()

    def refresh(self, session: requests.Session) -> None:
        with self.lock:
            self.access_token = self._new_token()

    def replace_rejected(self, rejected: str) -> tuple[str, bool]:
        """Return the access token to use in place of `rejected`, and whether it was requested just now.

        When another thread has already replaced `rejected` with a token that
        has not expired, that token is returned. Otherwise the provider drops
        `rejected` from its cache, which msal would serve until 5 minutes
        before its expiry, and a new token is requested. When that request
        fails, the error is raised and the credentials keep `rejected`, so
        the next request is rejected and tries again.
        """
        with self.lock:
            current = self.access_token
            if (
                current is not None
                and current.get("access_token") != rejected
                and current.get("expires_at", 0) > time.time()
            ):
                return str(current["access_token"]), False
            invalidate = getattr(self.token_provider, "invalidate", None)
            if invalidate is not None:
                invalidate(rejected)
            fresh = self._new_token()
            self.access_token = fresh
            # Every session of these credentials adds its token through this
            # one oauthlib client, so the sessions already in the pool send
            # the new token from their next request on.
            self.client.token = fresh
            self.client.populate_token_attributes(fresh)
            return str(fresh["access_token"]), True

    def _new_token(self) -> OAuth2Token:
        result = self.token_provider()
        access_token = result.get("access_token")
        if not access_token:
            raise oauth_errors.MissingTokenError(description="the token provider returned no access_token")
        expires_in = int(result.get("expires_in", 3600))
        lifetime = expires_in - self.expiry_margin if expires_in > self.expiry_margin else expires_in
        if lifetime <= 0:
            # exchangelib retries at once on an expired token, so accepting one would loop.
            raise oauth_errors.InvalidTokenError(
                description=f"the token provider returned a token that expires in {expires_in} s"
            )
        return OAuth2Token(
            {
                "access_token": access_token,
                "token_type": result.get("token_type", "Bearer"),
                "expires_in": expires_in,
                # An absolute expiry keeps sessions built later from treating
                # an old token as fresh.
                "expires_at": time.time() + lifetime,
            }
        )


class RejectedTokenRetry:
    """A requests response hook that sends a request rejected with HTTP 401 once more, with a new access token.

    Exchange rejects an access token before its expiry when the app's
    consent, role assignment or sessions are revoked. Without this hook the
    credentials would keep sending that token until it expires. Exchange
    checks the token before it runs the request, so sending the request
    again cannot apply it twice. A 401 to the second request is returned
    unchanged, and exchangelib raises UnauthorizedError for it.

    One hook serves one session, and the session's pool serves every
    mailbox of the service account, so the mailbox comes from the request's
    X-AnchorMailbox header.
    """

    def __init__(self, session: requests.Session, credentials: ProvidedTokenCredentials) -> None:
        self._session = session
        self._credentials = credentials
        # The second request runs this hook again in the same thread, where it must pass the response on.
        self._sending_again = threading.local()

    def __call__(self, response: requests.Response, **send_kwargs: Any) -> requests.Response | None:
        if response.status_code != 401 or getattr(self._sending_again, "active", False):
            return None
        rejected = _bearer_token(_header(response.request, "Authorization"))
        if rejected is None:
            return None
        mailbox = _header(response.request, "X-AnchorMailbox")
        subject = f"Mailbox {mailbox}" if mailbox else f"EWS endpoint {response.url}"
        # Reading the body hands the connection back to the pool, also when
        # the token request below fails.
        _ = response.content
        response.close()

        # A failed token request is raised through exchangelib, which logs it
        # at ERROR with the request's headers and SOAP body. The filter in
        # syncd.redact removes the token and the body from that record.
        token, requested = self._credentials.replace_rejected(rejected)
        if requested:
            log.warning(
                "%s: Exchange rejected the access token before its expiry (HTTP 401); "
                "sending the request again with a new token",
                subject,
            )
        else:
            log.debug(
                "%s: Exchange rejected an access token that was already replaced; sending the request again",
                subject,
            )

        again = response.request.copy()
        again.headers["Authorization"] = f"Bearer {token}"
        self._sending_again.active = True
        try:
            answer = self._session.send(again, allow_redirects=False, **send_kwargs)
        finally:
            self._sending_again.active = False
        answer.history.insert(0, response)
        return answer


def _header(request: requests.PreparedRequest, name: str) -> str | None:
    """Return a request header as text; requests allows header values as bytes too."""
    value = request.headers.get(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _bearer_token(authorization: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer` header value, or None for any other value."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def make_credentials(
    auth: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tenant_id: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    token_provider: TokenProvider | None = None,
    authority_host: str = DEFAULT_AUTHORITY_HOST,
    verify: tls.Verify = True,
) -> BaseCredentials:
    """Build exchangelib credentials for "basic" or "ntlm" (username and password) or "oauth2".

    For "oauth2", tokens come from `token_provider` when given, else from the
    process's shared msal provider for `tenant_id`, `client_id` and
    `client_secret` at `authority_host`, which checks the authority's
    certificate according to `verify`. Build credentials once per service
    account and keep them: exchangelib caches a connection pool per
    credentials object and never evicts it.
    """
    if auth in ("basic", "ntlm"):
        if not username or not password:
            raise ConfigError(f"EWS auth {auth!r} needs a username and a password; set both.")
        credentials_class = BasicCredentials if auth == "basic" else NtlmCredentials
        return credentials_class(username, password)
    if auth == "oauth2":
        if token_provider is None:
            missing = [
                name
                for name, value in (("tenant_id", tenant_id), ("client_id", client_id), ("client_secret", client_secret))
                if not value
            ]
            if missing:
                raise ConfigError(
                    f"EWS auth 'oauth2' needs {', '.join(missing)} (or a token provider); set them."
                )
            token_provider = token_provider_for(
                str(tenant_id), str(client_id), str(client_secret), EWS_SCOPE,
                authority_host=authority_host, verify=verify,
            )
        return ProvidedTokenCredentials(token_provider, tenant_id=tenant_id)
    raise ConfigError(f"EWS auth {auth!r} is not supported; use 'basic', 'ntlm' or 'oauth2'.")


def auth_type_of(credentials: BaseCredentials) -> str:
    """Return the exchangelib auth type for a credentials object (NTLM for plain `Credentials`)."""
    declared = getattr(credentials, "auth_type", None)
    if isinstance(declared, str):
        return declared
    if isinstance(credentials, BaseOAuth2Credentials):
        return OAUTH2
    return NTLM


# -- retry policy --------------------------------------------------------------------


class ThrottlingFailFast(FailFast):
    """exchangelib's FailFast, with HTTP 429 and Retry-After reported as ErrorServerBusy.

    Under FailFast, exchangelib 5.6 treats 429 as a malformed response and
    drops the Retry-After of a 503. This policy raises ErrorServerBusy for
    both, with `back_off` set to the Retry-After seconds (None without one).
    """

    def raise_response_errors(self, response: requests.Response) -> None:
        if response.status_code == 429:
            raise ErrorServerBusy("HTTP 429 Too Many Requests", back_off=retry_after_seconds(response.headers))
        try:
            super().raise_response_errors(response)
        except ErrorInternalServerTransientError as exc:
            retry_after = retry_after_seconds(response.headers)
            if retry_after is None:
                raise
            raise ErrorServerBusy(f"{exc} with Retry-After {retry_after:g} s", back_off=retry_after) from exc


# -- services ------------------------------------------------------------------------


class ConflictReportingUpdateItem(UpdateItem):
    """exchangelib's UpdateItem, returning ErrorIrresolvableConflict per item instead of raising it.

    exchangelib 5.6 raises that error for the whole request, which hides the
    results of the other items in the same request, already written by then.
    """

    ERRORS_TO_CATCH_IN_RESPONSE = (*UpdateItem.ERRORS_TO_CATCH_IN_RESPONSE, ErrorIrresolvableConflict)


# -- TLS ------------------------------------------------------------------------------


class CountingProtocol(Protocol):
    """exchangelib's Protocol, with each HTTP response counted in the metrics of the mailbox it served.

    Sessions of OAuth 2.0 credentials from a token provider also send a
    request that Exchange rejects with HTTP 401 once more, with a new token.
    """

    def create_session(self) -> Any:
        session = super().create_session()
        session.hooks["response"].append(metrics.request_counter("ews"))
        # The retry hook comes last, so the counter above counts the
        # rejected response and the second one, each once.
        if isinstance(self.credentials, ProvidedTokenCredentials):
            session.hooks["response"].append(RejectedTokenRetry(session, self.credentials))
        return session


@functools.cache
def protocol_class(verify: tls.Verify) -> type[Protocol]:
    """Return the exchangelib Protocol class whose HTTP sessions check certificates according to `verify`.

    exchangelib 5.6 builds every session's adapter from the class attribute
    HTTP_ADAPTER_CLS, its documented hook for TLS settings. A subclass keeps
    the setting to the backends that ask for it, where setting it on
    BaseProtocol would change every exchangelib connection in the process.
    """
    if verify is True:
        return CountingProtocol

    class VerifyingProtocol(CountingProtocol):
        HTTP_ADAPTER_CLS = tls.adapter_class(verify)

    return VerifyingProtocol


def _register_protocol(config: Configuration, verify: tls.Verify) -> None:
    """Put a protocol of the right class for `config` into exchangelib's protocol cache.

    `Account` takes its protocol from that cache, which is keyed on the
    endpoint and the credentials object, so the Account built next uses this one.
    """
    wanted = protocol_class(verify)
    try:
        cached, _ = Protocol[config]
    except KeyError:
        cached = None
    if cached is not None and type(cached) is not wanted:
        # The settings changed since the protocol was built (a reload), or
        # exchangelib cached an error for this endpoint.
        if isinstance(cached, Protocol):
            cached.close()
        del Protocol[config]
    wanted(config=config)


# -- the backend ---------------------------------------------------------------------


class EwsBackend:
    """One Exchange mailbox through EWS: sync folders, new items with their MIME, and feedback.

    `folder_names` are display names of sync folders directly below the top
    of information store. With `inbound`, the Inbox is the only sync folder.
    `categories` maps an outcome ("filed", "unmatched", "failed",
    "duplicate") to the Outlook category added to the item. `post_action`
    "move" moves a handled item into the subfolder `processed_folder_name`
    of its sync folder, and "delete" moves it to Deleted Items, where the
    user can still restore it. `batch_size` is the SyncFolderItems page size
    and the GetItem, UpdateItem and MoveItem chunk size. `timeout` is in
    seconds per HTTP request. `verify` sets the check of the server's TLS
    certificate (see `syncd.tls`).
    """

    kind = "ews"

    def __init__(
        self,
        mailbox: str,
        *,
        endpoint: str,
        credentials: BaseCredentials,
        access: str = IMPERSONATION,
        folder_names: Sequence[str] = (),
        inbound: bool = False,
        categories: Mapping[str, str] | None = None,
        post_action: str = "keep",
        processed_folder_name: str | None = None,
        batch_size: int = 50,
        timeout: float = 120,
        max_connections: int = 2,
        verify: tls.Verify = True,
    ) -> None:
        _check_settings(
            mailbox, endpoint, access, folder_names, inbound, post_action, processed_folder_name,
            batch_size, timeout, max_connections,
        )
        self.mailbox = mailbox
        self._folder_names = list(folder_names)
        self._inbound = inbound
        self._categories = check_categories(categories or {})
        self._post_action = post_action
        self._processed_folder_name = processed_folder_name
        self._batch_size = batch_size
        self._processed_folders: dict[str, ExchangeFolder] = {}
        #: Change key and categories per item of the last fetched batch, until its feedback.
        self._read_categories: Known = {}

        self._config = Configuration(
            service_endpoint=endpoint,
            credentials=credentials,
            auth_type=auth_type_of(credentials),
            version=Version(build=EXCHANGE_BUILD),
            retry_policy=ThrottlingFailFast(),
            max_connections=max_connections,
        )
        _register_protocol(self._config, verify)
        self._account = Account(
            mailbox,
            config=self._config,
            access_type=access,
            autodiscover=False,
            default_timezone=EWS_UTC,
        )

        # exchangelib keeps one Protocol per (endpoint, credentials) for the
        # process, so backends that share a credentials object also share the
        # timeout set last and the max_connections set first. RETRY_WAIT
        # (class default 10 s) is what exchangelib reports as the back-off of
        # a busy signal that carried none; 0 lets the sync loop tell "no hint"
        # from a hint.
        protocol = self._account.protocol
        protocol.TIMEOUT = timeout
        protocol.RETRY_WAIT = 0

    # -- folders ---------------------------------------------------------------

    def ensure_folders(self) -> list[FolderReport]:
        """Find the sync folders below the top of information store by name and create the missing ones.

        An inbound mailbox has one sync folder, its Inbox, which is never created.
        """
        with ews_errors(self.mailbox, "folder lookup"):
            if self._inbound:
                inbox = self._account.inbox
                return [FolderReport(Folder(key=inbox.id, name=inbox.name or "Inbox"), created=False)]
            top = self._account.msg_folder_root

        reports = []
        for name in self._folder_names:
            with ews_errors(self.mailbox, f"lookup of folder {name!r}"):
                found = self._find_child(top, name)
            if found is not None:
                reports.append(FolderReport(Folder(key=found.id, name=found.name or name), created=False))
                continue
            with ews_errors(self.mailbox, f"creation of folder {name!r}"):
                created, is_new = self._create_child(top, name)
            if is_new:
                log.info("Created sync folder %r in mailbox %s", name, self.mailbox)
            reports.append(FolderReport(Folder(key=created.id, name=name), created=is_new))
        return reports

    def ensure_subfolder(self, parent: Folder, name: str) -> FolderReport:
        """Find the mail folder `name` below `parent` by display name, creating it when missing."""
        with ews_errors(self.mailbox, f"lookup of folder {name!r}"):
            parent_folder = ExchangeFolder(root=self._account.root, id=parent.key)
            found = self._find_child(parent_folder, name)
        if found is not None:
            return FolderReport(Folder(key=found.id, name=found.name or name), created=False)
        with ews_errors(self.mailbox, f"creation of folder {name!r}"):
            created, is_new = self._create_child(parent_folder, name)
        if is_new:
            log.info("Created folder %r below %r in mailbox %s", name, parent.name, self.mailbox)
        return FolderReport(Folder(key=created.id, name=name), created=is_new)

    def _find_child(self, parent: ExchangeFolder, name: str) -> ExchangeFolder | None:
        # This sends one shallow FindFolder with a DisplayName restriction.
        # `only("name")` avoids the GetFolder that exchangelib's `//` sends for
        # the match, and `/` would crawl the whole folder tree first.
        query = SingleFolderQuerySet(account=self._account, folder=parent).depth(SHALLOW).only("name")
        for found in query.filter(name=name):
            if isinstance(found, Exception):
                raise found
            return found
        return None

    def _create_child(self, parent: ExchangeFolder, name: str) -> tuple[ExchangeFolder, bool]:
        """Create a mail folder under `parent` and return it, with False when another client was quicker."""
        # IPF.Note makes Outlook show the folder as a mail folder.
        spec = ExchangeFolder(root=self._account.root, name=name, folder_class="IPF.Note")
        try:
            return CreateFolder(account=self._account).get(parent_folder=parent, folders=[spec]), True
        except ErrorFolderExists:
            found = self._find_child(parent, name)
            if found is None:
                raise
            return found, False

    # -- new items ----------------------------------------------------------------

    def batches(
        self, folder: Folder, state: str | None, known: Callable[[str], bool] | None = None
    ) -> Iterator[Batch]:
        """Yield one batch per SyncFolderItems page, with the MIME of the items created in it.

        Update, delete and read-flag changes are skipped: syncd's own category
        writes come back as updates, and moves out of the folder as deletes.
        """
        service = SyncFolderItems(account=self._account)
        folder_id = FolderId(id=folder.key)
        while True:
            with ews_errors(self.mailbox, f"sync of folder {folder.name!r}", sync_state_sent=bool(state)):
                changes = list(
                    service.call(
                        folder=folder_id,
                        shape=ID_ONLY,
                        additional_fields=None,
                        sync_state=state,
                        ignore=None,
                        max_changes_returned=self._batch_size,
                        sync_scope="NormalItems",
                    )
                )
            state = service.sync_state
            created = [
                item for change, item in changes
                if change == SyncFolderItems.CREATE and not (known is not None and known(item.id))
            ]
            log.debug(
                "Mailbox %s folder %r: %d changes, %d new items",
                self.mailbox, folder.name, len(changes), len(created),
            )
            yield Batch(folder=folder, items=self._fetch_items(folder, created), state=state)
            if service.includes_last_item_in_range:
                return

    def _fetch_items(self, folder: Folder, created: list[Message]) -> list[Item]:
        # Feedback on a batch comes before the next batch is fetched, so only
        # the categories of the latest batch are worth keeping.
        self._read_categories = {}
        if not created:
            return []
        ids = [(message.id, message.changekey) for message in created]
        with ews_errors(self.mailbox, f"GetItem in folder {folder.name!r}"):
            results = list(
                self._account.fetch(ids=ids, only_fields=list(MIME_FIELDS), chunk_size=self._batch_size)
            )
        for message, result in zip(created, results, strict=True):
            if not isinstance(result, Exception):
                self._read_categories[message.id] = (result.changekey, list(result.categories or []))
        return [
            self._item_from_result(folder, message.id, result)
            for message, result in zip(created, results, strict=True)
        ]

    def _item_from_result(self, folder: Folder, item_id: str, result: Message | Exception) -> Item:
        if isinstance(result, Exception):
            error = f"GetItem failed: {type(result).__name__}: {redact_secrets(str(result))}"
        elif result.mime_content is None:
            # exchangelib sets the field to None when Exchange sends MIME that
            # is not valid base64, which happens for some very large messages.
            error = f"Exchange returned no readable MIME content (Message-ID {result.message_id})"
        else:
            return Item(folder=folder, item_id=item_id, raw=bytes(result.mime_content))
        log.warning("Mailbox %s: item %s in folder %r kept as failed: %s", self.mailbox, item_id, folder.name, error)
        return Item(folder=folder, item_id=item_id, raw=None, error=error)

    # -- feedback -------------------------------------------------------------------

    def apply_feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackRequest]:
        """Append each outcome's category to the item's categories, then keep, move or delete it.

        Categories are read and written in bulk; an item that no longer
        exists counts as applied, because nothing is left to tell.
        """
        if not requests:
            return []
        by_item: dict[str, list[FeedbackRequest]] = {}
        for request in requests:
            by_item.setdefault(request.item_id, []).append(request)

        vanished, tagged = self._tag(by_item)
        if self._post_action == "keep":
            done = vanished + list(tagged)
        else:
            done = vanished + self._post_process(tagged, by_item)
        return [request for item_id in done for request in by_item[item_id]]

    def _tag(self, by_item: dict[str, list[FeedbackRequest]]) -> tuple[list[str], list[str]]:
        """Write the categories and return the ids of vanished items and of items that now carry theirs.

        The categories read with an item's MIME are reused, so feedback on a
        fresh batch costs one UpdateItem. Each write carries the change key of
        that read and NeverOverwrite: when the user changed the item since,
        Exchange refuses the write with ErrorIrresolvableConflict instead of
        replacing the user's categories, and the item is read and written again.
        """
        wanted = wanted_categories(by_item, self._categories)
        vanished: list[str] = []
        tagged = [item_id for item_id, names in wanted.items() if not names]
        pending = write_in_rounds(
            [item_id for item_id, names in wanted.items() if names],
            self._read_categories,
            lambda item_ids: self._read_item_categories(item_ids, vanished),
            lambda known: self._write_categories(known, wanted, vanished, tagged),
        )
        for item_id in pending:
            log.warning(
                "Mailbox %s: item %s changed while its categories were written; it is tried again on a later pass",
                self.mailbox, item_id,
            )
        return vanished, tagged

    def _read_item_categories(self, item_ids: list[str], vanished: list[str]) -> Known:
        """Return the change key and categories of each readable item."""
        if not item_ids:
            return {}
        with ews_errors(self.mailbox, "GetItem of categories"):
            results = list(
                self._account.fetch(
                    ids=[(item_id, None) for item_id in item_ids],
                    only_fields=["categories"],
                    chunk_size=self._batch_size,
                )
            )
        read: Known = {}
        for item_id, result in zip(item_ids, results, strict=True):
            if not self._settled_by_error(item_id, result, "reading categories", vanished):
                read[item_id] = (result.changekey, list(result.categories or []))
        return read

    def _write_categories(
        self, known: Known, wanted: dict[str, list[str]], vanished: list[str], tagged: list[str]
    ) -> list[str]:
        """Append the missing categories to the known ones; return the ids that another client changed first."""
        updates = [
            (write.item_id, Message(
                account=self._account, id=write.item_id, changekey=write.version, categories=write.categories
            ))
            for write in plan_writes(known, wanted, tagged)
        ]
        if not updates:
            return []

        with ews_errors(self.mailbox, "UpdateItem of categories"):
            written = list(
                ConflictReportingUpdateItem(account=self._account, chunk_size=self._batch_size).call(
                    items=[(item, ["categories"]) for _, item in updates],
                    conflict_resolution=NEVER_OVERWRITE,
                    message_disposition=SAVE_ONLY,
                    send_meeting_invitations_or_cancellations=SEND_TO_NONE,
                    suppress_read_receipts=True,
                )
            )
        conflicted: list[str] = []
        for (item_id, _), result in zip(updates, written, strict=True):
            if isinstance(result, ErrorIrresolvableConflict):
                log.info(
                    "Mailbox %s: item %s changed since its categories were read; reading them again",
                    self.mailbox, item_id,
                )
                conflicted.append(item_id)
            elif not self._settled_by_error(item_id, result, "writing categories", vanished):
                tagged.append(item_id)
        return conflicted

    def _post_process(self, item_ids: list[str], by_item: dict[str, list[FeedbackRequest]]) -> list[str]:
        """Move or delete tagged items; return the ids that are done."""
        done: list[str] = []
        if not item_ids:
            return done
        if self._post_action == "delete":
            with ews_errors(self.mailbox, "DeleteItem"):
                results = self._account.bulk_delete(
                    ids=[(item_id, None) for item_id in item_ids],
                    delete_type=MOVE_TO_DELETED_ITEMS,
                    chunk_size=self._batch_size,
                )
            self._collect_done(item_ids, results, "deleting", done)
            return done

        by_folder: dict[str, list[str]] = {}
        for item_id in item_ids:
            by_folder.setdefault(by_item[item_id][0].folder_key, []).append(item_id)
        for folder_key, folder_item_ids in by_folder.items():
            target = self._processed_folder(folder_key)
            try:
                with ews_errors(self.mailbox, f"MoveItem to {self._processed_folder_name!r}"):
                    results = self._account.bulk_move(
                        ids=[(item_id, None) for item_id in folder_item_ids],
                        to_folder=target,
                        chunk_size=self._batch_size,
                    )
            except BackendError:
                # The user may have deleted the folder; look it up again next time.
                self._processed_folders.pop(folder_key, None)
                raise
            self._collect_done(folder_item_ids, results, "moving", done)
        return done

    def _processed_folder(self, folder_key: str) -> ExchangeFolder:
        """Return the processed-items folder under a sync folder, creating it on first use."""
        cached = self._processed_folders.get(folder_key)
        if cached is not None:
            return cached
        name = str(self._processed_folder_name)
        with ews_errors(self.mailbox, f"lookup of folder {name!r}"):
            parent = ExchangeFolder(root=self._account.root, id=folder_key)
            folder = self._find_child(parent, name)
            if folder is None:
                folder, _ = self._create_child(parent, name)
                log.info("Created folder %r for processed items in mailbox %s", name, self.mailbox)
        self._processed_folders[folder_key] = folder
        return folder

    def _collect_done(self, item_ids: list[str], results: Iterable[object], action: str, done: list[str]) -> None:
        for item_id, result in zip(item_ids, results, strict=True):
            if not self._settled_by_error(item_id, result, action, done):
                done.append(item_id)

    def _settled_by_error(self, item_id: str, result: object, action: str, vanished: list[str]) -> bool:
        """Return True when `result` is a per-item error, and add the item to `vanished` when it no longer exists."""
        if isinstance(result, ErrorItemNotFound):
            log.info("Mailbox %s: item %s no longer exists; skipped %s", self.mailbox, item_id, action)
            vanished.append(item_id)
            return True
        if isinstance(result, Exception):
            log.warning(
                "Mailbox %s: %s failed for item %s: %s: %s; it is tried again on a later pass",
                self.mailbox, action, item_id, type(result).__name__, redact_secrets(str(result)),
            )
            return True
        return False

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled HTTP sessions and drop the cached protocol of this configuration."""
        self._account.protocol.close()
        with suppress(KeyError):
            del Protocol[self._config]


def _check_settings(
    mailbox: str,
    endpoint: str,
    access: str,
    folder_names: Sequence[str],
    inbound: bool,
    post_action: str,
    processed_folder_name: str | None,
    batch_size: int,
    timeout: float,
    max_connections: int,
) -> None:
    if "@" not in mailbox:
        raise ConfigError(f"mailbox {mailbox!r} is not an SMTP address; give the primary address, e.g. ola@example.no.")
    if not endpoint.startswith(("https://", "http://")):
        raise ConfigError(
            f"EWS endpoint {endpoint!r} is not an http(s) URL; give e.g. https://mail.example.no/EWS/Exchange.asmx."
        )
    if access not in ACCESS_TYPES:
        raise ConfigError(f"EWS access {access!r} is invalid; use 'impersonation' or 'delegate'.")
    if not inbound and not folder_names:
        raise ConfigError(f"mailbox {mailbox} has no sync folder names; give at least one, e.g. ['CRM-arkiv'].")
    if post_action not in POST_ACTIONS:
        raise ConfigError(f"post action {post_action!r} is invalid; use 'keep', 'move' or 'delete'.")
    if post_action == "move" and not processed_folder_name:
        raise ConfigError("post action 'move' needs processed_folder_name, e.g. 'Behandlet'.")
    if not 1 <= batch_size <= MAX_SYNC_PAGE:
        raise ConfigError(f"batch size {batch_size!r} is out of range; EWS accepts 1 to {MAX_SYNC_PAGE}.")
    if timeout <= 0:
        raise ConfigError(f"EWS timeout {timeout!r} must be a positive number of seconds.")
    if max_connections < 1:
        raise ConfigError(f"max_connections {max_connections!r} must be at least 1.")


