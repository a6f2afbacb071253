"""The sync tables inside your own Alembic history: ``op.upgrade_sync_tables``.

Importing this module registers two Alembic operations and an autogenerate comparator:

- ``op.upgrade_sync_tables(revision, from_revision=None)`` runs the library's own
  migrations up to ``revision`` on the migration's connection (in its transaction), and
  ``op.downgrade_sync_tables(revision, from_revision=...)`` takes them back. They keep
  their own version table (``scrypath_sa_alembic_version``), so they are never a second
  head in your history: one of your revisions simply says "the sync tables are at
  sc0005 from here on".
- ``alembic revision --autogenerate`` / ``flask db migrate`` proposes that step whenever
  the database's sync tables are not at this release's newest migration (adopting the
  library, or upgrading to a release that adds a migration), when the target metadata
  holds a ``Searchable`` model's table. ``alembic upgrade head`` / ``flask db upgrade``
  then applies it with the rest, and ``downgrade`` takes it back.

``FlaskSearch.init_app`` imports it when Flask-Migrate is initialized; a plain Alembic
``env.py`` imports it (``import scrypath_sa.migrations.operations``) next to
``include_object``. Revision files that use the operations import it themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from alembic.autogenerate import comparators, renderers
from alembic.migration import MigrationContext
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import inspect

from scrypath_sa import registry
from scrypath_sa.migrations import VERSION_TABLE, _script, newest, unrecorded

_IMPORT = "import scrypath_sa.migrations.operations"


@Operations.register_operation("upgrade_sync_tables")
class UpgradeSyncTables(MigrateOperation):
    """Bring the sync tables from ``from_revision`` (None: not there) to ``revision``."""

    def __init__(self, revision: str, from_revision: str | None = None) -> None:
        self.revision = revision
        self.from_revision = from_revision

    @classmethod
    def upgrade_sync_tables(cls, operations: Operations, revision: str,
                            from_revision: str | None = None) -> None:
        operations.invoke(cls(revision, from_revision))

    def reverse(self) -> DowngradeSyncTables:
        return DowngradeSyncTables(self.from_revision or "base", self.revision)


@Operations.register_operation("downgrade_sync_tables")
class DowngradeSyncTables(MigrateOperation):
    """Take the sync tables from ``from_revision`` back to ``revision`` ("base": gone)."""

    def __init__(self, revision: str, from_revision: str) -> None:
        self.revision = revision
        self.from_revision = from_revision

    @classmethod
    def downgrade_sync_tables(cls, operations: Operations, revision: str,
                              from_revision: str) -> None:
        operations.invoke(cls(revision, from_revision))

    def reverse(self) -> UpgradeSyncTables:
        return UpgradeSyncTables(self.from_revision,
                                 None if self.revision == "base" else self.revision)


@Operations.implementation_for(UpgradeSyncTables)
def _upgrade(operations: Operations, operation: UpgradeSyncTables) -> None:
    script = _script()
    _run(operations, operation.from_revision, operation.revision,
         lambda rev, _context: script._upgrade_revs(operation.revision, rev))


@Operations.implementation_for(DowngradeSyncTables)
def _downgrade(operations: Operations, operation: DowngradeSyncTables) -> None:
    script = _script()
    _run(operations, operation.from_revision, operation.revision,
         lambda rev, _context: script._downgrade_revs(operation.revision, rev))


def _run(operations: Operations, starting: str | None, destination: str,
         steps: Callable[[Any, Any], Any]) -> None:
    """Run our revisions inside the migration that is running: on its connection and in
    its transaction, or (``--sql``) into its script, recorded in our version table."""
    outer = operations.migration_context
    opts: dict[str, Any] = {"version_table": VERSION_TABLE, "fn": steps}
    if outer.as_sql:
        opts.update(as_sql=True, output_buffer=outer.output_buffer, literal_binds=True,
                    starting_rev=starting, destination_rev=destination)
        inner = MigrationContext.configure(dialect_name=outer.dialect.name, opts=opts)
    else:
        inner = MigrationContext.configure(outer.connection, opts=opts)
    # Our revision files use ``alembic.op``: point it at our context while they run,
    # then back at the migration that called us.
    with Operations.context(inner):
        inner.run_migrations()
    operations._install_proxy()


@renderers.dispatch_for(UpgradeSyncTables)
def _render_upgrade(autogen_context: Any, operation: UpgradeSyncTables) -> str:
    autogen_context.imports.add(_IMPORT)
    return (f"op.upgrade_sync_tables({operation.revision!r}, "
            f"from_revision={operation.from_revision!r})")


@renderers.dispatch_for(DowngradeSyncTables)
def _render_downgrade(autogen_context: Any, operation: DowngradeSyncTables) -> str:
    autogen_context.imports.add(_IMPORT)
    return (f"op.downgrade_sync_tables({operation.revision!r}, "
            f"from_revision={operation.from_revision!r})")


@comparators.dispatch_for("schema")
def _compare(autogen_context: Any, upgrade_ops: Any, schemas: Iterable[str | None]) -> None:
    """Propose bringing the sync tables to this release's newest migration."""
    if autogen_context.connection is None or not _syncs(autogen_context.metadata):
        return
    context = MigrationContext.configure(autogen_context.connection,
                                         opts={"version_table": VERSION_TABLE})
    current = context.get_current_revision()
    if current is None and inspect(autogen_context.connection).has_table("sync_events"):
        raise unrecorded()
    if current != newest():
        upgrade_ops.ops.insert(0, UpgradeSyncTables(newest(), from_revision=current))


def _syncs(metadata: Any) -> bool:
    """Whether the target metadata holds the table of a ``Searchable`` model."""
    for each in metadata if isinstance(metadata, (list, tuple)) else [metadata]:
        if each is not None and any(registry.info_for_table(table) is not None
                                    for table in each.tables.values()):
            return True
    return False
