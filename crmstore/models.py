"""Tables of the CRM store: the CRM itself and what syncd keeps about mailboxes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship

# Constraint names are fixed so that Alembic migrations can refer to them on
# every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RECORD_KINDS = ("activity", "offer", "delivery")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime in UTC on every database.

    PostgreSQL keeps the zone; SQLite stores none and returns naive values,
    which get UTC back on load. A naive value is rejected on write, because
    its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given for a UTC column: attach a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    persons: Mapped[list[Person]] = relationship(back_populates="organisation")


class Person(Base):
    """A contact person at an organisation, with one or more email addresses."""

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    organisation: Mapped[Organisation] = relationship(back_populates="persons")
    addresses: Mapped[list[PersonAddress]] = relationship(
        back_populates="person", cascade="all, delete-orphan"
    )


class PersonAddress(Base):
    """One email address of a person; lower-cased, unique across all persons."""

    __tablename__ = "person_addresses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)

    person: Mapped[Person] = relationship(back_populates="addresses")


class CrmUser(Base):
    """A member of staff whose mailbox syncd may sync; their address decides direction."""

    __tablename__ = "crm_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Record(Base):
    """An activity, offer or delivery: the records that correspondence is filed against."""

    __tablename__ = "records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), nullable=True)
    title: Mapped[str] = mapped_column(String(500))
    tracking_code: Mapped[str] = mapped_column(String(24), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    organisation: Mapped[Organisation] = relationship()
    person: Mapped[Person | None] = relationship()


class Correspondence(Base):
    """One filed mail, however many mailboxes it came from.

    `message_key` deduplicates: "mid:" plus the Message-ID, or "sha256:" plus
    a hash of sender, date, subject and body when the mail has no Message-ID.
    """

    __tablename__ = "correspondence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_key: Mapped[str] = mapped_column(String(1000), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str | None] = mapped_column(String(320), nullable=True)
    sender_name: Mapped[str] = mapped_column(String(255), default="")
    #: Lists of {"email": …, "name": …}.
    to_addresses: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    cc_addresses: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    direction: Mapped[str] = mapped_column(String(16))
    body_text: Mapped[str] = mapped_column(Text, default="")
    in_reply_to: Mapped[str | None] = mapped_column(String(998), nullable=True)
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    raw_format: Mapped[str] = mapped_column(String(8), default="eml")
    raw_mime: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    filed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    links: Mapped[list[CorrespondenceLink]] = relationship(
        back_populates="correspondence", cascade="all, delete-orphan", order_by="CorrespondenceLink.id"
    )
    sources: Mapped[list[ProcessedItem]] = relationship(
        back_populates="correspondence", order_by="ProcessedItem.id"
    )
    candidates: Mapped[list[CorrespondenceCandidate]] = relationship(
        back_populates="correspondence", cascade="all, delete-orphan", order_by="CorrespondenceCandidate.id"
    )
    message_refs: Mapped[list[MessageRef]] = relationship(
        back_populates="correspondence", cascade="all, delete-orphan", order_by="MessageRef.id"
    )


class CorrespondenceLink(Base):
    """A correspondence filed against a record, organisation or person, and how."""

    __tablename__ = "correspondence_links"
    __table_args__ = (
        UniqueConstraint("correspondence_id", "target_kind", "target_id", "matched_by"),
        Index("ix_correspondence_links_target", "target_kind", "target_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    correspondence_id: Mapped[int] = mapped_column(ForeignKey("correspondence.id", ondelete="CASCADE"))
    #: activity, offer, delivery, organisation or person.
    target_kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int] = mapped_column(Integer)
    matched_by: Mapped[str] = mapped_column(String(16))

    correspondence: Mapped[Correspondence] = relationship(back_populates="links")


class CorrespondenceCandidate(Base):
    """A record that a weaker signal named for a correspondence filed elsewhere, kept for review.

    `reason` is the signal: "quoted_code" (a code in quoted history only) or
    "thread" (a mail of the same thread was filed against the record).
    """

    __tablename__ = "correspondence_candidates"
    __table_args__ = (UniqueConstraint("correspondence_id", "target_kind", "target_id", "reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    correspondence_id: Mapped[int] = mapped_column(
        ForeignKey("correspondence.id", ondelete="CASCADE"), index=True
    )
    #: activity, offer or delivery.
    target_kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(16))

    correspondence: Mapped[Correspondence] = relationship(back_populates="candidates")


class MessageRef(Base):
    """A Message-ID or Outlook conversation key of a filed mail, so that later replies find it.

    A correspondence has one row for the mail recorded and, when that mail
    came in as a forward, one for the forward. `message_key` has the form of
    `Correspondence.message_key` ("mid:" plus the Message-ID, or a hash of a
    long one). `thread_key` is the hex of the first 22 bytes of the
    Thread-Index header, which Outlook keeps for every mail of a conversation.
    """

    __tablename__ = "message_refs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    correspondence_id: Mapped[int] = mapped_column(
        ForeignKey("correspondence.id", ondelete="CASCADE"), index=True
    )
    message_key: Mapped[str | None] = mapped_column(String(1000), nullable=True, index=True)
    thread_key: Mapped[str | None] = mapped_column(String(44), nullable=True, index=True)
    #: "message" for the mail recorded, "forward" for the forward that carried it.
    role: Mapped[str] = mapped_column(String(16), default="message")

    correspondence: Mapped[Correspondence] = relationship(back_populates="message_refs")


class Mailbox(Base):
    """An enrolled mailbox; `config` holds backend settings and never a secret."""

    __tablename__ = "mailboxes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16), default="sync")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: "ok" or "failing"; see last_error.
    state: Mapped[str] = mapped_column(String(16), default="ok")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_sync_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: The syncd node that syncs this mailbox, until `lease_expires_at`.
    lease_node: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    folders: Mapped[list[MailboxFolder]] = relationship(
        back_populates="mailbox", cascade="all, delete-orphan", order_by="MailboxFolder.id"
    )


class MailboxFolder(Base):
    """A sync folder of a mailbox and its cursor.

    `sync_state` is opaque to syncd (an EWS SyncState or a Graph deltaLink) and
    only valid for the backend named in `backend`. A folder with `record_kind`
    and `record_id` is a mapped folder: a subfolder of the sync folder whose
    mail is filed against that record.
    """

    __tablename__ = "mailbox_folders"
    __table_args__ = (UniqueConstraint("mailbox_id", "folder_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    folder_key: Mapped[str] = mapped_column(String(1000))
    name: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str] = mapped_column(String(16))
    sync_state: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: activity, offer or delivery for a mapped folder, else None.
    record_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    record_id: Mapped[int | None] = mapped_column(ForeignKey("records.id"), nullable=True)

    mailbox: Mapped[Mailbox] = relationship(back_populates="folders")

    @property
    def is_mapped(self) -> bool:
        return self.record_kind is not None and self.record_id is not None


class UnmatchedMail(Base):
    """A mail that could not be filed, kept whole with the reason.

    `outcome` is "unmatched" (parsed, but nothing to file it against) or
    "failed" (a stage broke or a limit was exceeded). `state` moves from "open"
    to "assigned" or "dismissed"; rows are never deleted by syncd.
    """

    __tablename__ = "unmatched_mail"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_key: Mapped[str | None] = mapped_column(String(1000), nullable=True, index=True)
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    sender: Mapped[str | None] = mapped_column(String(320), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    raw_format: Mapped[str] = mapped_column(String(8), default="eml")
    raw_mime: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    state: Mapped[str] = mapped_column(String(16), default="open")
    correspondence_id: Mapped[int | None] = mapped_column(
        ForeignKey("correspondence.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ProcessedItem(Base):
    """The processed-item ledger: one row per mailbox item syncd has recorded.

    The row is written in the same transaction as the correspondence or
    unmatched row it points to, so an item is recorded exactly once. Rows that
    point to a correspondence are that correspondence's sources.
    `feedback_pending` stays true until the backend has shown the outcome to
    the user.
    """

    __tablename__ = "processed_items"
    __table_args__ = (UniqueConstraint("mailbox", "folder_key", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Mailbox address, or "import" for files given to `syncd import`.
    mailbox: Mapped[str] = mapped_column(String(320))
    folder_key: Mapped[str] = mapped_column(String(1000))
    folder_name: Mapped[str] = mapped_column(String(1000), default="")
    item_id: Mapped[str] = mapped_column(String(1000))
    outcome: Mapped[str] = mapped_column(String(16))
    correspondence_id: Mapped[int | None] = mapped_column(
        ForeignKey("correspondence.id"), nullable=True, index=True
    )
    unmatched_id: Mapped[int | None] = mapped_column(ForeignKey("unmatched_mail.id"), nullable=True)
    feedback_pending: Mapped[bool] = mapped_column(Boolean, default=True)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    correspondence: Mapped[Correspondence | None] = relationship(back_populates="sources")


class SyncNode(Base):
    """A running syncd daemon; `seen_at` is its last heartbeat.

    Nodes that share one database split the mailboxes between them by
    leases on the mailbox rows.
    """

    __tablename__ = "sync_nodes"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
