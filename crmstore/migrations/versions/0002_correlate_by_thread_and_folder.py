"""Correlate by thread and folder: message refs, candidates, mapped folders

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-09 10:12:40.118204
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("message_refs",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("correspondence_id", sa.Integer(), nullable=False),
    sa.Column("message_key", sa.String(length=1000), nullable=True),
    sa.Column("thread_key", sa.String(length=44), nullable=True),
    sa.Column("role", sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(["correspondence_id"], ["correspondence.id"], name=op.f("fk_message_refs_correspondence_id_correspondence"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_message_refs"))
    )
    with op.batch_alter_table("message_refs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_refs_correspondence_id"), ["correspondence_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_message_refs_message_key"), ["message_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_message_refs_thread_key"), ["thread_key"], unique=False)

    op.create_table("correspondence_candidates",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("correspondence_id", sa.Integer(), nullable=False),
    sa.Column("target_kind", sa.String(length=16), nullable=False),
    sa.Column("target_id", sa.Integer(), nullable=False),
    sa.Column("reason", sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(["correspondence_id"], ["correspondence.id"], name=op.f("fk_correspondence_candidates_correspondence_id_correspondence"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_correspondence_candidates")),
    sa.UniqueConstraint("correspondence_id", "target_kind", "target_id", "reason", name=op.f("uq_correspondence_candidates_correspondence_id_target_kind_target_id_reason"))
    )
    with op.batch_alter_table("correspondence_candidates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_correspondence_candidates_correspondence_id"), ["correspondence_id"], unique=False)

    with op.batch_alter_table("mailbox_folders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("record_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_mailbox_folders_record_id_records"), "records", ["record_id"], ["id"])

    # Mail filed before this revision becomes findable by replies too.
    op.execute(
        "INSERT INTO message_refs (correspondence_id, message_key, thread_key, role) "
        "SELECT id, message_key, NULL, 'message' FROM correspondence WHERE message_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("mailbox_folders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_mailbox_folders_record_id_records"), type_="foreignkey")
        batch_op.drop_column("record_id")
        batch_op.drop_column("record_kind")

    with op.batch_alter_table("correspondence_candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_correspondence_candidates_correspondence_id"))

    op.drop_table("correspondence_candidates")
    with op.batch_alter_table("message_refs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_refs_thread_key"))
        batch_op.drop_index(batch_op.f("ix_message_refs_message_key"))
        batch_op.drop_index(batch_op.f("ix_message_refs_correspondence_id"))

    op.drop_table("message_refs")
