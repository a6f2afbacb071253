"""Alembic migrations for ``sync_events`` (their own version table,
``scrypath_sa_alembic_version``).

Carry them in your own Alembic history as one step (never a second head)::

    # env.py
    import scrypath_sa.migrations.operations   # op.upgrade_sync_tables, autogenerate
    from scrypath_sa.migrations import include_object
    context.configure(..., include_object=include_object)

then ``alembic revision --autogenerate`` proposes ``op.upgrade_sync_tables(...)`` when
the tables are behind this release, and ``alembic upgrade head`` applies it
(:mod:`scrypath_sa.migrations.operations`). Or run them on their own with
:func:`upgrade`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

BRANCH = "scrypath_sa"
HERE = Path(__file__).resolve().parent
VERSION_TABLE = "scrypath_sa_alembic_version"
OUR_TABLES = frozenset({"sync_events", "sync_checkpoints", VERSION_TABLE})


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


def upgrade(engine_or_url: Engine | str, revision: str = "heads") -> tuple[str | None, str | None]:
    """Run our migrations on their own, in their own history (version table
    ``scrypath_sa_alembic_version``): your app's ``alembic upgrade head`` / ``flask db
    upgrade`` never meets them. Returns the revision before and after."""
    from alembic import command
    from sqlalchemy import inspect

    engine = _engine(engine_or_url)
    before = current_revision(engine)
    if before is None and inspect(engine).has_table("sync_events"):
        raise unrecorded()
    command.upgrade(alembic_config(engine), revision)
    return before, current_revision(engine)


def unrecorded() -> Exception:
    """The error for sync tables that exist without a recorded migration."""
    from scrypath_sa.errors import ConfigurationError

    return ConfigurationError(
        "sync_events exists but has no scrypath_sa migration history (it was made by "
        "metadata.create_all()): if it was made by this version of scrypath_sa, record "
        "that with scrypath_sa.migrations.stamp(connection) and upgrade from there on")


def stamp(connection: Connection) -> None:
    """Record that the sync tables on ``connection`` are at our newest revision (they
    were just made by ``metadata.create_all()``), so a later :func:`upgrade` starts from
    there instead of creating them again."""
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    context.stamp(_script(), "heads")


@functools.cache
def _script() -> Any:
    """Our revision files, read once."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def newest() -> str:
    """Our newest revision."""
    head: str | None = _script().get_current_head()
    assert head is not None
    return head


def behind(engine: Engine) -> str | None:
    """What to do when the sync tables' recorded revision is not this version's newest
    (None when it is, or when nothing is recorded: tables made by ``create_all()``)."""
    current = current_revision(engine)
    if current is None or current == newest():
        return None
    return (f"sync tables are at migration {current}, this scrypath_sa needs {newest()}: "
            "add the step to your migrations (flask db migrate or alembic revision "
            "--autogenerate, then upgrade) or run scrypath-sa upgrade (flask search upgrade)")


def current_revision(engine_or_url: Engine | str) -> str | None:
    """The revision our tables are at in their own history (None: not created there)."""
    from alembic.migration import MigrationContext

    with _engine(engine_or_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def _engine(engine_or_url: Engine | str) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url


def downgrade(engine_or_url: Engine | str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine_or_url), revision)
