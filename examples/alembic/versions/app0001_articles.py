"""app: create articles

Revision ID: app0001_articles
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "app0001_articles"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade() -> None:
    op.create_table("articles", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("title", sa.String(200), nullable=False),
                    sa.Column("published", sa.Boolean(), nullable=False))


def downgrade() -> None:
    op.drop_table("articles")
