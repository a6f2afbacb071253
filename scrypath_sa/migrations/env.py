"""Alembic environment for running scrypath_sa's migrations on their own."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from scrypath_sa.migrations import VERSION_TABLE
from scrypath_sa.schema import metadata

config = context.config


def run() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          version_table=VERSION_TABLE)
        context.run_migrations()


run()
