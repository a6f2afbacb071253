"""A Flask + Flask-SQLAlchemy app: scrypath_sa is installed on ``db.session``.

    flask --app examples.flask_app run     # SCRYPATH_EXAMPLE_DIR for the files
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

DIR = Path(os.environ.get("SCRYPATH_EXAMPLE_DIR", "."))


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Note(Searchable, db.Model):  # type: ignore[name-defined, misc]
    __tablename__ = "notes"
    __search_index__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(500))


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{DIR / 'flask.sqlite3'}"
    db.init_app(app)
    with app.app_context():
        db.create_all()
        scrypath_sa.metadata.create_all(db.engine)
        scrypath_sa.configure(db.session, backend=EmbeddedBackend(DIR / "flask-search.sqlite3"),
                              bind=db.engine)

    @app.post("/notes")
    def create_note() -> dict[str, Any]:
        data = request.get_json()
        db.session.add(Note(id=data["id"], body=data["body"]))
        db.session.commit()
        outcome = scrypath_sa.last_outcome(db.session())
        search = ({"mode": outcome.mode, "state": outcome.state} if outcome
                  else {"state": "nothing_to_sync"})
        return {"saved": True, "search": search}

    @app.get("/search")
    def search_notes() -> dict[str, Any]:
        result = scrypath_sa.search(db.session(), Note, request.args["q"])
        return {"total": result.total, "ids": [n.id for n in result.items]}

    return app
