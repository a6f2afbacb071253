"""A Flask + Flask-SQLAlchemy app factory with scrypath_sa's Flask extension.

    flask --app examples.flask_app run            # SCRYPATH_EXAMPLE_DIR for the files
    flask --app examples.flask_app search status  # the operator commands, per app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa
from scrypath_sa import Searchable
from scrypath_sa.backends import EmbeddedBackend
from scrypath_sa.flask import FlaskSearch

DIR = Path(os.environ.get("SCRYPATH_EXAMPLE_DIR", "."))


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
search = FlaskSearch()


class Note(Searchable, db.Model):  # type: ignore[name-defined, misc]
    __search_index__ = "notes"
    __search_fields__ = ("body",)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(500))


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{DIR / 'flask.sqlite3'}"
    app.config["SCRYPATH_SA_BACKEND"] = EmbeddedBackend(DIR / "flask-search.sqlite3")
    app.config.update(test_config or {})
    db.init_app(app)
    search.init_app(app, db)  # this app's own sync, on this app's engine
    with app.app_context():
        db.create_all()  # the sync tables too (in production: flask search upgrade)

    @app.post("/notes")
    def create_note() -> dict[str, Any]:
        data = request.get_json()
        db.session.add(Note(id=data["id"], body=data["body"]))
        db.session.commit()
        outcome = scrypath_sa.last_outcome(db.session())
        found = ({"mode": outcome.mode, "state": outcome.state} if outcome
                 else {"state": "nothing_to_sync"})
        return {"saved": True, "search": found}

    @app.get("/search")
    def search_notes() -> dict[str, Any]:
        result = scrypath_sa.search(db.session(), Note, request.args["q"])
        return {"total": result.total, "ids": [n.id for n in result.items]}

    return app
