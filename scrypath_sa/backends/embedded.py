"""The embedded default: a search backend in one SQLite file, no server needed.

It keeps the same contract as OpenSearch: aliases over physical indices, external
versions (a lower version is a conflict, a delete leaves a versioned tombstone), ordered
id scans, counts and simple full-text search (SQLite FTS5 with the Porter stemmer). A
second process opening the same file (the CLI, a worker) sees what the first wrote.
Writes are visible once their transaction commits, so ``refresh`` has nothing to wait for.

Use a path for a file, or ``":memory:"`` for a private in-process index (tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scrypath_sa.backends.base import (
    OK,
    AdminBackend,
    BulkOp,
    IndexHealth,
    IndexPosture,
    ItemResult,
    ItemStatus,
    PhysicalIndex,
    SearchHits,
)
from scrypath_sa.errors import BackendError, IndexContractError
from scrypath_sa.registry import Contract

_SCHEMA = """
CREATE TABLE IF NOT EXISTS indices (
    name TEXT PRIMARY KEY, alias_for TEXT, model TEXT, contract_hash TEXT,
    contract TEXT, created_at TEXT, refresh_interval TEXT);
CREATE TABLE IF NOT EXISTS aliases (alias TEXT NOT NULL, index_name TEXT NOT NULL,
    PRIMARY KEY (alias, index_name));
CREATE TABLE IF NOT EXISTS docs (
    index_name TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, source TEXT,
    PRIMARY KEY (index_name, id));
CREATE VIRTUAL TABLE IF NOT EXISTS docs_fts USING fts5(
    index_name UNINDEXED, id UNINDEXED, body, tokenize = 'porter unicode61');
"""


def _text(value: Any) -> str:
    """The searchable text of a document: every string in it, nested ones too."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_text(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return ""


