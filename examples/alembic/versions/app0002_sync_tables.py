"""app: scrypath_sa's sync tables (written by ``alembic revision --autogenerate``)

Revision ID: app0002_sync_tables
Revises: app0001_articles
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

import scrypath_sa.migrations.operations  # noqa: F401

revision = "app0002_sync_tables"
down_revision = "app0001_articles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.upgrade_sync_tables("sc0005_rebuild_owner", from_revision=None)


def downgrade() -> None:
    op.downgrade_sync_tables("base", from_revision="sc0005_rebuild_owner")
