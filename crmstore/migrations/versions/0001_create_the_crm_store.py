"""Create the CRM store

Revision ID: 0001
Revises:
Create Date: 2026-12-04 20:03:51.781363
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("correspondence",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("message_key", sa.String(length=1000), nullable=False),
    sa.Column("message_id", sa.String(length=998), nullable=True),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("sender", sa.String(length=320), nullable=True),
    sa.Column("sender_name", sa.String(length=255), nullable=False),
    sa.Column("to_addresses", sa.JSON(), nullable=False),
    sa.Column("cc_addresses", sa.JSON(), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("direction", sa.String(length=16), nullable=False),
    sa.Column("body_text", sa.Text(), nullable=False),
    sa.Column("in_reply_to", sa.String(length=998), nullable=True),
    sa.Column("references", sa.JSON(), nullable=False),
    sa.Column("raw_format", sa.String(length=8), nullable=False),
    sa.Column("raw_mime", sa.LargeBinary(), nullable=True),
    sa.Column("filed_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_correspondence")),
    sa.UniqueConstraint("message_key", name=op.f("uq_correspondence_message_key"))
    )
    op.create_table("crm_users",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("email", sa.String(length=320), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_users")),
    sa.UniqueConstraint("email", name=op.f("uq_crm_users_email"))
    )
    op.create_table("mailboxes",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("address", sa.String(length=320), nullable=False),
    sa.Column("backend", sa.String(length=16), nullable=False),
    sa.Column("role", sa.String(length=16), nullable=False),
    sa.Column("config", sa.JSON(), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_mailboxes")),
    sa.UniqueConstraint("address", name=op.f("uq_mailboxes_address"))
    )
    op.create_table("organisations",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_organisations"))
    )
    op.create_table("correspondence_links",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("correspondence_id", sa.Integer(), nullable=False),
    sa.Column("target_kind", sa.String(length=16), nullable=False),
    sa.Column("target_id", sa.Integer(), nullable=False),
    sa.Column("matched_by", sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(["correspondence_id"], ["correspondence.id"], name=op.f("fk_correspondence_links_correspondence_id_correspondence"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_correspondence_links")),
    sa.UniqueConstraint("correspondence_id", "target_kind", "target_id", "matched_by", name=op.f("uq_correspondence_links_correspondence_id_target_kind_target_id_matched_by"))
    )
    with op.batch_alter_table("correspondence_links", schema=None) as batch_op:
        batch_op.create_index("ix_correspondence_links_target", ["target_kind", "target_id"], unique=False)

    op.create_table("mailbox_folders",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("mailbox_id", sa.Integer(), nullable=False),
    sa.Column("folder_key", sa.String(length=1000), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("backend", sa.String(length=16), nullable=False),
    sa.Column("sync_state", sa.Text(), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.id"], name=op.f("fk_mailbox_folders_mailbox_id_mailboxes"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_folders")),
    sa.UniqueConstraint("mailbox_id", "folder_key", name=op.f("uq_mailbox_folders_mailbox_id_folder_key"))
    )
    op.create_table("persons",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("organisation_id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"], name=op.f("fk_persons_organisation_id_organisations")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_persons"))
    )
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_persons_organisation_id"), ["organisation_id"], unique=False)

    op.create_table("unmatched_mail",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("message_key", sa.String(length=1000), nullable=True),
    sa.Column("message_id", sa.String(length=998), nullable=True),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("sender", sa.String(length=320), nullable=True),
    sa.Column("outcome", sa.String(length=16), nullable=False),
    sa.Column("reason", sa.String(length=32), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("raw_format", sa.String(length=8), nullable=False),
    sa.Column("raw_mime", sa.LargeBinary(), nullable=True),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("correspondence_id", sa.Integer(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["correspondence_id"], ["correspondence.id"], name=op.f("fk_unmatched_mail_correspondence_id_correspondence")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_unmatched_mail"))
    )
    with op.batch_alter_table("unmatched_mail", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_unmatched_mail_message_key"), ["message_key"], unique=False)

    op.create_table("person_addresses",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("person_id", sa.Integer(), nullable=False),
    sa.Column("email", sa.String(length=320), nullable=False),
    sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_person_addresses_person_id_persons")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_person_addresses")),
    sa.UniqueConstraint("email", name=op.f("uq_person_addresses_email"))
    )
    with op.batch_alter_table("person_addresses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_person_addresses_person_id"), ["person_id"], unique=False)

    op.create_table("processed_items",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("mailbox", sa.String(length=320), nullable=False),
    sa.Column("folder_key", sa.String(length=1000), nullable=False),
    sa.Column("folder_name", sa.String(length=1000), nullable=False),
    sa.Column("item_id", sa.String(length=1000), nullable=False),
    sa.Column("outcome", sa.String(length=16), nullable=False),
    sa.Column("correspondence_id", sa.Integer(), nullable=True),
    sa.Column("unmatched_id", sa.Integer(), nullable=True),
    sa.Column("feedback_pending", sa.Boolean(), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["correspondence_id"], ["correspondence.id"], name=op.f("fk_processed_items_correspondence_id_correspondence")),
    sa.ForeignKeyConstraint(["unmatched_id"], ["unmatched_mail.id"], name=op.f("fk_processed_items_unmatched_id_unmatched_mail")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_processed_items")),
    sa.UniqueConstraint("mailbox", "folder_key", "item_id", name=op.f("uq_processed_items_mailbox_folder_key_item_id"))
    )
    with op.batch_alter_table("processed_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processed_items_correspondence_id"), ["correspondence_id"], unique=False)

    op.create_table("records",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("organisation_id", sa.Integer(), nullable=False),
    sa.Column("person_id", sa.Integer(), nullable=True),
    sa.Column("title", sa.String(length=500), nullable=False),
    sa.Column("tracking_code", sa.String(length=24), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"], name=op.f("fk_records_organisation_id_organisations")),
    sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_records_person_id_persons")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_records")),
    sa.UniqueConstraint("tracking_code", name=op.f("uq_records_tracking_code"))
    )
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_records_organisation_id"), ["organisation_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_records_organisation_id"))

    op.drop_table("records")
    with op.batch_alter_table("processed_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_processed_items_correspondence_id"))

    op.drop_table("processed_items")
    with op.batch_alter_table("person_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_person_addresses_person_id"))

    op.drop_table("person_addresses")
    with op.batch_alter_table("unmatched_mail", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unmatched_mail_message_key"))

    op.drop_table("unmatched_mail")
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_persons_organisation_id"))

    op.drop_table("persons")
    op.drop_table("mailbox_folders")
    with op.batch_alter_table("correspondence_links", schema=None) as batch_op:
        batch_op.drop_index("ix_correspondence_links_target")

    op.drop_table("correspondence_links")
    op.drop_table("organisations")
    op.drop_table("mailboxes")
    op.drop_table("crm_users")
    op.drop_table("correspondence")
