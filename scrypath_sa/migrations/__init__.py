"""Alembic migrations for ``sync_events`` (branch label ``scrypath_sa``).

Use them from your own Alembic environment::

    # alembic.ini
    version_locations = %(here)s/versions <output of scrypath_sa.migrations.versions_path()>

    # env.py
    from scrypath_sa.migrations import include_object
    context.configure(..., include_object=include_object)

then ``alembic upgrade scrypath_sa@head`` (or ``heads``). Or run them on their own with
:func:`upgrade`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

BRANCH = "scrypath_sa"
HERE = Path(__file__).resolve().parent
OUR_TABLES = frozenset({"sync_events", "sync_checkpoints"})


def versions_path() -> str:
    """The folder holding our revision files, for ``version_locations``."""
    return str(HERE / "versions")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """An Alembic ``include_object`` hook: keep our tables out of your autogenerate.

    Without it, ``alembic revision --autogenerate`` in your project would propose to drop
    ``sync_events`` because your MetaData does not hold it. Chain it with your own hook
    if you have one.
    """
    table = obj.table.name if type_ in {"column", "index", "unique_constraint",
                                        "foreign_key_constraint"} else name
    return table not in OUR_TABLES


def alembic_config(engine_or_url: Engine | str) -> Any:
    """An Alembic Config that runs only our migrations (version table
    ``scrypath_sa_alembic_version``, so it never meets your own history)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    url = engine_or_url if isinstance(engine_or_url, str) else None
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    else:
        config.attributes["engine"] = engine_or_url
    return config


def upgrade(engine_or_url: Engine | str, revision: str = "heads") -> None:
    """Run our migrations on their own (standalone use, tests, the quickstart)."""
    from alembic import command

    command.upgrade(alembic_config(engine_or_url), revision)


def downgrade(engine_or_url: Engine | str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine_or_url), revision)
