"""scrypath_sa: create sync_events

Revision ID: sc0001_sync_events
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from scrypath_sa.schema import UTCDateTime

revision = "sc0001_sync_events"
down_revision = None
branch_labels = ("scrypath_sa",)
depends_on = None

STATES = ("requested", "enqueued", "processing", "backend_accepted", "completed", "retrying",
          "discarded")


def upgrade() -> None:
    op.create_table(
        "sync_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("index_name", sa.String(255), nullable=False),
        sa.Column("document_id", sa.String(512), nullable=False),
        sa.Column("pk", sa.JSON(), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(32), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error_kind", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("version_sent", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("enqueued_at", UTCDateTime(), nullable=True),
        sa.Column("processing_at", UTCDateTime(), nullable=True),
        sa.Column("accepted_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("discarded_at", UTCDateTime(), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in STATES) + ")",
                           name="ck_sync_events_state"),
        sa.CheckConstraint("operation IN ('upsert', 'delete')", name="ck_sync_events_operation"),
    )
    op.create_index("ix_sync_events_state_next_attempt", "sync_events",
                    ["state", "next_attempt_at"])
    op.create_index("ix_sync_events_index_document", "sync_events", ["index_name", "document_id"])


def downgrade() -> None:
    op.drop_index("ix_sync_events_index_document", table_name="sync_events")
    op.drop_index("ix_sync_events_state_next_attempt", table_name="sync_events")
    op.drop_table("sync_events")
