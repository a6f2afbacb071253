"""The shipped Alembic migration, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

import scrypath_sa
from scrypath_sa import migrations


def _no_version_table(obj: Any, name: str | None, type_: str, *args: Any) -> bool:
    return not (type_ == "table" and name and name.endswith("alembic_version"))


def test_upgrade_matches_metadata_and_downgrades(engine: Engine) -> None:
    migrations.upgrade(engine)
    assert "sync_events" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _no_version_table})
        assert compare_metadata(context, scrypath_sa.metadata) == []
    migrations.downgrade(engine)
    assert "sync_events" not in inspect(engine).get_table_names()


def test_a_user_project_includes_our_versions(engine: Engine, tmp_path: Path) -> None:
    url = engine.url.render_as_string(hide_password=False)
    project = tmp_path / "alembic"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(textwrap.dedent(f"""
        from alembic import context
        from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
        from scrypath_sa.migrations import include_object

        target_metadata = MetaData()
        Table("widgets", target_metadata, Column("id", Integer, primary_key=True),
              Column("name", String(50)))
        with create_engine({url!r}).begin() as connection:
            context.configure(connection=connection, target_metadata=target_metadata,
                              include_object=include_object)
            with context.begin_transaction():
                context.run_migrations()
    """))
    (project / "versions" / "u0001_widgets.py").write_text(textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op

        revision = "u0001_widgets"
        down_revision = None
        branch_labels = ("app",)
        depends_on = None

        def upgrade():
            op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("name", sa.String(50)))

        def downgrade():
            op.drop_table("widgets")
    """))
    config = Config()
    config.set_main_option("script_location", str(project))
    config.set_main_option("path_separator", "os")  # alembic 1.16 and later
    config.set_main_option("version_path_separator", "os")  # earlier ones
    config.set_main_option("version_locations", os.pathsep.join(
        [str(project / "versions"), migrations.versions_path()]))
    command.upgrade(config, "heads")
    tables = set(inspect(engine).get_table_names())
    assert {"widgets", "sync_events", "alembic_version"} <= tables

    # The user's autogenerate proposes nothing: include_object hides our table...
    from sqlalchemy import Column, Integer, MetaData, String, Table

    user_metadata = MetaData()
    Table("widgets", user_metadata, Column("id", Integer, primary_key=True),
          Column("name", String(50)))
    with engine.connect() as conn:
        hook = {"include_object": migrations.include_object}
        hidden = MigrationContext.configure(conn, opts=hook)
        assert compare_metadata(hidden, user_metadata) == []
        # ...and without it, it would have proposed dropping sync_events.
        bare = MigrationContext.configure(conn)
        removed = [d[1].name for d in compare_metadata(bare, user_metadata)
                   if d[0] == "remove_table"]
        assert sorted(removed) == ["sync_checkpoints", "sync_events"]
    command.downgrade(config, "scrypath_sa@base")
    assert "sync_events" not in inspect(engine).get_table_names()


def test_an_index_built_beforehand_is_left_alone(engine: Engine) -> None:
    """Operators with a large table build the open-work index themselves (concurrently)
    before upgrading; the migration then neither fails nor builds it again."""
    from sqlalchemy import text

    migrations.upgrade(engine, "sc0002_sync_checkpoints")
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_sync_events_not_completed ON sync_events (id) "
                          "WHERE completed_at IS NULL"))
    migrations.upgrade(engine)
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("sync_events")}
    assert "ix_sync_events_not_completed" in indexes
    assert "ix_sync_events_state_next_attempt" not in indexes
    migrations.downgrade(engine)
