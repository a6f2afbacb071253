"""How to test a Flask app that uses scrypath_sa, with Flask's test client and the
pytest plugin's fixtures (``scrypath_backend``, ``scrypath_capture``,
``scrypath_disabled``): ``pytest examples/test_flask_app.py``. No search server.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SCRYPATH_EXAMPLE_DIR", tempfile.mkdtemp(prefix="scrypath-example-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrypath_sa.config import Config
from scrypath_sa.testing import InMemoryBackend

# ------------------------------------------------------------------------------- Flask

@pytest.fixture
def flask_app(tmp_path: Path, scrypath_backend: InMemoryBackend) -> Any:
    from flask_app import create_app, db  # type: ignore[import-not-found]

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'flask.db'}",
                      "SCRYPATH_SA_BACKEND": scrypath_backend})
    yield app
    with app.app_context():
        db.drop_all()  # the sync tables too


def test_flask_post_is_written_and_found(flask_app: Any, scrypath_capture: list[Any]) -> None:
    client = flask_app.test_client()
    saved = client.post("/notes", json={"id": 1, "body": "jumping cats"}).get_json()
    assert saved["search"] == {"mode": "inline", "state": "completed"}
    assert [(op.action, op.id) for op in scrypath_capture] == [("index", "1")]
    assert client.get("/search", query_string={"q": "jump"}).get_json()["ids"] == [1]


def test_flask_with_sync_off(flask_app: Any, scrypath_disabled: Config,
                             scrypath_capture: list[Any]) -> None:
    saved = flask_app.test_client().post("/notes", json={"id": 2, "body": "quiet"}).get_json()
    assert saved["search"] == {"state": "nothing_to_sync"}
    assert scrypath_capture == []
