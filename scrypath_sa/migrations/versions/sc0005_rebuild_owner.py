"""scrypath_sa: a long run's owner, state and last error on sync_checkpoints

Revision ID: sc0005_rebuild_owner
Revises: sc0004_completed_document_index
Create Date: 2026-12-01

``status`` tells a rebuild that is running from one that failed (its error is recorded)
or whose process is gone (its owner, host and pid, is no longer alive), instead of
guessing from the time of its last progress alone. Rows written before this migration
have no owner or state and are judged by that time, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sc0005_rebuild_owner"
down_revision = "sc0004_completed_document_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as batch:
        batch.add_column(sa.Column("owner", sa.String(255), nullable=True))
        batch.add_column(sa.Column("state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as batch:
        batch.drop_column("last_error")
        batch.drop_column("state")
        batch.drop_column("owner")
