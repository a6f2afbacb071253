"""A real Flask-Migrate project adopting the library: ``flask db init``, ``migrate``,
``upgrade`` keep working; autogenerate proposes the sync tables' migrations as a step of
the app's own history (never a second head, never a drop), so ``flask db upgrade``
creates them, applies a library upgrade's new migration, and ``downgrade`` takes it
back; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, inspect

from scrypath_sa import migrations

ROOT = Path(__file__).resolve().parent.parent
URL: dict[Path, str] = {}  # project folder -> its database URL
OLDER = "sc0004_completed_document_index"  # the release before this one's newest

APP = '''
import os
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa
from scrypath_sa.backends import EmbeddedBackend
from scrypath_sa.flask import FlaskSearch


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
search = FlaskSearch()


class Post(scrypath_sa.Searchable, db.Model):
    __search_index__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DATABASE_URL"]
    app.config["SCRYPATH_SA_BACKEND"] = EmbeddedBackend(os.path.abspath("search.db"))
    db.init_app(app)
    migrate.init_app(app, db)
    search.init_app(app, db)
    return app
'''


def flask(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLASK_APP": "app:create_app", "APP_DATABASE_URL": URL[project],
           "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "flask", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def test_flask_migrate_project_adopts_and_upgrades_the_library(
        tmp_path: Path, engine: Engine) -> None:
    URL[tmp_path] = engine.url.render_as_string(hide_password=False)
    versions = tmp_path / "migrations" / "versions"
    (tmp_path / "app.py").write_text(APP)
    ok(flask(tmp_path, "db", "init"))
    ok(flask(tmp_path, "db", "migrate", "-m", "posts"))
    (first,) = versions.glob("*.py")
    text = first.read_text()
    assert "create_table('post'" in text and "sync_events" not in text
    assert f"op.upgrade_sync_tables({migrations.newest()!r}, from_revision=None)" in text
    assert f"op.downgrade_sync_tables('base', from_revision={migrations.newest()!r})" in text

    ok(flask(tmp_path, "db", "upgrade"))  # the app's deploy step does it all
    assert {"post", "sync_events", "sync_checkpoints", "alembic_version",
            migrations.VERSION_TABLE} <= set(inspect(engine).get_table_names())
    assert migrations.current_revision(engine) == migrations.newest()
    assert ok(flask(tmp_path, "search", "status", "--json"))
    out = ok(flask(tmp_path, "db", "migrate", "-m", "nothing"))
    assert "No changes in schema detected" in out
    assert len(list(versions.glob("*.py"))) == 1

    ok(flask(tmp_path, "db", "downgrade", "base"))
    assert not {"post", "sync_events", "sync_checkpoints"} & set(
        inspect(engine).get_table_names())

    # The app adopted an older release: its history says the sync tables are at OLDER.
    first.write_text(text.replace(repr(migrations.newest()), repr(OLDER)))
    ok(flask(tmp_path, "db", "upgrade"))
    assert migrations.current_revision(engine) == OLDER
    # ... and now runs this one: status names the fix,
    status = flask(tmp_path, "search", "status", "--json")
    assert status.returncode == 2, status.stdout
    problems = json.loads(status.stdout)["problems"]
    assert any("flask db migrate" in p and OLDER in p for p in problems), problems
    # autogenerate proposes exactly the step, and the app's own upgrade applies it.
    ok(flask(tmp_path, "db", "migrate", "-m", "scrypath_sa upgrade"))
    (second,) = set(versions.glob("*.py")) - {first}
    text = second.read_text()
    assert (f"op.upgrade_sync_tables({migrations.newest()!r}, from_revision={OLDER!r})"
            in text), text
    assert "create_table" not in text and "drop_table" not in text
    ok(flask(tmp_path, "db", "upgrade"))
    assert migrations.current_revision(engine) == migrations.newest()
    status = flask(tmp_path, "search", "status", "--json")
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["problems"] == []
    assert "No changes in schema detected" in ok(flask(tmp_path, "db", "migrate"))

    # One step back takes only the library's migration back; the data table stays.
    ok(flask(tmp_path, "db", "downgrade"))
    assert migrations.current_revision(engine) == OLDER
    assert "post" in inspect(engine).get_table_names()
    # The separate command still works, and the app's history then finds nothing to do.
    out = ok(flask(tmp_path, "search", "upgrade"))
    assert f"were at {OLDER}" in out
    ok(flask(tmp_path, "db", "upgrade"))
    assert migrations.current_revision(engine) == migrations.newest()


def test_flask_db_upgrade_sql_writes_the_sync_tables_into_the_script(
        tmp_path: Path) -> None:
    """Offline mode (``flask db upgrade --sql``, for DBAs who apply scripts by hand)."""
    URL[tmp_path] = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "app.py").write_text(APP)
    ok(flask(tmp_path, "db", "init"))
    ok(flask(tmp_path, "db", "migrate", "-m", "posts"))
    script = flask(tmp_path, "db", "upgrade", "--sql")
    assert script.returncode == 0, script.stderr
    sql = script.stdout
    assert sql.index("CREATE TABLE sync_events") < sql.index("CREATE TABLE post")
    assert f"INSERT INTO {migrations.VERSION_TABLE}" in sql
    assert f"'{migrations.newest()}'" in sql
