"""Run the example app's Alembic environment (its history carries the sync tables).

    python examples/migrate.py upgrade head       # SCRYPATH_EXAMPLE_DIR for the database
    python examples/migrate.py revision --autogenerate -m "..."

The same as an ``alembic.ini`` with ``script_location`` set to examples/alembic.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


def config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "alembic"))
    folder = Path(os.environ.get("SCRYPATH_EXAMPLE_DIR", "."))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{folder / 'app.sqlite3'}")
    return cfg


if __name__ == "__main__":
    if sys.argv[1] == "revision":  # revision --autogenerate -m MESSAGE
        command.revision(config(), message=sys.argv[-1], autogenerate=True)
    else:
        getattr(command, sys.argv[1])(config(), sys.argv[2])
