"""Run the example app's Alembic environment with scrypath_sa's versions included.

    python examples/migrate.py upgrade heads       # SCRYPATH_EXAMPLE_DIR for the database

The same as an ``alembic.ini`` with ``version_locations`` set to the app's versions
folder and ``scrypath_sa.migrations.versions_path()``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from scrypath_sa.migrations import versions_path

HERE = Path(__file__).resolve().parent


def config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "alembic"))
    cfg.set_main_option("path_separator", "os")  # alembic 1.16 and later
    cfg.set_main_option("version_path_separator", "os")  # alembic before 1.16
    cfg.set_main_option("version_locations",
                        os.pathsep.join([str(HERE / "alembic" / "versions"), versions_path()]))
    folder = Path(os.environ.get("SCRYPATH_EXAMPLE_DIR", "."))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{folder / 'app.sqlite3'}")
    return cfg


if __name__ == "__main__":
    action, revision = sys.argv[1], sys.argv[2]
    getattr(command, action)(config(), revision)
