"""The driver that takes one mailbox item through parse, detect, resolve and record.

Each item is one unit of work: the correspondence or unmatched row and the
processed-item ledger entry commit together or not at all. When a stage
breaks on a mail, the transaction is rolled back and the mail is kept as
failed with the stage and the error, and the next item goes on. Errors of the
database itself are not swallowed: they end the pass so that the cursor does
not move past items that were not recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crmstore import db
from crmstore.refs import Ref
from syncd.backends.base import Item
from syncd.detect import find_codes
from syncd.logsetup import log_context
from syncd.mail import Outcome, ParsedMail, UnmatchedReason
from syncd.parse import is_unreadable, limit_notes, parse_item
from syncd.record import (
    Source,
    feedback_outcome,
    find_ledger_entry,
    record_filed,
    record_unfiled,
)
from syncd.resolve import resolve
from syncd.settings import LimitSettings, Settings

log = logging.getLogger("syncd.pipeline")


@dataclass(frozen=True)
class ItemResult:
    """What became of one item.

    `already_processed` is true when the ledger had the item before this
    call; `recorded_outcome` is then the outcome recorded the first time,
    which is what the user should see on the item.
    """

    outcome: Outcome
    recorded_outcome: Outcome
    already_processed: bool = False
    feedback_pending: bool = True
    correspondence_id: int | None = None
    unmatched_id: int | None = None


class Pipeline:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        limits: LimitSettings,
        local_timezone: tzinfo | None = None,
    ) -> None:
        self.sessions = sessions
        self.limits = limits
        self.local_timezone = local_timezone

    @classmethod
    def from_settings(cls, sessions: sessionmaker[Session], settings: Settings) -> Pipeline:
        return cls(sessions, settings.limits, ZoneInfo(settings.local_timezone))

    def process(
        self, item: Item, source: Source, *, inbound: bool = False, mapped_to: Ref | None = None
    ) -> ItemResult:
        """Record one item exactly once and return its outcome.

        `mapped_to` is the record of the mapped folder the item lies in.
        """
        with log_context(item=source.item_id):
            return self._process_retrying(item, source, inbound=inbound, mapped_to=mapped_to)

    def _process_retrying(self, item: Item, source: Source, *, inbound: bool, mapped_to: Ref | None) -> ItemResult:
        try:
            return self._process_once(item, source, inbound=inbound, mapped_to=mapped_to)
        except IntegrityError:
            # Another node or process recorded the same item or mail between
            # our read and our insert; on the second try the read sees it.
            log.info("item %s in %s was recorded concurrently; reading it again", source.item_id, source.mailbox)
            return self._process_once(item, source, inbound=inbound, mapped_to=mapped_to)

    def _process_once(self, item: Item, source: Source, *, inbound: bool, mapped_to: Ref | None) -> ItemResult:
        with self.sessions() as session, session.begin():
            entry = find_ledger_entry(session, source)
            if entry is not None:
                log.debug("item %s in %s was already recorded", source.item_id, source.mailbox)
                return ItemResult(
                    outcome=Outcome.DUPLICATE,
                    recorded_outcome=feedback_outcome(Outcome(entry.outcome), entry.unmatched_id),
                    already_processed=True,
                    feedback_pending=entry.feedback_pending,
                    correspondence_id=entry.correspondence_id,
                    unmatched_id=entry.unmatched_id,
                )

            rejection = self._reject_unreadable(item)
            if rejection is not None:
                reason, detail = rejection
                return self._keep_failed(session, item, source, None, reason, detail)

        return self._run_stages(item, source, inbound=inbound, mapped_to=mapped_to)

    def _reject_unreadable(self, item: Item) -> tuple[UnmatchedReason, str] | None:
        size = item.size if item.size is not None else len(item.raw or b"")
        if size > self.limits.max_message_bytes:
            return UnmatchedReason.TOO_LARGE, (
                f"{size} bytes is over limits.max_message_bytes = {self.limits.max_message_bytes}"
            )
        if item.raw is None:
            return UnmatchedReason.ERROR, item.error or "the backend returned no content"
        return None

    def _run_stages(self, item: Item, source: Source, *, inbound: bool, mapped_to: Ref | None) -> ItemResult:
        assert item.raw is not None
        mail: ParsedMail | None = None
        stage = "parse"
        try:
            mail = parse_item(
                item.raw,
                item.format,
                max_depth=self.limits.max_nesting_depth,
                max_html_chars=self.limits.max_html_chars,
            )
            if is_unreadable(mail):
                with self.sessions() as session, session.begin():
                    return self._keep_failed(
                        session, item, source, None, UnmatchedReason.PARSE_ERROR,
                        "parse: nothing readable: " + "; ".join(mail.defects[:3]),
                    )
            with self.sessions() as session, session.begin():
                stage = "detect"
                candidates = find_codes(mail)
                stage = "resolve"
                resolution = resolve(
                    session, mail, candidates, inbound=inbound, local_timezone=self.local_timezone,
                    mapped_to=mapped_to,
                )
                stage = "record"
                if resolution.filed:
                    outcome, correspondence = record_filed(
                        session, resolution, item.raw, item.format, source
                    )
                    log.info(
                        "%s: %s from %s item %s as correspondence %d (%d links)",
                        _label(resolution.mail), outcome.value, source.mailbox, source.item_id,
                        correspondence.id, len(resolution.links),
                    )
                    return ItemResult(outcome, outcome, correspondence_id=correspondence.id)

                outcome, entry = record_unfiled(
                    session,
                    mail=resolution.mail,
                    raw=item.raw,
                    raw_format=item.format,
                    source=source,
                    outcome=Outcome.UNMATCHED,
                    reason=resolution.reason.value,
                    detail=_unmatched_detail(resolution.unknown_codes, mail),
                )
                log.info(
                    "%s: unmatched (%s) from %s item %s, queued as %d",
                    _label(resolution.mail), resolution.reason.value, source.mailbox,
                    source.item_id, entry.id,
                )
                return ItemResult(outcome, feedback_outcome(outcome, entry.id), unmatched_id=entry.id)
        except (IntegrityError, OperationalError):
            raise
        except Exception as exc:
            # The one broad handler of the pipeline: whatever a stage does
            # with a hostile or broken mail, the mail is kept and the pass
            # goes on with the next item.
            error = _describe(exc)
            log.warning(
                "%s: %s failed on item %s in %s: %s",
                _label(mail), stage, source.item_id, source.mailbox, error,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            reason = UnmatchedReason.PARSE_ERROR if stage == "parse" else UnmatchedReason.ERROR
            with self.sessions() as session, session.begin():
                return self._keep_failed(session, item, source, mail, reason, f"{stage}: {error}")

    def _keep_failed(
        self,
        session: Session,
        item: Item,
        source: Source,
        mail: ParsedMail | None,
        reason: UnmatchedReason,
        detail: str,
    ) -> ItemResult:
        # An oversize item's bytes are not stored; the backend leaves the
        # item itself where it is, so it is not lost either.
        raw = None if reason is UnmatchedReason.TOO_LARGE else item.raw
        outcome, entry = record_unfiled(
            session,
            mail=mail,
            raw=raw,
            raw_format=item.format,
            source=source,
            outcome=Outcome.FAILED,
            reason=reason.value,
            detail=detail,
        )
        log.warning(
            "%s: failed (%s) from %s item %s, kept as %d: %s",
            _label(mail), reason.value, source.mailbox, source.item_id, entry.id, detail,
        )
        return ItemResult(outcome, feedback_outcome(outcome, entry.id), unmatched_id=entry.id)


def _describe(exc: Exception) -> str:
    # A database error's own text carries the statement's parameters,
    # that is the mail's text; the driver's message names the problem.
    if isinstance(exc, DBAPIError):
        return db.describe_error(exc)
    return f"{type(exc).__name__}: {exc}"


def _unmatched_detail(unknown_codes: list[str], mail: ParsedMail) -> str:
    """Return the unknown codes, then the limits that left part of the mail unread."""
    codes = [", ".join(unknown_codes)] if unknown_codes else []
    return "; ".join(codes + limit_notes(mail))


def _label(mail: ParsedMail | None) -> str:
    if mail is None or not mail.message_id:
        return "<no Message-ID>"
    return f"<{mail.message_id}>"
