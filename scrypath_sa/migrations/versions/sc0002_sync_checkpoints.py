"""scrypath_sa: create sync_checkpoints (resumable backfills)

Revision ID: sc0002_sync_checkpoints
Revises: sc0001_sync_events
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from scrypath_sa.schema import UTCDateTime

revision = "sc0002_sync_checkpoints"
down_revision = "sc0001_sync_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_checkpoints",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("index_name", sa.String(255), nullable=False),
        sa.Column("position", sa.JSON(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("processed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sync_checkpoints")
