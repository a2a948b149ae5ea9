"""Translation of Microsoft Graph HTTP failures and requests exceptions into syncd's error tree.

This module is the one place where failures of the Graph backend become
`syncd.errors.BackendError` subclasses. Every translated error names the
mailbox and the action, never a token, and an exception is raised `from` the
original.

    SyncStateInvalidError   HTTP 410, or an error code syncStateNotFound,
                            syncStateInvalid or resyncRequired
    TransientBackendError   HTTP 429, 503 and 504 (with Retry-After), other 5xx,
                            time-outs and dropped connections, token service
                            outages
    BackendAuthError        HTTP 401 and 403, rejected client or grant
    PermanentBackendError   every other 4xx, TLS errors, bad URLs, malformed
                            responses
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests

from syncd.backends.throttling import retry_after_seconds
from syncd.errors import (
    BackendAuthError,
    BackendError,
    FolderNotFoundError,
    PermanentBackendError,
    SyncStateInvalidError,
    TransientBackendError,
)
from syncd.redact import redact_secrets

#: Graph error codes that mean the delta token is gone, compared in lower case.
SYNC_STATE_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})

#: Statuses that tell the client to wait and send the request again.
THROTTLING_STATUSES = frozenset({429, 503, 504})

#: Token service error codes (OAuth 2.0, RFC 6749) that a later attempt may get past.
TRANSIENT_TOKEN_ERRORS = frozenset({"temporarily_unavailable", "server_error"})

#: Maximum length, in characters, of the server's own message quoted in a translated error.
MAX_DETAIL_CHARS = 300

def error_code(body: Any) -> str | None:
    """Return the `error.code` of a Graph error body, or None."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("code"), str):
            return error["code"]
    return None


def describe_failure(status: int, body: Any) -> str:
    """Return "HTTP <status> <code>: <message>" for a failed response, secrets removed and cut short."""
    code = error_code(body)
    message = ""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        message = str(body["error"].get("message") or "")
    elif isinstance(body, str):
        message = body
    text = redact_secrets(" ".join(message.split()))
    if len(text) > MAX_DETAIL_CHARS:
        text = text[:MAX_DETAIL_CHARS] + "…"
    head = f"HTTP {status} {code}" if code else f"HTTP {status}"
    return f"{head}: {text}" if text else head


def is_sync_state_failure(status: int, body: Any) -> bool:
    """Return True when a response reports that the delta token is no longer valid."""
    code = (error_code(body) or "").lower()
    return status == 410 or code in SYNC_STATE_CODES


def error_for_status(
    status: int, headers: Mapping[str, str], body: Any, *, mailbox: str, action: str
) -> BackendError:
    """Return the syncd error for a failed Graph response or `$batch` sub-response."""
    detail = describe_failure(status, body)
    where = f"Graph {action} for mailbox {mailbox} failed"

    if is_sync_state_failure(status, body):
        return SyncStateInvalidError(
            f"{where}: the server no longer knows the stored delta link ({detail}); "
            "the folder will be synced from the start.",
            mailbox=mailbox,
        )
    if status in THROTTLING_STATUSES or status >= 500:
        retry_after = retry_after_seconds(headers)
        hint = f"the server asked to wait {retry_after:g} s" if retry_after is not None else "try again later"
        return TransientBackendError(f"{where}: {detail}; {hint}.", mailbox=mailbox, retry_after=retry_after)
    if status == 401:
        return BackendAuthError(
            f"{where}: the access token was rejected twice ({detail}); check the app registration's "
            "client secret or certificate and the tenant id.",
            mailbox=mailbox,
        )
    if status == 403:
        return BackendAuthError(
            f"{where}: access denied ({detail}); grant the app Mail.ReadWrite for this mailbox "
            "(RBAC for Applications in Exchange Online) or check the mailbox address.",
            mailbox=mailbox,
        )
    if status == 404 and action.startswith("delta of folder"):
        return FolderNotFoundError(f"{where}: the folder no longer exists ({detail}).", mailbox=mailbox)
    if (error_code(body) or "") in ("ErrorInvalidUser", "MailboxNotEnabledForRESTAPI"):
        return PermanentBackendError(
            f"{where}: {detail}; check that the mailbox address is the user's UPN in Exchange Online.",
            mailbox=mailbox,
        )
    return PermanentBackendError(
        f"{where}: {detail}; check the mailbox settings and the sync folder names.", mailbox=mailbox
    )


def error_for_response(response: requests.Response, *, mailbox: str, action: str) -> BackendError:
    """Return the syncd error for a failed Graph HTTP response."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:MAX_DETAIL_CHARS]
    return error_for_status(response.status_code, response.headers, body, mailbox=mailbox, action=action)


def malformed_response_error(problem: str, *, mailbox: str, action: str) -> BackendError:
    """Return the syncd error for a response that Graph's documented shapes do not explain."""
    return PermanentBackendError(
        f"Graph {action} for mailbox {mailbox} failed: {problem}; check the Graph base URL and any proxy "
        "between syncd and Graph.",
        mailbox=mailbox,
    )


def translate_error(exc: BaseException, *, mailbox: str, action: str) -> BackendError | None:
    """Return the syncd error for a requests exception, or None when `exc` is not one."""
    if not isinstance(exc, requests.RequestException):
        return None
    text = redact_secrets(" ".join(str(exc).split()))[:MAX_DETAIL_CHARS]
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = f"Graph {action} for mailbox {mailbox} failed"

    if isinstance(exc, requests.exceptions.SSLError):
        return PermanentBackendError(
            f"{where}: TLS error ({detail}); check the server certificate, and name the CA that issued it in tls.ca_bundle.", mailbox=mailbox
        )
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return PermanentBackendError(f"{where}: {detail}; check the Graph base URL.", mailbox=mailbox)
    if isinstance(exc, requests.exceptions.Timeout):
        detail = f"timed out: {detail}"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        detail = f"connection failed: {detail}"
    return TransientBackendError(f"{where}: {detail}; try again later.", mailbox=mailbox)


@contextmanager
def graph_errors(mailbox: str, action: str) -> Iterator[None]:
    """Translate requests exceptions raised inside the block; let every other exception pass."""
    try:
        yield
    except requests.RequestException as exc:
        translated = translate_error(exc, mailbox=mailbox, action=action)
        assert translated is not None  # every RequestException has a translation
        raise translated from exc


def error_for_token_result(result: Mapping[str, Any], *, mailbox: str) -> BackendError:
    """Return the syncd error for a token provider result without an access token.

    msal returns `error` and `error_description` (RFC 6749 codes such as
    invalid_client) instead of raising.
    """
    code = str(result.get("error") or "no_access_token")
    description = " ".join(str(result.get("error_description") or "").split())
    description = redact_secrets(description)[:MAX_DETAIL_CHARS]
    detail = f"{code}: {description}" if description else code
    where = f"Getting a Graph access token for mailbox {mailbox} failed"
    if code in TRANSIENT_TOKEN_ERRORS:
        return TransientBackendError(f"{where} ({detail}); try again later.", mailbox=mailbox)
    return BackendAuthError(
        f"{where} ({detail}); check the tenant id, the client id and the client secret or certificate.",
        mailbox=mailbox,
    )
