"""An app's own Alembic environment whose history carries scrypath_sa's migrations.

    python examples/migrate.py upgrade head

One import registers ``op.upgrade_sync_tables`` and lets ``alembic revision
--autogenerate`` propose it whenever the sync tables are not at the installed
release's newest migration (see versions/app0002_sync_tables.py, written that way);
``include_object`` keeps autogenerate from proposing to drop ``sync_events``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import Base

import scrypath_sa.migrations.operations  # noqa: F401  (op.upgrade_sync_tables)
from scrypath_sa.migrations import include_object

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""
with create_engine(url).begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()
