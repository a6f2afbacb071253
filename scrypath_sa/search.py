"""search(): run a query on a model's alias and hydrate the hits as ORM objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from scrypath_sa import documents, registry
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.install import resolve_config

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


def search(session: Session, model: type[T], query: str | dict[str, Any], *, page: int = 1,
           per_page: int = 20, fields: Sequence[str] | None = None,
           config: Config | None = None) -> SearchResult[T]:
    """Search ``model``'s index and load the hits in one query, in hit order.

    ``query`` is a text (matched across ``fields``, default the model's
    ``__search_fields__``, else every field) or an
    OpenSearch query body (``{"match": {...}}`` or ``{"query": ..., "sort": ...}``); the
    embedded backend takes the text form.
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
    hits = config.backend.search(info.index, query, offset=(page - 1) * per_page,
                                 limit=per_page, fields=fields)
    keys = {doc_id: documents.parse_document_id(info, doc_id) for doc_id in hits.ids}
    found = documents.rows_by_document_id(session, info, keys)
    items: list[T] = []
    missing: list[str] = []
    for doc_id in hits.ids:
        hit = found.get(doc_id)
        if hit is None:
            missing.append(doc_id)
        else:
            items.append(hit)
    return SearchResult(items, hits.total, page, per_page, missing)