class EmbeddedBackend(AdminBackend):
    """A file-backed search index with OpenSearch's versioning and alias semantics."""

    name = "embedded"

    def __init__(self, path: str | Path = "scrypath_search.sqlite3") -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None
        if self.path == ":memory:":
            self._shared = sqlite3.connect(":memory:", check_same_thread=False,
                                           isolation_level=None)
        with self._lock:
            conn = self._shared or sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                conn.executescript(_SCHEMA)
            finally:
                if self._shared is None:
                    conn.close()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a file connection per call, so any process or thread works."""
        with self._lock:
            conn = self._shared or sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                if self._shared is None:
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.commit()
            except sqlite3.Error as exc:
                conn.rollback()
                raise BackendError(f"embedded index {self.path}: {exc}") from None
            finally:
                if self._shared is None:
                    conn.close()

    # ------------------------------------------------------------------ index layout

    def _resolve(self, conn: sqlite3.Connection, name: str) -> list[str]:
        aliased = [r[0] for r in conn.execute(
            "SELECT index_name FROM aliases WHERE alias = ? ORDER BY index_name", (name,))]
        if aliased:
            return aliased
        if conn.execute("SELECT 1 FROM indices WHERE name = ?", (name,)).fetchone():
            return [name]
        return []

    def _write_index(self, conn: sqlite3.Connection, name: str) -> str:
        targets = self._resolve(conn, name)
        if len(targets) != 1:
            raise IndexContractError(f"{name!r} does not resolve to one index: {targets}")
        return targets[0]

    def ensure_index(self, alias: str, contract: Contract, model: str,
                     fresh: bool = False) -> None:
        if self.posture(alias) is None:
            self.create_index(f"{alias}_{contract.hash}", contract, model, alias=alias)

    def create_index(self, name: str, contract: Contract, model: str,
                     alias: str | None = None, alias_for: str | None = None) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        with self._conn() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO indices VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (name, alias_for or alias, model, contract.hash,
                 json.dumps({"mappings": contract.mappings, "settings": contract.settings}),
                 now))
            if alias is not None:
                conn.execute("INSERT OR IGNORE INTO aliases VALUES (?, ?)", (alias, name))

    def health(self, alias: str) -> IndexHealth | None:
        return IndexHealth("green", 0, 1)  # one file, no replicas to lose

    def posture(self, alias: str) -> IndexPosture | None:
        with self._conn() as conn:
            aliased = [r[0] for r in conn.execute(
                "SELECT index_name FROM aliases WHERE alias = ? ORDER BY index_name", (alias,))]
            indices = aliased or [r[0] for r in conn.execute(
                "SELECT name FROM indices WHERE name = ?", (alias,))]
            if not indices:
                return None
            row = conn.execute("SELECT contract_hash FROM indices WHERE name = ?",
                               (indices[-1],)).fetchone()
        return IndexPosture(alias, tuple(indices), row[0] if row else None, bool(aliased))

    def physical_indices(self, alias: str) -> list[PhysicalIndex]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT name, contract_hash, created_at, "
                " (SELECT count(*) FROM docs d WHERE d.index_name = i.name AND NOT d.deleted),"
                " EXISTS (SELECT 1 FROM aliases a WHERE a.alias = ? AND a.index_name = i.name)"
                " FROM indices i WHERE alias_for = ? ORDER BY created_at, name",
                (alias, alias)).fetchall()
        return [PhysicalIndex(name, docs, bool(aliased), contract_hash, created_at)
                for name, contract_hash, created_at, docs, aliased in rows]

    def swap_alias(self, alias: str, new_index: str) -> list[str]:
        with self._conn() as conn:
            old = [r[0] for r in conn.execute(
                "SELECT index_name FROM aliases WHERE alias = ? AND index_name != ?",
                (alias, new_index))]
            conn.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            conn.execute("INSERT INTO aliases VALUES (?, ?)", (alias, new_index))
        return old

    def delete_index(self, name: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM docs WHERE index_name = ?", (name,))
            conn.execute("DELETE FROM docs_fts WHERE index_name = ?", (name,))
            conn.execute("DELETE FROM aliases WHERE index_name = ?", (name,))
            conn.execute("DELETE FROM indices WHERE name = ?", (name,))

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE indices SET refresh_interval = ? WHERE name = ?",
                         (interval, index))

    # ------------------------------------------------------------------------ writes

    def bulk(self, ops: Sequence[BulkOp], *, wait_for_visibility: bool) -> list[ItemResult]:
        results: list[ItemResult] = []
        with self._conn() as conn:
            for op in ops:
                try:
                    index = self._write_index(conn, op.index)
                except IndexContractError as exc:
                    results.append(ItemResult(ItemStatus.RETRYABLE, "index_unavailable",
                                              str(exc)))
                    continue
                stored = conn.execute("SELECT version FROM docs WHERE index_name = ? AND id = ?",
                                      (index, op.id)).fetchone()
                if stored is not None and op.version < stored[0]:
                    results.append(ItemResult(ItemStatus.CONFLICT, "version_conflict",
                                              stored_version=int(stored[0])))
                    continue
                if op.document is None:
                    source = None
                else:
                    try:
                        source = json.dumps(op.document)
                    except (TypeError, ValueError) as exc:
                        results.append(ItemResult(ItemStatus.PERMANENT, "not_json_serialisable",
                                                  f"the document is not JSON-serialisable: {exc}"))
                        continue
                conn.execute("INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?)",
                             (index, op.id, op.version, op.document is None, source))
                conn.execute("DELETE FROM docs_fts WHERE index_name = ? AND id = ?",
                             (index, op.id))
                if op.document is not None:
                    conn.execute("INSERT INTO docs_fts VALUES (?, ?, ?)",
                                 (index, op.id, _text(op.document)))
                results.append(OK)
        return results

    def refresh(self, alias: str) -> None:
        """Committed writes are already visible here."""

    # ------------------------------------------------------------------------- reads

    def versions(self, alias: str, ids: Sequence[str]) -> dict[str, int | None]:
        return {i: (hit[0] if hit else None) for i, hit in self.documents(alias, ids).items()}

    def documents(self, alias: str, ids: Sequence[str]) -> dict[str, tuple[int, Any] | None]:
        out: dict[str, tuple[int, Any] | None] = {i: None for i in ids}
        with self._conn() as conn:
            for index in self._resolve(conn, alias):
                for start in range(0, len(ids), 500):
                    chunk = list(ids[start:start + 500])
                    marks = ",".join("?" * len(chunk))
                    for doc_id, version, source in conn.execute(
                            f"SELECT id, version, source FROM docs WHERE index_name = ? "
                            f"AND NOT deleted AND id IN ({marks})", (index, *chunk)):
                        out[doc_id] = (version, json.loads(source))
        return out

    def count(self, index: str) -> int:
        with self._conn() as conn:
            names = self._resolve(conn, index)
            return sum(conn.execute("SELECT count(*) FROM docs WHERE index_name = ? "
                                    "AND NOT deleted", (n,)).fetchone()[0] for n in names)

    def scan_ids(self, index: str, page_size: int = 1000) -> Iterator[list[tuple[str, int]]]:
        with self._conn() as conn:
            names = self._resolve(conn, index)
        for name in names:
            last = ""
            while True:
                with self._conn() as conn:
                    page = conn.execute(
                        "SELECT id, version FROM docs WHERE index_name = ? AND NOT deleted "
                        "AND id > ? ORDER BY id LIMIT ?", (name, last, page_size)).fetchall()
                if not page:
                    break
                yield [(str(i), int(v)) for i, v in page]
                last = page[-1][0]

    def search(self, index: str, query: str | dict[str, Any], *, offset: int = 0,
               limit: int = 20, fields: Sequence[str] | None = None) -> SearchHits:
        if not isinstance(query, str):
            raise BackendError("the embedded backend searches text only; pass a string query")
        terms = " OR ".join(f'"{t}"' for t in query.replace('"', " ").split())
        if not terms:
            return SearchHits(total=0, ids=[])
        with self._conn() as conn:
            names = self._resolve(conn, index)
            marks = ",".join("?" * len(names)) or "NULL"
            where = f"docs_fts MATCH ? AND index_name IN ({marks})"
            total = conn.execute(f"SELECT count(*) FROM docs_fts WHERE {where}",
                                 (terms, *names)).fetchone()[0]
            rows = conn.execute(
                f"SELECT id FROM docs_fts WHERE {where} ORDER BY bm25(docs_fts), id "
                "LIMIT ? OFFSET ?", (terms, *names, limit, offset)).fetchall()
        return SearchHits(total=int(total), ids=[str(r[0]) for r in rows])

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
