"""Translation of exchangelib, oauthlib and requests exceptions into syncd's error tree.

This module is the one place where errors of the EWS stack become
`syncd.errors.BackendError` subclasses. Every translated error names the
mailbox and the action, never a secret, and is raised `from` the original.

    SyncStateInvalidError   ErrorInvalidSyncStateData
    TransientBackendError   throttling (ErrorServerBusy, also HTTP 429 and 503),
                            time-outs and dropped connections, store or mailbox
                            moves in progress, expired OAuth tokens
    BackendAuthError        HTTP 401 (with OAuth 2.0, a 401 to the request that
                            the backend sent again with a new token), access or
                            impersonation denied, unknown mailbox, rejected
                            OAuth client or grant
    PermanentBackendError   every other exchangelib error
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests
from exchangelib import errors as ews
from oauthlib.oauth2.rfc6749 import errors as oauth

from syncd.errors import (
    BackendAuthError,
    BackendError,
    FolderNotFoundError,
    PermanentBackendError,
    SyncStateInvalidError,
    TransientBackendError,
)
from syncd.redact import redact_secrets

#: The exception base classes that `ews_errors` translates; anything else passes unchanged.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    ews.EWSError,
    oauth.OAuth2Error,
    requests.RequestException,
)

SYNC_STATE_ERRORS: tuple[type[BaseException], ...] = (ews.ErrorInvalidSyncStateData,)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ews.ErrorServerBusy,
    ews.RateLimitError,
    ews.ErrorTimeoutExpired,
    ews.ErrorInternalServerTransientError,
    ews.ErrorMailboxStoreUnavailable,
    ews.ErrorMailboxMoveInProgress,
    ews.ErrorExceededConnectionCount,
    ews.ErrorTooManyObjectsOpened,
    ews.ErrorConnectionFailed,
    ews.ErrorConnectionFailedTransientError,
    # exchangelib has already fetched a fresh token when it raises these two,
    # so the next attempt succeeds.
    oauth.TokenExpiredError,
    oauth.InvalidClientIdError,
    oauth.TemporarilyUnavailableError,
    oauth.ServerError,
)

#: Errors that would otherwise fall under AUTH_ERRORS but are configuration mistakes.
CONFIG_ERRORS: tuple[type[BaseException], ...] = (
    # requests-oauthlib sends tokens only over https.
    oauth.InsecureTransportError,
)

AUTH_ERRORS: tuple[type[BaseException], ...] = (
    ews.UnauthorizedError,
    ews.ErrorAccessDenied,
    ews.ErrorAccountDisabled,
    ews.ErrorImpersonateUserDenied,
    ews.ErrorImpersonationFailed,
    ews.ErrorNonExistentMailbox,
    # Every OAuth error that is not listed as transient above means the
    # client, its secret or its grant was rejected.
    oauth.OAuth2Error,
)

#: Maximum length, in characters, of the library's own message quoted in a translated error.
MAX_DETAIL_CHARS = 300

def translate_error(exc: BaseException, *, mailbox: str, action: str) -> BackendError | None:
    """Return the syncd error for a library exception, or None when `exc` is not one."""
    if not isinstance(exc, LIBRARY_ERRORS):
        return None
    detail = _detail(exc)
    where = f"EWS {action} for mailbox {mailbox} failed"

    if isinstance(exc, SYNC_STATE_ERRORS):
        return SyncStateInvalidError(
            f"{where}: the server rejected the stored sync state ({detail}); "
            "the folder will be synced from the start.",
            mailbox=mailbox,
        )
    if _is_tls_failure(exc):
        return PermanentBackendError(
            f"{where}: TLS error ({detail}); check the server certificate, and name the CA that issued it in tls.ca_bundle.",
            mailbox=mailbox,
        )
    if isinstance(exc, TRANSIENT_ERRORS) or isinstance(exc, requests.RequestException):
        retry_after = _retry_after(exc)
        hint = f" the server asked to wait {retry_after:g} s" if retry_after else " try again later"
        return TransientBackendError(
            f"{where}: {_transient_kind(exc)}{detail};{hint}.", mailbox=mailbox, retry_after=retry_after
        )
    if isinstance(exc, CONFIG_ERRORS):
        return PermanentBackendError(
            f"{where}: {detail}; OAuth 2.0 needs an https:// EWS endpoint.", mailbox=mailbox
        )
    if isinstance(exc, ews.ErrorFolderNotFound):
        return FolderNotFoundError(f"{where}: the folder no longer exists ({detail}).", mailbox=mailbox)
    if isinstance(exc, AUTH_ERRORS):
        return BackendAuthError(
            f"{where}: access denied ({detail}); check the service account's credentials and that it "
            "may impersonate this mailbox (ApplicationImpersonation) or has FullAccess to it.",
            mailbox=mailbox,
        )
    return PermanentBackendError(
        f"{where}: {detail}; check the mailbox address and the EWS endpoint settings.",
        mailbox=mailbox,
    )


@contextmanager
def ews_errors(mailbox: str, action: str, *, sync_state_sent: bool = False) -> Iterator[None]:
    """Translate library exceptions raised inside the block; let every other exception pass.

    Set `sync_state_sent` around a SyncFolderItems call that sent a stored
    state: exchangelib 5.6 reads m:SyncState before the response code, so a
    rejected state without that element surfaces as AttributeError.
    """
    try:
        yield
    except BackendError:
        raise
    except LIBRARY_ERRORS as exc:
        translated = translate_error(exc, mailbox=mailbox, action=action)
        assert translated is not None  # LIBRARY_ERRORS is what translate_error accepts
        raise translated from exc
    except AttributeError as exc:
        if not sync_state_sent:
            raise
        # NOTE: a busy signal inside a SyncFolderItems response message without
        # m:SyncState takes this path too; the cost is one needless full sync.
        raise SyncStateInvalidError(
            f"EWS {action} for mailbox {mailbox} failed: the response carried no sync state "
            f"({type(exc).__name__}: {exc}); the folder will be synced from the start.",
            mailbox=mailbox,
        ) from exc


def _is_tls_failure(exc: BaseException) -> bool:
    # exchangelib 5.6 turns a failed TLS handshake into a TransportError
    # raised while handling requests' SSLError.
    if isinstance(exc, ews.TransportError):
        return isinstance(exc.__context__, requests.exceptions.SSLError)
    return isinstance(exc, requests.exceptions.SSLError)


def _transient_kind(exc: BaseException) -> str:
    """Return "connection failed: " or "timed out: " for a transport failure, else "".

    exchangelib 5.6 reports both as ErrorTimeoutExpired, raised while
    handling the requests exception. That name alone would call a refused
    or dropped connection a time-out.
    """
    cause = exc.__context__ if isinstance(exc, ews.ErrorTimeoutExpired) else exc
    if isinstance(cause, requests.exceptions.Timeout):
        return "timed out: "
    if isinstance(cause, requests.exceptions.ConnectionError):
        return "connection failed: "
    return ""


def _retry_after(exc: BaseException) -> float | None:
    # exchangelib fills in its own RETRY_WAIT when the server gave no hint;
    # the backend sets that to 0, so a falsy value means "no hint".
    if isinstance(exc, ews.ErrorServerBusy):
        return float(exc.back_off) if exc.back_off else None
    if isinstance(exc, ews.RateLimitError):
        return float(exc.wait) if exc.wait else None
    return None


def _detail(exc: BaseException) -> str:
    text = redact_secrets(" ".join(str(exc).split()))
    if len(text) > MAX_DETAIL_CHARS:
        text = text[:MAX_DETAIL_CHARS] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
