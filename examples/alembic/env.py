"""An app's own Alembic environment that also runs scrypath_sa's migrations.

    python examples/migrate.py upgrade heads

Our revisions are found through ``version_locations`` (examples/migrate.py adds
``scrypath_sa.migrations.versions_path()``), and ``include_object`` keeps your
autogenerate from proposing to drop ``sync_events``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import Base

from scrypath_sa.migrations import include_object

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""
with create_engine(url).begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()
