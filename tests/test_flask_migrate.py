"""A real Flask-Migrate project adopting the library: ``flask db init``, ``migrate``,
``upgrade`` keep working, autogenerate never proposes to drop the sync tables, and a
library upgrade that adds a migration is applied by ``flask search upgrade`` without
touching the app's own history (no second head)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from scrypath_sa import migrations

ROOT = Path(__file__).resolve().parent.parent

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
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.abspath("app.db")
    app.config["SCRYPATH_SA_BACKEND"] = EmbeddedBackend(os.path.abspath("search.db"))
    db.init_app(app)
    migrate.init_app(app, db)
    search.init_app(app, db)
    return app
'''


def flask(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLASK_APP": "app:create_app",
           "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "flask", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def test_flask_migrate_project_adopts_and_upgrades_the_library(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    ok(flask(tmp_path, "db", "init"))
    ok(flask(tmp_path, "db", "migrate", "-m", "posts"))
    (revision,) = (tmp_path / "migrations" / "versions").glob("*.py")
    text = revision.read_text()
    assert "create_table('post'" in text and "sync_events" not in text
    ok(flask(tmp_path, "db", "upgrade"))
    out = ok(flask(tmp_path, "search", "upgrade"))
    assert f"sync tables at {migrations.newest()}" in out

    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    assert {"post", "sync_events", "sync_checkpoints", "alembic_version",
            migrations.VERSION_TABLE} <= set(inspect(engine).get_table_names())
    # Autogenerate sees the sync tables in the database and leaves them alone.
    out = ok(flask(tmp_path, "db", "migrate", "-m", "nothing"))
    assert "No changes in schema detected" in out
    assert len(list((tmp_path / "migrations" / "versions").glob("*.py"))) == 1

    # The library's tables as an older release left them: one migration behind.
    migrations.downgrade(engine, "sc0004_completed_document_index")
    ok(flask(tmp_path, "db", "upgrade"))  # the app's deploy step: one head, still fine
    status = flask(tmp_path, "search", "status", "--json")
    assert status.returncode == 2, status.stdout
    problems = json.loads(status.stdout)["problems"]
    assert any("flask search upgrade" in p and "sc0004" in p for p in problems)

    out = ok(flask(tmp_path, "search", "upgrade"))
    assert "were at sc0004_completed_document_index" in out
    status = flask(tmp_path, "search", "status", "--json")
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["problems"] == []
    ok(flask(tmp_path, "db", "upgrade"))
    assert "No changes in schema detected" in ok(flask(tmp_path, "db", "migrate"))
