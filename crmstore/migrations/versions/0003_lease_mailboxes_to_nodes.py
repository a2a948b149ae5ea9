"""Lease mailboxes to nodes: lease columns on mailboxes, sync_nodes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 23:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("sync_nodes",
    sa.Column("id", sa.String(length=200), nullable=False),
    sa.Column("hostname", sa.String(length=255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_nodes"))
    )
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_node", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_mailboxes_lease_node"), ["lease_node"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailboxes_lease_node"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_node")

    op.drop_table("sync_nodes")
