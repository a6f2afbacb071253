"""search(): run a query on a model's alias and hydrate the hits as ORM objects."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from sqlalchemy.orm import Session

from scrypath_sa import aio, documents, registry
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.install import resolve_config

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from scrypath_sa.backends.base import SearchHits

T = TypeVar("T")



@dataclass
class SearchResult(Generic[T]):
    """The page of ``items`` in hit order, the ``total`` number of hits, and
    ``missing_ids``: documents the index returned whose row the database no longer has
    (drift that ``reconcile`` will also report)."""

    items: list[T]
    total: int
    page: int
    per_page: int
    missing_ids: list[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return (self.total + self.per_page - 1) // self.per_page


@overload
def search(session: Session, model: type[T], query: str | dict[str, Any], *, page: int = 1,
           per_page: int = 20, fields: Sequence[str] | None = None,
           config: Config | None = None) -> SearchResult[T]: ...


@overload
def search(session: AsyncSession, model: type[T], query: str | dict[str, Any], *,
           page: int = 1, per_page: int = 20, fields: Sequence[str] | None = None,
           config: Config | None = None) -> Coroutine[Any, Any, SearchResult[T]]: ...


def search(session: Session | AsyncSession, model: type[T], query: str | dict[str, Any], *,
           page: int = 1, per_page: int = 20, fields: Sequence[str] | None = None,
           config: Config | None = None) -> SearchResult[T] | Coroutine[Any, Any, SearchResult[T]]:
    """Search ``model``'s index and load the hits in one query, in hit order.

    ``query`` is a text (matched across ``fields``, default the model's
    ``__search_fields__``, else every field) or an
    OpenSearch query body (``{"match": {...}}`` or ``{"query": ..., "sort": ...}``); the
    embedded backend takes the text form.

    With an ``AsyncSession`` it is awaitable (``await search(session, ...)``): the
    backend is asked from a worker thread and the rows are loaded through the session,
    so the event loop is never blocked.
    """
    if page < 1 or per_page < 1:
        raise ConfigurationError("page and per_page start at 1")
    config = resolve_config(config)
    info = registry.info_for(model)
    if info is None:
        raise ConfigurationError(f"{model.__name__} is not a Searchable model")
    if not registry.uses_default_ids(model):
        raise ConfigurationError(
            f"{model.__name__} has custom document ids: search() hydrates by primary key, "
            "so it needs the default ids (search the backend directly instead)")
    if fields is None:
        fields = registry.search_fields(model)
    ask = functools.partial(config.backend.search, info.index, query,
                            offset=(page - 1) * per_page, limit=per_page, fields=fields)
    if aio.is_async(session):  # an AsyncSession (of an async_scoped_session: call it)
        return _search_async(session, info, ask, page, per_page)
    return _hydrate(cast(Session, session), info, ask(), page, per_page)


async def _search_async(session: Any, info: registry.ModelInfo, ask: Callable[[], SearchHits],
                        page: int, per_page: int) -> SearchResult[Any]:
    hits = await asyncio.to_thread(ask)
    result: SearchResult[Any] = await session.run_sync(_hydrate, info, hits, page, per_page)
    return result


def _hydrate(session: Session, info: registry.ModelInfo, hits: SearchHits, page: int,
             per_page: int) -> SearchResult[Any]:
    keys = {doc_id: documents.parse_document_id(info, doc_id) for doc_id in hits.ids}
    found = documents.rows_by_document_id(session, info, keys)
    items: list[Any] = []
    missing: list[str] = []
    for doc_id in hits.ids:
        hit = found.get(doc_id)
        if hit is None:
            missing.append(doc_id)
        else:
            items.append(hit)
    return SearchResult(items, hits.total, page, per_page, missing)
