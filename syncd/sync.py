"""One pass over one mailbox: folders, new items, the pipeline, the cursor, feedback.

The cursor of a folder is stored only after every item of the batch it
covers has been recorded, and feedback is shown only after that, so a crash
at any point replays at most one batch, which the processed-item ledger
then skips. A pass scans the sync folders and then the mapped folders,
each of which hands its record to the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_random_exponential

from crmstore import db
from crmstore.models import Mailbox, MailboxFolder, ProcessedItem, utcnow
from crmstore.refs import Ref
from syncd import folders as stored
from syncd import metrics
from syncd.backends.base import Batch, FeedbackRequest, Folder, MailboxBackend
from syncd.errors import (
    BackendError,
    DatabaseUnavailableError,
    FolderNotFoundError,
    SyncStateInvalidError,
    TransientBackendError,
)
from syncd.folders import ScannedFolder
from syncd.lease import LeaseLostError
from syncd.logsetup import log_context
from syncd.mail import Outcome
from syncd.pipeline import ItemResult, Pipeline
from syncd.record import Source, feedback_outcome, find_ledger_entry
from syncd.settings import SyncSettings

log = logging.getLogger("syncd.sync")

T = TypeVar("T")

#: Called with the mailbox address before each batch and cursor update;
#: raises LeaseLostError when this node may no longer sync the mailbox.
Fence = Callable[[str], None]


def _unfenced(_address: str) -> None:
    return None


#: Feedback retried from earlier passes per pass; the rest waits for the next one.
MAX_PENDING_FEEDBACK = 500

#: Errors of the database connection itself (server down, connection cut,
#: SQLite file locked), as opposed to errors in what syncd asked of it.
DATABASE_ERRORS = (OperationalError, InterfaceError)


@dataclass
class Counts:
    """Outcomes of the items a pass saw; seen always equals the sum of the rest."""

    seen: int = 0
    filed: int = 0
    unmatched: int = 0
    failed: int = 0
    duplicates: int = 0

    def add(self, outcome: Outcome) -> None:
        self.seen += 1
        if outcome is Outcome.FILED:
            self.filed += 1
        elif outcome is Outcome.UNMATCHED:
            self.unmatched += 1
        elif outcome is Outcome.FAILED:
            self.failed += 1
        else:
            self.duplicates += 1

    def merge(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class PassRun:
    """State of one pass over one mailbox, shared by the steps of the pass."""

    address: str
    backend: MailboxBackend
    inbound: bool
    counts: Counts
    fence: Fence


class Stopped(Exception):
    """The pass ended early because the daemon is shutting down."""


class MailboxSync:
    """Runs passes over mailboxes through their backends."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        pipeline: Pipeline,
        settings: SyncSettings,
        stop: threading.Event | None = None,
    ) -> None:
        self.sessions = sessions
        self.pipeline = pipeline
        self.settings = settings
        self.stop = stop or threading.Event()

    def sync(self, address: str, backend: MailboxBackend, fence: Fence = _unfenced) -> Counts:
        """Run one pass over the mailbox `address`; record its state, then re-raise any error.

        `fence` is checked before each batch and cursor update, so a node that
        lost its lease on the mailbox stops before it writes more.
        """
        with log_context(mailbox=address):
            return self._pass(address, backend, fence)

    def _pass(self, address: str, backend: MailboxBackend, fence: Fence) -> Counts:
        started = time.monotonic()
        counts = Counts()
        try:
            with self.sessions() as session:
                mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
                if mailbox is None:
                    raise ValueError(f"mailbox {address!r} is not enrolled")
                inbound = mailbox.role == "inbound"
        except DATABASE_ERRORS as exc:
            raise self._database_unavailable(address, exc, counts) from exc

        try:
            roots = self._stored_folders(address, backend.kind) or self._ensure_folders(address, backend)
            scanned = [ScannedFolder(folder) for folder in roots]
            scanned += self._mapped_folders(address, backend, roots)
            self._retry_pending_feedback(address, backend)
            run = PassRun(address, backend, inbound, counts, fence)
            for target in scanned:
                try:
                    self._sync_folder_restarting(run, target)
                except FolderNotFoundError as exc:
                    # The user deleted or renamed the folder: find or create
                    # it again and sync it from the start.
                    log.warning("mailbox %s: %s; looking for folder %r again", address, exc, target.folder.name)
                    found = self._find_again(address, backend, target)
                    if found is not None:
                        self._sync_folder_restarting(run, found)
        except Stopped:
            log.info("mailbox %s: pass stopped for shutdown after %d items", address, counts.seen)
            self._set_status(address, error=None, finished=False)
            return counts
        except LeaseLostError as exc:
            # The node that took the mailbox goes on from the stored cursor.
            log.warning("%s; pass ends after %d items", exc, counts.seen)
            return counts
        except BackendError as exc:
            log.error("mailbox %s: pass failed after %d items: %s", address, counts.seen, exc)
            self._set_status(address, error=str(exc), finished=False)
            metrics.pass_finished(address, time.monotonic() - started, ok=False)
            raise
        except DATABASE_ERRORS as exc:
            metrics.pass_finished(address, time.monotonic() - started, ok=False)
            raise self._database_unavailable(address, exc, counts) from exc

        self._set_status(address, error=None, finished=True)
        metrics.pass_finished(address, time.monotonic() - started, ok=True)
        log.info(
            "mailbox %s: pass done in %.1f s: seen %d, filed %d, unmatched %d, failed %d, duplicates %d",
            address, time.monotonic() - started, counts.seen, counts.filed,
            counts.unmatched, counts.failed, counts.duplicates,
        )
        return counts

    def _database_unavailable(self, address: str, exc: Exception, counts: Counts) -> DatabaseUnavailableError:
        """Log a database outage as the expected fault it is, and return the error that ends the pass.

        The item in hand was rolled back and the cursor was stored only for
        whole batches, so the next pass goes on where this one stopped.
        """
        detail = db.describe_error(exc)
        log.error(
            "mailbox %s: database unavailable (%s); pass ended after %d items, will retry at the next run",
            address, detail, counts.seen,
        )
        message = f"database unavailable ({detail}); the pass will be retried at the next run"
        try:
            self._set_status(address, error=message, finished=False)
        except DATABASE_ERRORS:
            # Still down: the status is written by the next pass that reaches it.
            pass
        return DatabaseUnavailableError(message)

    def _ensure_folders(self, address: str, backend: MailboxBackend) -> list[Folder]:
        folders = self._retrying(address, lambda: [report.folder for report in backend.ensure_folders()])
        self._save_folders(address, backend.kind, folders)
        return folders

    def _stored_folders(self, address: str, kind: str) -> list[Folder]:
        """Return the sync folders found on an earlier pass, so an idle pass costs one request per folder."""
        with self.sessions() as session:
            return stored.sync_folders(session, address, kind)

    def _mapped_folders(self, address: str, backend: MailboxBackend, roots: list[Folder]) -> list[ScannedFolder]:
        """Return the mapped folders to scan; those another backend found are found again by name.

        After `syncd mailbox migrate` the stored folder ids are those of the
        old backend, so each mapped folder is looked up below the first sync
        folder once and then scanned from the start.
        """
        with self.sessions() as session:
            rows = [(row.id, row.folder_key, row.name, row.backend, stored.mapped_ref(row))
                    for row in stored.mapped_folders(session, address)]
        scanned = []
        for row_id, key, name, kind, ref in rows:
            folder = Folder(key, name)
            if kind != backend.kind:
                folder = self._ensure_subfolder(address, backend, roots[0], name)
                with self.sessions() as session, session.begin():
                    stored.move_mapped_folder(session, row_id, folder, backend.kind)
            scanned.append(ScannedFolder(folder, ref))
        return scanned

    def _find_again(self, address: str, backend: MailboxBackend, lost: ScannedFolder) -> ScannedFolder | None:
        """Find or create a vanished folder again; return it, or None when the backend has no folder of that name."""
        if lost.mapped_to is None:
            with self.sessions() as session, session.begin():
                stored.forget_sync_folders(session, address)
            found = [folder for folder in self._ensure_folders(address, backend) if folder.name == lost.folder.name]
            return ScannedFolder(found[0]) if found else None

        root = (self._stored_folders(address, backend.kind) or self._ensure_folders(address, backend))[0]
        folder = self._ensure_subfolder(address, backend, root, lost.folder.name)
        with self.sessions() as session, session.begin():
            row = session.scalar(_folder_row(address, lost.folder))
            if row is not None:
                stored.move_mapped_folder(session, row.id, folder, backend.kind)
        return ScannedFolder(folder, lost.mapped_to)

    def _ensure_subfolder(self, address: str, backend: MailboxBackend, root: Folder, name: str) -> Folder:
        folder = self._retrying(address, lambda: backend.ensure_subfolder(root, name).folder)
        log.info("mailbox %s: mapped folder %r found again; scanning it from the start", address, name)
        return folder

    def _sync_folder_restarting(self, run: PassRun, target: ScannedFolder) -> None:
        folder = target.folder
        try:
            self._retrying(run.address, lambda: self._sync_folder(run, target))
        except SyncStateInvalidError as exc:
            # The server forgot our cursor. Starting the folder from scratch
            # replays items already recorded, which the ledger skips.
            log.warning(
                "mailbox %s folder %s: sync state rejected (%s); syncing the folder from scratch",
                run.address, folder.name, exc,
            )
            run.fence(run.address)
            self._save_state(run.address, folder, None)
            self._retrying(run.address, lambda: self._sync_folder(run, target))

    def _sync_folder(self, run: PassRun, target: ScannedFolder) -> None:
        folder = target.folder
        state = self._load_state(run.address, run.backend.kind, folder)

        def known(item_id: str) -> bool:
            with self.sessions() as session:
                return find_ledger_entry(session, Source(run.address, folder.key, folder.name, item_id)) is not None

        for batch in run.backend.batches(folder, state, known):
            run.fence(run.address)
            self._record_batch(run, batch, target.mapped_to)
            if batch.state is not None:
                run.fence(run.address)
                self._save_state(run.address, folder, batch.state)

    def _record_batch(self, run: PassRun, batch: Batch, mapped_to: Ref | None) -> None:
        feedback: list[FeedbackRequest] = []
        stopped = False
        for item in batch.items:
            if self.stop.is_set():
                stopped = True
                break
            source = Source(run.address, batch.folder.key, batch.folder.name, item.item_id)
            result: ItemResult = self.pipeline.process(item, source, inbound=run.inbound, mapped_to=mapped_to)
            run.counts.add(result.outcome)
            metrics.item_recorded(run.address, result.outcome)
            if result.feedback_pending:
                feedback.append(FeedbackRequest(batch.folder.key, item.item_id, result.recorded_outcome))

        self._apply_feedback(run.address, run.backend, feedback)
        if stopped:
            raise Stopped()

    def _apply_feedback(
        self, address: str, backend: MailboxBackend, requests: list[FeedbackRequest]
    ) -> None:
        if not requests:
            return
        try:
            applied = backend.apply_feedback(requests)
        except BackendError as exc:
            # The filing stands; the ledger keeps the feedback pending and
            # the next pass tries again.
            log.warning(
                "mailbox %s: feedback on %d items failed, will try again: %s", address, len(requests), exc
            )
            return

        with self.sessions() as session, session.begin():
            for request in applied:
                session.execute(
                    update(ProcessedItem)
                    .where(
                        ProcessedItem.mailbox == address,
                        ProcessedItem.folder_key == request.folder_key,
                        ProcessedItem.item_id == request.item_id,
                    )
                    .values(feedback_pending=False)
                )

    def _retry_pending_feedback(self, address: str, backend: MailboxBackend) -> None:
        with self.sessions() as session:
            rows = session.execute(
                select(
                    ProcessedItem.folder_key, ProcessedItem.item_id, ProcessedItem.outcome, ProcessedItem.unmatched_id
                )
                .where(ProcessedItem.mailbox == address, ProcessedItem.feedback_pending.is_(True))
                .order_by(ProcessedItem.id)
                .limit(MAX_PENDING_FEEDBACK)
            ).all()
        requests = [
            FeedbackRequest(key, item_id, feedback_outcome(Outcome(outcome), unmatched_id))
            for key, item_id, outcome, unmatched_id in rows
        ]
        if requests:
            log.info("mailbox %s: retrying feedback on %d items", address, len(requests))
            self._apply_feedback(address, backend, requests)

    def _retrying(self, address: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying throttling and time-outs with capped, jittered back-off.

        The wait is at least what the server asked for (BackOffMilliseconds,
        Retry-After) and otherwise grows exponentially.
        """
        exponential = wait_random_exponential(multiplier=1, max=self.settings.max_backoff_seconds)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            hinted = getattr(error, "retry_after", None) or 0.0
            return min(max(hinted, exponential(state)), self.settings.max_backoff_seconds)

        def before_sleep(state: RetryCallState) -> None:
            metrics.backend_retry(address)
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "mailbox %s: %s; try %d of %d in %.1f s",
                address, error, state.attempt_number + 1, self.settings.max_attempts,
                state.next_action.sleep if state.next_action else 0.0,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientBackendError),
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=wait,
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(call)

    def _sleep(self, seconds: float) -> None:
        # Waiting on the stop event lets SIGTERM end a long back-off at once.
        if self.stop.wait(seconds):
            raise Stopped()

    def _save_folders(self, address: str, kind: str, folders: list[Folder]) -> None:
        with self.sessions() as session, session.begin():
            stored.save_sync_folders(session, address, kind, folders)

    def _load_state(self, address: str, kind: str, folder: Folder) -> str | None:
        with self.sessions() as session:
            row = session.scalar(_folder_row(address, folder))
            # A cursor of another backend means nothing to this one.
            if row is None or row.backend != kind:
                return None
            return row.sync_state

    def _save_state(self, address: str, folder: Folder, state: str | None) -> None:
        with self.sessions() as session, session.begin():
            row = session.scalar(_folder_row(address, folder))
            if row is not None:
                row.sync_state = state
                row.updated_at = utcnow()

    def _set_status(self, address: str, *, error: str | None, finished: bool) -> None:
        with self.sessions() as session, session.begin():
            mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
            if mailbox is None:
                return
            now = utcnow()
            mailbox.last_sync_at = now
            if finished:
                mailbox.last_success_at = now
            if error is not None:
                mailbox.state = "failing"
                mailbox.last_error = error
            elif finished:
                mailbox.state = "ok"
                mailbox.last_error = None


def _folder_row(address: str, folder: Folder) -> Select[MailboxFolder]:
    return (
        select(MailboxFolder)
        .join(Mailbox)
        .where(Mailbox.address == address, MailboxFolder.folder_key == folder.key)
    )
