"""Streaming both sides in bounded memory: database rows by keyset, index ids by scroll."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from scrypath_sa import documents, registry
from scrypath_sa.backends.base import AdminBackend
from scrypath_sa.registry import ModelInfo
from scrypath_sa.sql import after_key


def row_pages(engine: Engine, info: ModelInfo, *, where: Any = None,
              after: list[Any] | None = None, page_size: int = 1000,
              load_options: bool = True) -> Iterator[list[Any]]:
    """Rows of ``info``'s model in primary-key order, ``page_size`` at a time.

    Keyset pagination: each page is one short query (``WHERE pk > last``), so nothing
    holds a long transaction open and an interrupted run resumes from the last key.
    Documents must be built before the next page is requested (the page's session
    closes then).
    """
    pk = list(info.mapper.primary_key)
    last = list(after) if after is not None else None
    while True:
        query = select(info.cls).order_by(*pk).limit(page_size)
        if load_options:
            query = query.options(*info.cls.search_load_options())
        if where is not None:
            query = query.where(where)
        if last is not None:
            query = query.where(after_key(pk, last))
        with Session(engine, expire_on_commit=False) as session:
            page = list(session.scalars(query))
            if not page:
                return
            yield page
        last = [getattr(page[-1], k) for k in registry.pk_keys(info.cls)]


def column_pages(engine: Engine, info: ModelInfo, *, where: Any = None,
                 after: list[Any] | None = None,
                 page_size: int = 1000) -> Iterator[list[tuple[list[Any], dict[str, Any]]]]:
    """Like :func:`row_pages` for models with default documents: (primary key, document)
    pairs read with a plain column query, without building ORM objects."""
    reader = documents.column_reader(info)
    last = list(after) if after is not None else None
    while True:
        query = reader.select.order_by(*reader.pk_columns).limit(page_size)
        if where is not None:
            query = query.where(where)
        if last is not None:
            query = query.where(after_key(reader.pk_columns, last))
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [(list(key), document) for key, document in map(reader.document, rows)]
        last = [rows[-1][p] for p in reader.pk_positions]


def orphan_pages(engine: Engine, backend: AdminBackend, info: ModelInfo, index: str, *,
                 page_size: int = 1000,
                 known_ids: set[str] | None = None) -> Iterator[list[tuple[str, int]]]:
    """Pages of (document id, version) in ``index`` whose row is gone or must not be
    indexed (``should_index`` is False).

    With default document ids each page of the index is checked against the database by
    primary key. A model with custom ids cannot be mapped back to keys: pass
    ``known_ids`` (the ids the database produces) instead.
    """
    default_ids = registry.uses_default_ids(info.cls)
    check_should_index = not registry.uses_default_should_index(info.cls)
    for page in backend.scan_ids(index, page_size):
        if known_ids is not None or not default_ids:
            known = known_ids or set()
            orphans = [(doc_id, v) for doc_id, v in page if doc_id not in known]
        else:
            parsed = {doc_id: documents.parse_document_id(info, doc_id) for doc_id, _ in page}
            with Session(engine) as session:
                rows = documents.rows_by_document_id(session, info, parsed,
                                                     load_options=False)
                orphans = []
                for doc_id, version in page:
                    row = rows.get(doc_id)
                    if row is None or (check_should_index and not row.should_index()):
                        orphans.append((doc_id, version))
        if orphans:
            yield orphans
