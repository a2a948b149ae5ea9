"""Exceptions that syncd raises, as one tree.

    SyncdError
    ├── ConfigError            a setting or option has an invalid value
    ├── DatabaseUnavailableError  the store went away mid-pass: retried at the next run
    └── BackendError           a mailbox backend failed
        ├── TransientBackendError   throttling, time-outs, resets: retried
        ├── SyncStateInvalidError   the stored cursor is rejected: the folder restarts
        └── PermanentBackendError   retrying will not help until an admin acts
            ├── BackendAuthError    credentials or permissions are rejected
            └── FolderNotFoundError a stored sync folder is gone

Outcomes of a mail (filed, unmatched, duplicate) are not exceptions; see
`syncd.mail.Outcome`. Bad input to the CRM store raises the errors of
`crmstore.errors` (NotFoundError, InvalidInputError), which the CLI reports
the same way.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base class of every error syncd raises on purpose."""


class ConfigError(SyncdError):
    """A setting, environment variable or option has an invalid value."""


class DatabaseUnavailableError(SyncdError):
    """The database could not be reached or dropped the connection during a pass.

    The pass ends where it is; the cursor has not moved past anything
    unrecorded, so the next pass picks up from there.
    """


class BackendError(SyncdError):
    """A mailbox backend failed; `mailbox` names the mailbox when known."""

    def __init__(self, message: str, *, mailbox: str | None = None) -> None:
        super().__init__(message)
        self.mailbox = mailbox


class TransientBackendError(BackendError):
    """The server is busy or unreachable for now; the call may be retried.

    `retry_after` is the wait in seconds that the server asked for, or None
    when it gave no hint.
    """

    def __init__(
        self, message: str, *, mailbox: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, mailbox=mailbox)
        self.retry_after = retry_after


class SyncStateInvalidError(BackendError):
    """The server rejected the stored sync state; the folder must sync from scratch."""


class PermanentBackendError(BackendError):
    """Retrying will not help until an admin changes something."""


class BackendAuthError(PermanentBackendError):
    """The server rejected the credentials or the permissions they carry."""


class FolderNotFoundError(PermanentBackendError):
    """A sync folder that syncd stored no longer exists; it has to be found or created again."""
