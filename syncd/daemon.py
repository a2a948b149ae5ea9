"""The long-running daemon: one scheduled job per enabled mailbox.

APScheduler runs each mailbox's pass at the configured interval with jitter,
never two passes of one mailbox at once. A reconcile job picks up
enrolments, removals and disabled mailboxes without a restart. SIGTERM and
SIGINT let the pass in hand finish its current item, then the daemon exits
0; SIGHUP reloads the settings.

Every node schedules every mailbox, and a job syncs only while its node
holds the mailbox's lease (see `syncd.lease`). A job that finds the lease
held elsewhere comes back when that lease runs out, so a dead node's
mailboxes move within the lease time.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from crmstore import db
from crmstore.models import Mailbox
from syncd import metrics
from syncd.backends import open_backend
from syncd.backends.base import MailboxBackend
from syncd.errors import ConfigError, SyncdError
from syncd.lease import Leases
from syncd.logsetup import configure_logging
from syncd.notify import notify, watchdog_interval
from syncd.pipeline import Pipeline
from syncd.settings import Settings, load_settings
from syncd.sync import DATABASE_ERRORS, MailboxSync

log = logging.getLogger("syncd.daemon")

JOB_PREFIX = "mailbox:"


class Daemon:
    def __init__(self, config_path: str | None, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.engine = db.create_store_engine(settings.resolved_database_url())
        if not db.is_current(self.engine):
            url = db.masked_url(settings.resolved_database_url())
            raise ConfigError(f"the database {url} is not initialised or is outdated: run `syncd db upgrade`")
        self.sessions = db.session_factory(self.engine)
        self.leases = Leases(
            self.sessions, settings.sync.lease_seconds, single_node=self.engine.dialect.name == "sqlite"
        )
        #: Mailboxes in a pass on this node; their leases are not handed back mid-pass.
        self.busy: set[str] = set()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.backends: dict[str, tuple[tuple[Any, ...], MailboxBackend]] = {}
        self.retired: list[MailboxBackend] = []
        self.lock = threading.Lock()
        #: Jobs of this daemon running now; the shutdown waits for none.
        self.jobs_running = 0
        self.jobs_done = threading.Condition()
        self._build_syncer()

    def _build_syncer(self) -> None:
        self.syncer = MailboxSync(
            self.sessions, Pipeline.from_settings(self.sessions, self.settings), self.settings.sync, self.stop
        )

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        endpoint = metrics.serve(self.settings.metrics)
        self._install_signal_handlers()
        self.leases.join()
        heartbeat_thread = threading.Thread(target=self._renew_leases, name="lease heartbeat", daemon=True)
        heartbeat_thread.start()
        self.scheduler.start()
        self.reconcile()
        self.scheduler.add_job(
            self._reconcile_job, IntervalTrigger(seconds=self.settings.sync.enrolment_check_seconds), id="reconcile",
            name="pick up enrolment changes", max_instances=1, coalesce=True,
        )
        log.info(
            "syncd started as node %s: database %s, mailboxes scheduled: %d",
            self.leases.node_id, db.masked_url(self.settings.resolved_database_url()), len(self._mailbox_jobs()),
        )
        notify("READY=1", f"STATUS={self._status_line()}")

        heartbeat = watchdog_interval() or 10.0
        while not self.stop.wait(heartbeat):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload()
            # The watchdog only hears from a daemon whose scheduler still runs.
            if self.scheduler.running:
                notify("WATCHDOG=1", f"STATUS={self._status_line()}")

        log.info("syncd stopping: finishing the item in hand")
        notify("STOPPING=1", "STATUS=stopping")
        # shutdown(wait=True) holds the scheduler's job store lock while it
        # waits for running jobs, and a job that reschedules itself needs that
        # lock: wait for the jobs first. Jobs started from now on see the
        # stop and return before they touch the scheduler.
        with self.jobs_done:
            self.jobs_done.wait_for(lambda: self.jobs_running == 0)
        self.scheduler.shutdown(wait=True)
        if endpoint is not None:
            endpoint.close()
        heartbeat_thread.join()
        self._leave()
        for backend in [*(backend for _, backend in self.backends.values()), *self.retired]:
            backend.close()
        self.engine.dispose()
        log.info("syncd stopped")
        return 0

    @contextmanager
    def _job(self) -> Iterator[bool]:
        """Count a scheduler job as running; yield whether it should go on (false once stopping)."""
        with self.jobs_done:
            self.jobs_running += 1
        try:
            yield not self.stop.is_set()
        finally:
            with self.jobs_done:
                self.jobs_running -= 1
                self.jobs_done.notify_all()

    def _reconcile_job(self) -> None:
        with self._job() as going_on:
            if going_on:
                self.reconcile()

    def reconcile(self) -> None:
        """Schedule a job for every enabled mailbox and drop jobs of the others."""
        with self.sessions() as session:
            enabled = list(session.scalars(select(Mailbox.address).where(Mailbox.enabled.is_(True))))
        scheduled = set(self._mailbox_jobs())
        for address in sorted(set(enabled) - scheduled):
            self._schedule(address)
        for address in sorted(scheduled - set(enabled)):
            self.scheduler.remove_job(JOB_PREFIX + address)
            metrics.forget_mailbox(address)
            log.info("mailbox %s: no longer enrolled or enabled; job removed", address)

    def _schedule(self, address: str) -> None:
        sync = self.settings.sync
        self.scheduler.add_job(
            self._sync_mailbox,
            IntervalTrigger(seconds=sync.interval_seconds, jitter=sync.jitter_seconds),
            args=[address],
            id=JOB_PREFIX + address,
            name=f"sync {address}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=sync.interval_seconds,
            next_run_time=datetime.now(UTC),
        )
        log.info("mailbox %s: scheduled every %d s", address, sync.interval_seconds)

    def _mailbox_jobs(self) -> list[str]:
        return [job.id[len(JOB_PREFIX):] for job in self.scheduler.get_jobs() if job.id.startswith(JOB_PREFIX)]

    def _sync_mailbox(self, address: str) -> None:
        with self._job() as going_on:
            if going_on:
                self._sync_mailbox_pass(address)

    def _sync_mailbox_pass(self, address: str) -> None:
        try:
            claim = self.leases.acquire(address)
            metrics.lease_held(address, claim.held)
            if not claim.held:
                if claim.owner is not None and claim.expires_at is not None:
                    self._come_back_at(address, claim.expires_at)
                return
            with self.lock:
                self.busy.add(address)
            try:
                backend = self._backend(address)
                if backend is not None:
                    self.syncer.sync(address, backend, fence=self.leases.renew)
            finally:
                with self.lock:
                    self.busy.discard(address)
        except SyncdError as exc:
            # Already logged and stored on the mailbox by the sync; the
            # other mailboxes go on and this one is tried at its next run.
            log.debug("mailbox %s: pass ended with %s", address, exc)
        except DATABASE_ERRORS as exc:
            # The lease or the enrolment could not be read: an outage, not a bug.
            log.error(
                "mailbox %s: database unavailable (%s); will retry at the next run",
                address, db.describe_error(exc),
            )
        except Exception:
            log.exception("mailbox %s: pass failed unexpectedly", address)

    def _come_back_at(self, address: str, expires_at: datetime) -> None:
        """Move the mailbox's next run to just after another node's lease runs out."""
        job = self.scheduler.get_job(JOB_PREFIX + address)
        # A little jitter, so that the surviving nodes do not all race at once.
        when = expires_at + timedelta(seconds=random.uniform(0.1, 1.0))
        if when <= datetime.now(UTC):
            return
        if job is not None and job.next_run_time is not None and when < job.next_run_time:
            job.modify(next_run_time=when)

    def _renew_leases(self) -> None:
        """Renew this node's leases every third of the lease time, on a thread of its own.

        A thread of its own, not a scheduler job, keeps the leases alive
        while every worker is busy with a long pass.
        """
        period = self.settings.sync.lease_seconds / 3
        while not self.stop.wait(period):
            try:
                with self.lock:
                    busy = set(self.busy)
                self.leases.heartbeat(busy)
                for address in self._mailbox_jobs():
                    metrics.lease_held(address, address in self.leases.held)
            except Exception as exc:
                # Most often a database outage, which fails the passes too. The
                # thread goes on, so the leases live on once the database is back.
                log.error(
                    "node %s: lease renewal failed, trying again in %.0f s: %s",
                    self.leases.node_id, period, db.describe_error(exc),
                )

    def _leave(self) -> None:
        try:
            self.leases.leave()
        except Exception as exc:
            log.error(
                "node %s: handing back leases failed, so they run out in %d s: %s",
                self.leases.node_id, self.settings.sync.lease_seconds, db.describe_error(exc),
            )

    def _backend(self, address: str) -> MailboxBackend | None:
        """Return the mailbox's backend, rebuilt only when its enrolment changed.

        Reusing one backend per mailbox keeps connection pools and tokens for
        the life of the process.
        """
        with self.sessions() as session:
            mailbox = session.scalar(select(Mailbox).where(Mailbox.address == address))
            if mailbox is None:
                return None
            fingerprint = (mailbox.backend, repr(sorted(mailbox.config.items())))
            with self.lock:
                cached = self.backends.get(address)
                if cached is not None and cached[0] == fingerprint:
                    return cached[1]
                if cached is not None:
                    self.retired.append(cached[1])
                backend = open_backend(mailbox, self.settings)
                self.backends[address] = (fingerprint, backend)
                return backend

    def _reload(self) -> None:
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("settings not reloaded, keeping the old ones: %s", exc)
            return
        if settings.resolved_database_url() != self.settings.resolved_database_url():
            log.warning("the database URL changed in the settings; restart syncd to use the new database")
        self.settings = settings
        self._build_syncer()
        for address in self._mailbox_jobs():
            self.scheduler.remove_job(JOB_PREFIX + address)
        self.scheduler.reschedule_job(
            "reconcile", trigger=IntervalTrigger(seconds=settings.sync.enrolment_check_seconds)
        )
        with self.lock:
            # A pass may still be using an old backend, so it is closed at
            # shutdown rather than now.
            self.retired.extend(backend for _, backend in self.backends.values())
            self.backends.clear()
        self.reconcile()
        configure_logging(settings.log_level, settings.log_format)
        log.info("settings reloaded")

    def _status_line(self) -> str:
        with self.sessions() as session:
            states = list(session.scalars(select(Mailbox.state).where(Mailbox.enabled.is_(True))))
        failing = states.count("failing")
        return f"{len(states)} mailboxes, {failing} failing"

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop.set()

        # The reload happens at the next heartbeat, within 10 s or half the
        # watchdog interval, in the main thread rather than in the handler.
        def request_reload(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_reload)


def run(config_path: str | None) -> int:
    """Run the daemon with the settings at `config_path`; return the exit status."""
    return Daemon(config_path, load_settings(config_path)).run()
