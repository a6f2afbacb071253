"""How to test an app that uses scrypath_sa: ``pytest examples/test_app.py``.

No search server and no broker: the example app (``examples/app.py``) uses the embedded
backend and, without ``SCRYPATH_EXAMPLE_REDIS_URL``, Dramatiq's StubBroker, so
``drain()`` can run its dramatiq-mode work in this process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete

os.environ.setdefault("SCRYPATH_EXAMPLE_DIR", tempfile.mkdtemp(prefix="scrypath-example-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import app  # the example app, configured for the directory above

import scrypath_sa
from scrypath_sa.testing import capture, drain


@pytest.fixture(autouse=True)
def tables() -> Iterator[None]:
    app.Base.metadata.create_all(app.engine)
    scrypath_sa.metadata.create_all(app.engine)
    yield
    with app.Session() as session:  # through the session: the index follows
        for article in session.query(app.Article):
            session.delete(article)
        session.commit()
    with app.engine.begin() as conn:
        conn.execute(delete(scrypath_sa.sync_events))


def titles_found(text: str) -> list[str]:
    with app.Session() as session:
        return [a.title for a in scrypath_sa.search(session, app.Article, text).items]


def test_dramatiq_mode_writes_once_a_worker_ran() -> None:
    with scrypath_sa.sync_mode("dramatiq"), app.Session() as session:
        session.add(app.Article(id=1, title="Running foxes"))
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "enqueued"  # not searchable yet
    assert titles_found("run") == []
    drain(app.config)  # the worker's part, run here to the end
    assert titles_found("run") == ["Running foxes"]


def test_unpublishing_deletes_the_document() -> None:
    with capture(app.config) as sent, app.Session() as session:
        article = app.Article(id=2, title="Draft", published=True)
        session.add(article)
        session.commit()
        article.published = False
        session.commit()
    assert [(op.action, op.id) for op in sent] == [("index", "2"), ("delete", "2")]
    assert titles_found("draft") == []
