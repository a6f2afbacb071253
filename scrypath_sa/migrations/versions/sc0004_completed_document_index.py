"""scrypath_sa: index (index, document id) of completed events only

Revision ID: sc0004_completed_document_index
Revises: sc0003_hot_updates
Create Date: 2026-11-27

The (index_name, document_id) index serves one kind of lookup: the newest completed
version of some documents (reconcile, confirm). Indexing every event made each commit
that records events maintain it (a fifth of what recording costs; docs/performance.md). It
becomes a partial index of completed events: an event enters it when it completes, an
UPDATE that already writes index entries (it leaves the open-work index), so recording
and the in-flight transitions stop paying for it.

Building the index locks writes to sync_events while it runs. On a large table, build
it beforehand without that lock, and this migration leaves it alone:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_sync_events_completed_document
        ON sync_events (index_name, document_id) WHERE completed_at IS NOT NULL;
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sc0004_completed_document_index"
down_revision = "sc0003_hot_updates"
branch_labels = None
depends_on = None

WHERE = sa.text("completed_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_sync_events_completed_document", "sync_events",
                    ["index_name", "document_id"], postgresql_where=WHERE,
                    sqlite_where=WHERE, if_not_exists=True)
    op.drop_index("ix_sync_events_index_document", table_name="sync_events",
                  if_exists=True)


def downgrade() -> None:
    op.create_index("ix_sync_events_index_document", "sync_events",
                    ["index_name", "document_id"])
    op.drop_index("ix_sync_events_completed_document", table_name="sync_events")
