"""One contract, two backends: the same tests run against OpenSearch and the embedded one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import scrypath_sa
from scrypath_sa.backends import Backend, BulkOp, EmbeddedBackend, ItemStatus, OpenSearchBackend
from scrypath_sa.registry import Contract
from tests.models import make_world

CONTRACT = Contract({"properties": {"title": {"type": "text", "analyzer": "english"}}},
                    {"number_of_shards": 1, "number_of_replicas": 0})


@pytest.fixture(params=["opensearch", "embedded"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        backend: Backend = EmbeddedBackend(tmp_path / "search.sqlite3")
    else:
        backend = OpenSearchBackend(request.getfixturevalue("opensearch_url"))
    yield backend
    backend.close()


@pytest.fixture
def alias(any_backend: Backend) -> Iterator[str]:
    name = f"c{uuid.uuid4().hex[:10]}"
    yield name
    for index in any_backend.physical_indices(name):
        any_backend.delete_index(index.name)


def put(backend: Backend, alias: str, doc_id: str, version: int,
        doc: dict[str, Any] | None) -> ItemStatus:
    (result,) = backend.bulk([BulkOp(alias, doc_id, version, doc)], wait_for_visibility=True)
    return result.status


def test_ensure_index_builds_an_alias_with_the_contract_hash(any_backend: Backend,
                                                             alias: str) -> None:
    assert any_backend.posture(alias) is None
    any_backend.ensure_index(alias, CONTRACT, "Model")
    posture = any_backend.posture(alias)
    assert posture is not None and posture.is_alias
    assert posture.contract_hash == CONTRACT.hash
    (physical,) = any_backend.physical_indices(alias)
    assert physical.aliased and physical.name == posture.indices[0] != alias


def test_an_alias_created_while_it_is_being_looked_at_is_still_an_alias(
        opensearch_url: str) -> None:
    """Worker threads ensure a new index at the same moment: one that finds no alias and
    then sees the name exist (another thread just created index and alias) must not
    take the alias for a concrete index (its writes went ``retrying``, telling the
    operator to move a concrete index that does not exist)."""
    backend = OpenSearchBackend(opensearch_url)
    alias = f"c{uuid.uuid4().hex[:10]}"
    real = backend.client.indices.get_alias
    looks = 0

    def get_alias(**kwargs: Any) -> Any:
        nonlocal looks
        looks += 1
        if looks == 1:  # the first look: nothing yet, then the other thread creates it
            backend.create_index(f"{alias}_{CONTRACT.hash}", CONTRACT, "Model", alias=alias)
            return {}
        return real(**kwargs)

    backend.client.indices.get_alias = get_alias  # type: ignore[method-assign]
    try:
        posture = backend.posture(alias)
        assert posture is not None and posture.is_alias, posture
        assert posture.indices == (f"{alias}_{CONTRACT.hash}",)
    finally:
        backend.delete_index(f"{alias}_{CONTRACT.hash}")
        backend.close()


def test_a_bulk_response_without_errors_is_not_read_item_by_item() -> None:
    """Pure logic: the library's serializer stops at a filtered ``_bulk`` response that
    reports no error (nothing in its items would change an outcome); any other response,
    including one with errors, is parsed whole."""
    from scrypath_sa.backends.opensearch import _Serializer

    ok = '{"errors":false,"items":[{"index":{"status":201}},{"delete":{"status":404}}]}'
    assert _Serializer().loads(ok) == {"errors": False}
    failed = '{"errors":true,"items":[{"index":{"status":409,"error":{"type":"x"}}}]}'
    assert _Serializer().loads(failed)["items"][0]["index"]["status"] == 409
    assert _Serializer().loads('{"took":3,"errors":false}') == {"took": 3, "errors": False}


def test_external_versions_conflicts_and_tombstones(any_backend: Backend, alias: str) -> None:
    any_backend.ensure_index(alias, CONTRACT, "Model")
    assert put(any_backend, alias, "1", 10, {"title": "ten"}) is ItemStatus.OK
    assert put(any_backend, alias, "1", 5, {"title": "five"}) is ItemStatus.CONFLICT
    assert put(any_backend, alias, "1", 10, {"title": "ten again"}) is ItemStatus.OK
    assert any_backend.documents(alias, ["1"])["1"] == (10, {"title": "ten again"})
    assert put(any_backend, alias, "1", 20, None) is ItemStatus.OK  # delete
    assert put(any_backend, alias, "1", 15, {"title": "late"}) is ItemStatus.CONFLICT
    assert put(any_backend, alias, "absent", 1, None) is ItemStatus.OK
    assert any_backend.versions(alias, ["1", "absent"]) == {"1": None, "absent": None}


def test_count_scan_and_search(any_backend: Backend, alias: str) -> None:
    any_backend.ensure_index(alias, CONTRACT, "Model")
    ops = [BulkOp(alias, str(i), 1, {"title": f"running fox {i}" if i % 2 else f"cat {i}"})
           for i in range(25)]
    assert {r.status for r in any_backend.bulk(ops, wait_for_visibility=True)} == {ItemStatus.OK}
    any_backend.refresh(alias)
    assert any_backend.count(alias) == 25
    pages = list(any_backend.scan_ids(alias, page_size=10))
    assert sorted(i for page in pages for i, _ in page) == sorted(str(i) for i in range(25))
    assert all(len(page) <= 10 for page in pages)
    hits = any_backend.search(alias, "runs", limit=5)
    assert hits.total == 12 and len(hits.ids) == 5  # stemmed: "runs" finds "running"
    assert all(int(i) % 2 for i in hits.ids)


def test_swap_alias_and_delete_index(any_backend: Backend, alias: str) -> None:
    any_backend.ensure_index(alias, CONTRACT, "Model")
    (first,) = any_backend.posture(alias).indices  # type: ignore[union-attr]
    any_backend.create_index(f"{alias}_next", CONTRACT, "Model", alias_for=alias)
    put(any_backend, f"{alias}_next", "x", 1, {"title": "in the new one"})
    assert any_backend.swap_alias(alias, f"{alias}_next") == [first]
    assert any_backend.posture(alias).indices == (f"{alias}_next",)  # type: ignore[union-attr]
    assert any_backend.count(alias) == 1
    names = {(p.name, p.aliased) for p in any_backend.physical_indices(alias)}
    assert names == {(first, False), (f"{alias}_next", True)}
    any_backend.delete_index(first)
    assert [p.name for p in any_backend.physical_indices(alias)] == [f"{alias}_next"]


def test_sync_and_search_end_to_end_on_both(any_backend: Backend, engine: Engine,
                                            index_prefix: str) -> None:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=any_backend)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=t) for i, t in
                         enumerate(["Running foxes", "Sleeping cats", "A running cat"], 1)])
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
        result = scrypath_sa.search(session, w.Article, "run", per_page=10)
        assert result.total == 2 and result.missing_ids == []
        assert sorted(a.id for a in result.items) == [1, 3]
        with engine.begin() as conn:  # a row vanishes behind the library's back
            conn.exec_driver_sql("DELETE FROM articles WHERE id = 3")
        result = scrypath_sa.search(session, w.Article, "run", per_page=10)
        assert [a.id for a in result.items] == [1] and result.missing_ids == ["3"]
    (drift,) = scrypath_sa.reconcile([w.Article]).models
    assert drift.orphaned_in_index == 1 and drift.recommendation == "backfill"
