"""A FastAPI app whose write endpoint reports what the search sync honestly promised.

    uvicorn examples.fastapi_app:app     # with SCRYPATH_EXAMPLE_DIR, ..._MODE as for app.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import Article, Base, Session, engine

import scrypath_sa
from scrypath_sa.migrations import upgrade

Base.metadata.create_all(engine)
upgrade(engine)
app = FastAPI(title="scrypath_sa example")


class ArticleIn(BaseModel):
    id: int
    title: str


def sync_report(session: Any) -> dict[str, Any]:
    """What the sync promised: never "indexed" when it was only accepted or enqueued."""
    outcome = scrypath_sa.last_outcome(session)
    if outcome is None:
        return {"state": "nothing_to_sync"}
    report: dict[str, Any] = {"mode": outcome.mode, "state": outcome.state,
                              "visible": outcome.state == "completed"}
    if outcome.failures:
        report["failures"] = [{"document": f.document_id, "state": f.state, "error": f.error}
                              for f in outcome.failures]
    return report


@app.post("/articles")
def create_article(payload: ArticleIn) -> dict[str, Any]:
    with Session() as session:
        session.add(Article(id=payload.id, title=payload.title))
        session.commit()
        return {"saved": True, "search": sync_report(session)}


@app.get("/search")
def search_articles(q: str, page: int = 1) -> dict[str, Any]:
    if page < 1:
        raise HTTPException(status_code=422, detail="page starts at 1")
    with Session() as session:
        result = scrypath_sa.search(session, Article, q, page=page)
        return {"total": result.total, "ids": [a.id for a in result.items],
                "titles": [a.title for a in result.items], "missing_ids": result.missing_ids}
