"""scrypath_sa: index open work without indexing state; leave room for HOT updates

Revision ID: sc0003_hot_updates
Revises: sc0002_sync_checkpoints
Create Date: 2026-11-27

The (state, next_attempt_at) index made every state change of every event write new
index entries (PostgreSQL cannot make an UPDATE "HOT" when it changes an indexed column).
It is replaced by a partial index of events that are not completed, keyed by id, and
the table keeps half of each page free (fillfactor 50; applies to pages written from now
on) so that the claim and the other in-flight transitions stay on their page.

Building the index locks writes to sync_events (and so commits that record events) while
it runs. On a large table, build it beforehand without that lock, and this migration
leaves it alone:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_sync_events_not_completed
        ON sync_events (id) WHERE completed_at IS NULL;
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sc0003_hot_updates"
down_revision = "sc0002_sync_checkpoints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_sync_events_state_next_attempt", table_name="sync_events",
                  if_exists=True)
    op.create_index("ix_sync_events_not_completed", "sync_events", ["id"],
                    postgresql_where=sa.text("completed_at IS NULL"),
                    sqlite_where=sa.text("completed_at IS NULL"), if_not_exists=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sync_events SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sync_events RESET (fillfactor)")
    op.drop_index("ix_sync_events_not_completed", table_name="sync_events")
    op.create_index("ix_sync_events_state_next_attempt", "sync_events",
                    ["state", "next_attempt_at"])
