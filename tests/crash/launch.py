"""Run the `syncd` command with one crash point armed, so a test can kill the daemon at a chosen step.

Usage: python tests/crash/launch.py run   (any `syncd` arguments work)

The process runs the CLI entry point `syncd.cli.main:main` unchanged. The
crash point is installed from outside the production code, through
SQLAlchemy events and wrappers around three methods. CRASH_AT="POINT:N"
makes the process kill itself with SIGKILL the Nth time it reaches POINT.
Before the kill it appends "POINT N" to the file named by CRASH_LOG, so a
test can tell which point fired. Without CRASH_AT nothing is installed.

Points:

    record.begin      an item is handed to the pipeline, before any of its transactions
    record.commit     in the transaction that writes an item's ledger row, after the
                      last flush, just before COMMIT is sent
    record.committed  right after that COMMIT
    feedback.before   after a batch's commits (or at the start of a pass that retries
                      pending feedback), before the backend's apply_feedback
    feedback.after    after apply_feedback returned, before feedback_pending is cleared
    cursor.commit     in the transaction that stores a folder's sync state, just before COMMIT
    cursor.committed  right after that COMMIT
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction

from crmstore.models import ProcessedItem
from syncd.backends.base import FeedbackRequest, MailboxBackend
from syncd.pipeline import Pipeline
from syncd.sync import MailboxSync

POINTS = (
    "record.begin",
    "record.commit",
    "record.committed",
    "feedback.before",
    "feedback.after",
    "cursor.commit",
    "cursor.committed",
)

#: Key in `Session.info` of what the session's current transaction writes: "record" or "cursor".
_KIND = "crash.kind"
#: Key in `Connection.info` of the session whose transaction uses the connection.
_SESSION = "crash.session"


class CrashPoint:
    """Counts the visits of one point and kills the process at the chosen visit."""

    def __init__(self, point: str, visit: int, log_path: str | None) -> None:
        self.point = point
        self.visit = visit
        self.log_path = log_path
        self._visits = 0
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, value: str, log_path: str | None) -> CrashPoint:
        point, _, visit = value.partition(":")
        if point not in POINTS or not visit.isdigit() or int(visit) < 1:
            raise SystemExit(
                f"invalid CRASH_AT {value!r}: use POINT:N with N >= 1 and POINT one of {', '.join(POINTS)}"
            )
        return cls(point, int(visit), log_path)

    def reach(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self._visits += 1
            if self._visits != self.visit:
                return
            if self.log_path:
                descriptor = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.write(descriptor, f"{point} {self.visit}\n".encode())
                os.close(descriptor)
            os.kill(os.getpid(), signal.SIGKILL)


class FeedbackProbe:
    """A backend whose apply_feedback reaches feedback.after once the real one has returned."""

    def __init__(self, backend: MailboxBackend, crash: CrashPoint) -> None:
        self._backend = backend
        self._crash = crash

    def apply_feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackRequest]:
        applied: list[FeedbackRequest] = self._backend.apply_feedback(requests)
        self._crash.reach("feedback.after")
        return applied

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def install(crash: CrashPoint) -> None:
    """Hook the crash point into the pipeline, the pass and every SQLAlchemy session and engine."""
    in_cursor_update = threading.local()

    process = Pipeline.process

    def process_reaching(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        crash.reach("record.begin")
        return process(self, *args, **kwargs)

    apply_feedback = MailboxSync._apply_feedback

    def apply_feedback_reaching(
        self: MailboxSync, address: str, backend: MailboxBackend, requests: list[FeedbackRequest], *rest: Any
    ) -> None:
        if requests:
            crash.reach("feedback.before")
        apply_feedback(self, address, FeedbackProbe(backend, crash), requests, *rest)

    save_state = MailboxSync._save_state

    def save_state_marked(self: MailboxSync, *args: Any, **kwargs: Any) -> None:
        in_cursor_update.active = True
        try:
            save_state(self, *args, **kwargs)
        finally:
            in_cursor_update.active = False

    Pipeline.process = process_reaching  # type: ignore[method-assign]
    MailboxSync._apply_feedback = apply_feedback_reaching  # type: ignore[method-assign]
    MailboxSync._save_state = save_state_marked  # type: ignore[method-assign]

    @event.listens_for(Session, "after_begin")
    def remember_session(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
        connection.info[_SESSION] = session
        if getattr(in_cursor_update, "active", False):
            session.info[_KIND] = "cursor"

    @event.listens_for(Session, "after_flush")
    def note_ledger_rows(session: Session, _context: Any) -> None:
        # After a flush `session.new` still lists the objects it inserted.
        if any(isinstance(instance, ProcessedItem) for instance in session.new):
            session.info[_KIND] = "record"

    @event.listens_for(Engine, "commit")
    def before_commit_sent(connection: Connection) -> None:
        # Fires after the session's final flush, just before the DBAPI commit.
        session = connection.info.get(_SESSION)
        kind = session.info.get(_KIND) if session is not None else None
        if kind is not None:
            crash.reach(f"{kind}.commit")

    @event.listens_for(Session, "after_commit")
    def after_commit(session: Session) -> None:
        kind = session.info.pop(_KIND, None)
        if kind is not None:
            crash.reach(f"{kind}.committed")

    @event.listens_for(Session, "after_soft_rollback")
    def forget_kind(session: Session, _previous: SessionTransaction) -> None:
        session.info.pop(_KIND, None)


def main() -> None:
    armed = os.environ.get("CRASH_AT")
    if armed:
        install(CrashPoint.parse(armed, os.environ.get("CRASH_LOG")))

    from syncd.cli.main import main as syncd_main

    sys.argv[0] = "syncd"
    syncd_main()


if __name__ == "__main__":
    main()
