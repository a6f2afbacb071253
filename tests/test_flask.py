"""The Flask extension: one configuration per app in one process, the app's engine, the
``flask search`` commands, a switch per app, ``db.create_all()``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, func, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa
from scrypath_sa.backends import EmbeddedBackend
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.flask import FlaskSearch

PREFIX = f"tf{uuid.uuid4().hex[:8]}"


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Story(scrypath_sa.Searchable, db.Model):  # type: ignore[name-defined, misc]
    # No __tablename__: Flask-SQLAlchemy names the table ("story").
    __search_index__ = f"{PREFIX}_stories"
    __search_fields__ = ("title",)
    # One test node: a replica could never be assigned (status would say yellow).
    __search_contract__: ClassVar[dict[str, Any]] = {"settings": {"number_of_replicas": 0}}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


@pytest.fixture
def stories(os_client: Any) -> Any:
    """The OpenSearch index of this module's model, deleted afterwards."""
    yield
    os_client.indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)


def make_app(database_url: str, backend: Any, **config: Any) -> Flask:
    """What a Flask app factory does."""
    app = Flask(f"app_{uuid.uuid4().hex[:6]}")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SCRYPATH_SA_BACKEND"] = backend
    app.config.update(config)
    db.init_app(app)
    FlaskSearch().init_app(app, db)
    with app.app_context():
        db.drop_all()
        db.create_all()
    return app


def add_story(app: Flask, story_id: int, title: str) -> scrypath_sa.Outcome | None:
    with app.app_context():
        db.session.add(Story(id=story_id, title=title))
        db.session.commit()
        return scrypath_sa.last_outcome(db.session())


def found_ids(app: Flask, query: str) -> list[int]:
    with app.app_context():
        return sorted(s.id for s in scrypath_sa.search(db.session(), Story, query).items)


def event_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(scrypath_sa.sync_events)) or 0


def test_two_apps_in_one_process_keep_their_own_sync(
        postgres_url: str, backend: Any, stories: None, tmp_path: Path) -> None:
    """App A: PostgreSQL + OpenSearch; app B: SQLite + the embedded backend; both on the
    one ``db.session``. Each commit lands in its own app's database and index only, and
    operator calls inside an app context answer for that app."""
    embedded = EmbeddedBackend(tmp_path / "b-search.sqlite3")
    app_a = make_app(postgres_url, backend)
    app_b = make_app(f"sqlite:///{tmp_path / 'b.sqlite3'}", embedded)

    outcome_a = add_story(app_a, 1, "alpha ships")
    outcome_b = add_story(app_b, 2, "beta ships")
    assert outcome_a is not None and outcome_a.state == "completed"
    assert outcome_b is not None and outcome_b.state == "completed"

    assert found_ids(app_a, "ships") == [1]
    assert found_ids(app_b, "ships") == [2]
    assert event_count(app_a) == 1 and event_count(app_b) == 1
    assert embedded.count(Story.__search_index__) == 1
    assert backend.count(Story.__search_index__) == 1
    for app, expected_backend in ((app_a, backend), (app_b, embedded)):
        with app.app_context():
            assert scrypath_sa.install.resolve_config() is app.extensions["scrypath_sa"]
            assert app.extensions["scrypath_sa"].backend is expected_backend
            report = scrypath_sa.status()
            (model,) = [m for m in report.models if m.model == "Story"]
            assert model.counts["completed"] == 1
    # Outside any app context nothing is picked silently.
    with pytest.raises(ConfigurationError, match="pass config="):
        scrypath_sa.status()


def test_a_switch_turns_sync_off_for_one_app(tmp_path: Path) -> None:
    on = make_app(f"sqlite:///{tmp_path / 'on.sqlite3'}", EmbeddedBackend(tmp_path / "on-s"))
    off = make_app(f"sqlite:///{tmp_path / 'off.sqlite3'}", EmbeddedBackend(tmp_path / "off-s"),
                   SCRYPATH_SA_ENABLED=False)
    assert add_story(off, 1, "quiet") is None
    assert event_count(off) == 0
    outcome = add_story(on, 1, "loud")
    assert outcome is not None and outcome.state == "completed"
    assert event_count(on) == 1
    with on.app_context(), scrypath_sa.disabled():
        db.session.add(Story(id=2, title="hushed"))
        db.session.commit()
    assert event_count(on) == 1


def test_create_all_and_drop_all_include_the_sync_tables(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'db.sqlite3'}", EmbeddedBackend(tmp_path / "s"))
    with app.app_context():
        assert {"story", "sync_events", "sync_checkpoints"} <= set(
            inspect(db.engine).get_table_names())
        db.drop_all()
        assert inspect(db.engine).get_table_names() == []


def test_bad_settings_say_what_to_set(tmp_path: Path) -> None:
    app = Flask("bad")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db.init_app(app)
    with pytest.raises(ConfigurationError, match="SCRYPATH_SA_BACKEND"):
        FlaskSearch().init_app(app, db)
    app.config["SCRYPATH_SA_BACKEND"] = "localhost:9200"
    with pytest.raises(ConfigurationError, match="OpenSearch URL"):
        FlaskSearch().init_app(app, db)
    with pytest.raises(ConfigurationError, match="Flask-SQLAlchemy"):
        FlaskSearch().init_app(Flask("no_db"))
    assert "scrypath_sa" not in app.extensions


def test_flask_search_commands_answer_for_their_app(
        postgres_url: str, backend: Any, stories: None, tmp_path: Path) -> None:
    app = make_app(postgres_url, backend)
    other = make_app(f"sqlite:///{tmp_path / 'o.sqlite3'}", EmbeddedBackend(tmp_path / "o-s"))
    add_story(app, 1, "one")
    add_story(app, 2, "two")
    add_story(other, 9, "elsewhere")

    result = app.test_cli_runner().invoke(args=["search", "status", "--json"])
    assert result.exit_code == 0, result.output
    (model,) = [m for m in json.loads(result.output)["models"] if m["model"] == "Story"]
    assert model["counts"]["completed"] == 2 and model["documents"] == 2

    result = other.test_cli_runner().invoke(args=["search", "status", "--json"])
    (model,) = [m for m in json.loads(result.output)["models"] if m["model"] == "Story"]
    assert model["counts"]["completed"] == 1

    result = app.test_cli_runner().invoke(
        args=["search", "reconcile", "--model", "Story", "--json"])
    assert result.exit_code == 0, result.output

    # The failure paths keep their promises: a bad argument, an unknown event.
    result = app.test_cli_runner().invoke(args=["search", "retry", "999999", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["ok"] is False
    result = app.test_cli_runner().invoke(args=["search", "backfill", "NoSuchModel"])
    assert result.exit_code == 1


def test_flask_search_reports_an_unreachable_backend(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'db.sqlite3'}",
                   "http://admin:hunter2@127.0.0.1:9/")
    result = app.test_cli_runner().invoke(args=["search", "status", "--json"])
    assert result.exit_code == 1, result.output
    assert "hunter2" not in result.output
