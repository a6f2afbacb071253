"""The FastAPI example on AsyncSession: an async engine (aiosqlite here, asyncpg in
production), a session per request from a dependency, and a write endpoint that reports
what the search sync honestly promised.

    uvicorn examples.fastapi_async_app:app   # with SCRYPATH_EXAMPLE_DIR as for app.py
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import DIR, Article, Base
from app import config as sync_config

import scrypath_sa
from scrypath_sa.migrations import upgrade

engine = create_async_engine(f"sqlite+aiosqlite:///{DIR / 'app.sqlite3'}")
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
# The same backend as the sync app; the work after commit runs on a sync engine on the
# same database, derived from this one (docs/async.md).
config = scrypath_sa.configure(SessionLocal, backend=sync_config.backend)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await asyncio.to_thread(upgrade, config.bind)  # the library's tables (Alembic)
    yield
    await engine.dispose()


app = FastAPI(title="scrypath_sa async example", lifespan=lifespan)


async def session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as s:
        yield s


class ArticleIn(BaseModel):
    id: int
    title: str


@app.post("/articles")
async def create_article(payload: ArticleIn,
                         db: Annotated[AsyncSession, Depends(session)]) -> dict[str, Any]:
    db.add(Article(id=payload.id, title=payload.title))
    await db.commit()  # the index write runs off the event loop; the commit awaits it
    outcome = scrypath_sa.last_outcome(db)
    if outcome is None:
        return {"saved": True, "search": {"state": "nothing_to_sync"}}
    return {"saved": True, "search": {"mode": outcome.mode, "state": outcome.state,
                                      "visible": outcome.state == "completed"}}


@app.get("/search")
async def search_articles(q: str,
                          db: Annotated[AsyncSession, Depends(session)]) -> dict[str, Any]:
    # Awaitable on an AsyncSession: the backend is asked off the loop, rows load async.
    result = await scrypath_sa.search(db, Article, q, config=config)
    return {"total": result.total, "ids": [a.id for a in result.items]}
