"""Flask and Flask-SQLAlchemy: one configuration per app, the ``flask search`` commands.

::

    db = SQLAlchemy(model_class=Base)
    migrate = Migrate()
    search = FlaskSearch()

    def create_app(test_config=None):
        app = Flask(__name__)
        app.config["SCRYPATH_SA_BACKEND"] = "https://search.internal:9200"   # or a Backend
        db.init_app(app)
        migrate.init_app(app, db)
        search.init_app(app, db)
        return app

Each app gets its own :class:`~scrypath_sa.config.Config` (``app.extensions
["scrypath_sa"]``) on the app's own engine; several apps in one process (a test suite's
``create_app()`` per test) share ``db.session`` without sharing sync: a session's events
go to the configuration of the app it was used in, and operator calls made inside an
app context (``scrypath_sa.status()``, ``scrypath_sa.search(...)``) use that app's.

Settings, from ``app.config`` unless given to :meth:`FlaskSearch.init_app`:

``SCRYPATH_SA_BACKEND``
    a :class:`~scrypath_sa.backends.Backend`, or an OpenSearch URL (required).
``SCRYPATH_SA_MODE``
    the default mode (``inline``).
``SCRYPATH_SA_ENABLED``
    ``False`` turns sync off for this app (a test config): commits record nothing.
``SCRYPATH_SA_STRICT``, ``SCRYPATH_SA_INLINE_TIMEOUT``, ``SCRYPATH_SA_BATCH_SIZE``
    as :func:`scrypath_sa.configure`'s ``strict``, ``inline_timeout``, ``batch_size``.

``db.create_all()`` also creates the sync tables and ``db.drop_all()`` drops them (so
test suites that build their schema that way need nothing more). With Flask-Migrate
(initialized first), ``flask db migrate`` never proposes to drop them and proposes
``op.upgrade_sync_tables(...)`` when they are not at this release's newest migration, so
``flask db upgrade`` creates and upgrades them with the app's own tables (docs:
migrations).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, current_app, has_app_context
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import MetaData, Table, event, inspect

from scrypath_sa import cli, install, migrations
from scrypath_sa.backends.base import Backend
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.modes import Mode
from scrypath_sa.schema import metadata as sync_metadata

EXTENSION = "scrypath_sa"
_SETTINGS = {"SCRYPATH_SA_STRICT": "strict", "SCRYPATH_SA_INLINE_TIMEOUT": "inline_timeout",
             "SCRYPATH_SA_BATCH_SIZE": "batch_size", "SCRYPATH_SA_ENABLED": "enabled"}


class FlaskSearch:
    """The Flask extension (see the module). ``FlaskSearch(app, db)`` or
    ``search = FlaskSearch()`` then ``search.init_app(app, db)`` in a factory."""

    def __init__(self, app: Flask | None = None, db: Any = None, **settings: Any) -> None:
        self.db, self.settings = db, settings
        if app is not None:
            self.init_app(app, db)

    def init_app(self, app: Flask, db: Any = None, *, backend: Backend | str | None = None,
                 mode: str | None = None, modes: Mapping[str, Mode] | None = None,
                 **settings: Any) -> Config:
        """Install sync for ``app`` (its own configuration, its own engine) and add the
        ``flask search`` commands; returns the configuration."""
        db = db if db is not None else self.db
        if db is None or not hasattr(db, "session") or not hasattr(db, "metadata"):
            raise ConfigurationError(
                "FlaskSearch.init_app(app, db) needs the Flask-SQLAlchemy extension: "
                "search.init_app(app, db) after db.init_app(app)")
        given = {**self.settings, **settings}
        for key, name in _SETTINGS.items():
            if key in app.config and name not in given:
                given[name] = app.config[key]
        backend = backend or given.pop("backend", None) or app.config.get("SCRYPATH_SA_BACKEND")
        if backend is None:
            raise ConfigurationError(
                "set app.config['SCRYPATH_SA_BACKEND'] (an OpenSearch URL or a Backend) or "
                "pass backend= to FlaskSearch.init_app()")
        with app.app_context():
            engine = db.engine
        config = install.build_config(
            db.session, backend=_backend(backend),
            mode=mode or given.pop("mode", None) or app.config.get("SCRYPATH_SA_MODE", "inline"),
            bind=engine, modes=modes, **given)
        install.configure_scoped(app, db.session, _current_app, config)
        app.extensions[EXTENSION] = config
        _create_with(db.metadata)
        _keep_out_of_autogenerate(app)
        app.cli.add_command(search_commands)
        return config


def _current_app() -> Flask | None:
    return current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]


def _backend(backend: Backend | str) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str) and backend.startswith(("http://", "https://")):
        from scrypath_sa.backends.opensearch import OpenSearchBackend

        return OpenSearchBackend(backend)
    raise ConfigurationError(
        "SCRYPATH_SA_BACKEND must be an OpenSearch URL (http:// or https://) or a "
        f"scrypath_sa Backend, got a {type(backend).__name__}")


def _create_with(app_metadata: Any) -> None:
    """``db.create_all()`` / ``db.drop_all()`` create and drop the sync tables too."""
    if not event.contains(app_metadata, "after_create", _create_sync_tables):
        event.listen(app_metadata, "after_create", _create_sync_tables)
        event.listen(app_metadata, "after_drop", _drop_sync_tables)


def _create_sync_tables(target: Any, connection: Any, **kw: Any) -> None:
    if not inspect(connection).has_table("sync_events"):
        sync_metadata.create_all(connection)
        migrations.stamp(connection)  # made at the newest revision: upgrades start there


def _drop_sync_tables(target: Any, connection: Any, **kw: Any) -> None:
    sync_metadata.drop_all(connection)
    Table(migrations.VERSION_TABLE, MetaData()).drop(connection, checkfirst=True)


def _keep_out_of_autogenerate(app: Flask) -> None:
    """Chain :func:`scrypath_sa.migrations.include_object` into Flask-Migrate's, and let
    ``flask db migrate`` propose ``op.upgrade_sync_tables`` (the sync tables' migrations
    as a step of the app's own history)."""
    migrate = app.extensions.get("migrate")
    args = getattr(migrate, "configure_args", None)
    if not isinstance(args, dict):
        return
    import scrypath_sa.migrations.operations  # noqa: F401  (registers the operations)

    theirs = args.get("include_object")
    if theirs in (None, migrations.include_object) or getattr(theirs, "scrypath_sa", False):
        args["include_object"] = migrations.include_object
        return

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                       compare_to: Any) -> bool:
        return bool(migrations.include_object(obj, name, type_, reflected, compare_to)
                    and theirs(obj, name, type_, reflected, compare_to))

    include_object.scrypath_sa = True  # type: ignore[attr-defined]
    args["include_object"] = include_object


search_commands = AppGroup(
    "search", help="scrypath_sa: search sync status and repairs for this app (the "
                   "scrypath-sa commands; each takes --help and --json).")


def _command(name: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True,
                                           "help_option_names": []},
                   help=f"scrypath-sa {name} (see: flask search {name} --help)")
    @click.pass_context
    @with_appcontext
    def run(ctx: click.Context) -> None:
        config = current_app.extensions.get(EXTENSION)
        if not isinstance(config, Config):
            raise click.ClickException("this app did not call FlaskSearch.init_app()")
        sys.stdout.flush()
        ctx.exit(cli.main([name, *ctx.args], config=config, prog="flask search"))

    return run


for _name in cli.command_names():
    search_commands.add_command(_command(_name))
