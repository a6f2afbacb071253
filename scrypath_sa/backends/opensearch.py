"""OpenSearch backend: the only module that imports opensearch-py."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from scrypath_sa import codec, telemetry
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
from scrypath_sa.errors import BackendError, IndexContractError, MissingExtraError
from scrypath_sa.redaction import redact
from scrypath_sa.registry import Contract

try:
    from opensearchpy import JSONSerializer, OpenSearch
    from opensearchpy import exceptions as os_exc
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("opensearch", "opensearch-py") from exc

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# How a _bulk response filtered as in OpenSearchBackend._send begins when no item failed.
_BULK_WITHOUT_ERRORS = '{"errors":false,'

META_KEY = "scrypath"
# In a version_conflict_engine_exception's reason: "current version [8192] is higher ..."
_CURRENT_VERSION = re.compile(r"current version \[(\d+)\]")


class _Serializer(JSONSerializer):
    """opensearch-py's serializer, reading responses with the library's codec (orjson
    when installed). A ``_bulk`` response that reports no error is not parsed at all:
    there is nothing to learn from its items (see ``OpenSearchBackend._send``)."""

    def loads(self, s: str) -> Any:
        if s.startswith(_BULK_WITHOUT_ERRORS):
            return {"errors": False}
        return codec.loads(s)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """The one translation of opensearch-py's errors (transport, connection,
    serialisation) into :class:`BackendError`, redacted."""
    try:
        yield
    except os_exc.OpenSearchException as exc:
        raise BackendError(f"{what}: {redact(exc)}") from None


class OpenSearchBackend(AdminBackend):
    """Writes to a real OpenSearch cluster through opensearch-py.

    ``hosts_or_url`` is a URL (``"http://user:pass@host:9200"``), a list of hosts, or a
    ready ``OpenSearch`` client; ``client_options`` go to ``OpenSearch(...)``.
    ``max_request_bytes`` caps one ``_bulk`` body (characters of NDJSON, default 10 MiB);
    the processor's ``batch_size`` caps the number of documents per batch.
    """

    name = "opensearch"

    def __init__(self, hosts_or_url: str | Sequence[Any] | OpenSearch, *,
                 max_request_bytes: int = 10 * 1024 * 1024, **client_options: Any):
        if isinstance(hosts_or_url, OpenSearch):
            self.client = hosts_or_url
        else:
            hosts = [hosts_or_url] if isinstance(hosts_or_url, str) else list(hosts_or_url)
            client_options.setdefault("timeout", 30)
            # Worker threads and the processor's sender thread share one client.
            client_options.setdefault("pool_maxsize", 16)
            client_options.setdefault("serializer", _Serializer())
            self.client = OpenSearch(hosts=hosts, **client_options)
        self.max_request_bytes = max_request_bytes
        self._ensured: set[str] = set()

    # ------------------------------------------------------------------ index layout

    def ensure_index(self, alias: str, contract: Contract, model: str,
                     fresh: bool = False) -> None:
        if alias in self._ensured and not fresh:
            return
        posture = self.posture(alias)
        if posture is None:
            self.create_index(f"{alias}_{contract.hash}", contract, model, alias=alias)
            posture = self.posture(alias)
        if posture is None or not posture.is_alias:
            raise IndexContractError(
                f"{alias!r} is a concrete index, not an alias: the library writes through "
                "an alias so it can rebuild behind it. Move it with `scrypath-sa reindex` "
                "or delete it if it holds nothing you need."
            )
        self._ensured.add(alias)

    def create_index(self, name: str, contract: Contract, model: str,
                     alias: str | None = None, alias_for: str | None = None) -> None:
        """Create physical index ``name`` from ``contract`` for alias ``alias_for`` (and
        put it behind ``alias`` at once when given)."""
        alias_for = alias_for or alias
        mappings = dict(contract.mappings)
        mappings["_meta"] = {
            **dict(mappings.get("_meta", {})),
            META_KEY: {"contract_hash": contract.hash, "model": model, "alias": alias_for,
                       "created_at": dt.datetime.now(dt.timezone.utc).isoformat()},
        }
        body: dict[str, Any] = {"settings": dict(contract.settings), "mappings": mappings}
        if alias is not None:
            body["aliases"] = {alias: {"is_write_index": True}}
        with _translated(f"could not create index {name!r}"):
            try:
                self.client.indices.create(index=name, body=body)
            except os_exc.RequestError as exc:
                if exc.error != "resource_already_exists_exception":
                    raise BackendError(
                        f"OpenSearch refused to create index {name!r} for {model}: "
                        f"{redact(exc.info)}. Check {model}.__search_contract__."
                    ) from None

    def posture(self, alias: str) -> IndexPosture | None:
        with _translated(f"could not read alias {alias!r}"):
            found = self._alias_posture(alias)
            # ``exists`` is true for an alias too: one created since the first look
            # (another thread or process ensuring the same index) must not pass for a
            # concrete index.
            if found is None and self.client.indices.exists(index=alias, ignore=404):
                found = self._alias_posture(alias) or IndexPosture(
                    alias, (alias,), self._contract_hash(alias), False)
            return found

    def health(self, alias: str) -> IndexHealth | None:
        with _translated(f"could not read the health of {alias!r}"):
            found = self.client.cluster.health(index=alias)
        return IndexHealth(str(found["status"]), int(found["unassigned_shards"]),
                           int(found["number_of_nodes"]))

    def _alias_posture(self, alias: str) -> IndexPosture | None:
        found = self.client.indices.get_alias(name=alias, ignore=404)
        if not found or "status" in found:
            return None
        indices = tuple(sorted(found))
        write = [i for i, v in found.items()
                 if v.get("aliases", {}).get(alias, {}).get("is_write_index")]
        return IndexPosture(alias, indices,
                            self._contract_hash(write[0] if write else indices[-1]), True)

    def _contract_hash(self, index: str) -> str | None:
        mapping = self.client.indices.get_mapping(index=index)
        meta = mapping.get(index, {}).get("mappings", {}).get("_meta", {})
        value = meta.get(META_KEY, {}).get("contract_hash")
        return str(value) if value is not None else None

    # ------------------------------------------------------------------------ writes

    def bulk(self, ops: Sequence[BulkOp], *, wait_for_visibility: bool) -> list[ItemResult]:
        """Send ``ops`` in as few ``_bulk`` requests as ``max_request_bytes`` allows.

        A document that cannot be serialised fails alone. With several requests only the
        last one waits for a refresh: that refresh covers every earlier write too.
        """
        results: list[ItemResult | None] = [None] * len(ops)
        requests: list[tuple[list[int], list[bytes]]] = []
        size = self.max_request_bytes + 1
        for position, op in enumerate(ops):
            meta: dict[str, Any] = {"_index": op.index, "_id": op.id, "version": op.version,
                                    "version_type": "external_gte"}
            if op.index in self._ensured:
                # If the alias vanished, fail instead of auto-creating a concrete index
                # with guessed mappings under its name.
                meta["require_alias"] = True
            if op.document is None:
                entry = codec.dumps({"delete": meta}) + b"\n"
            else:
                try:
                    entry = (codec.dumps({"index": meta}) + b"\n" + codec.dumps(op.document)
                             + b"\n")
                except (TypeError, ValueError) as exc:
                    results[position] = ItemResult(
                        ItemStatus.PERMANENT, "not_json_serialisable",
                        redact(f"the document is not JSON-serialisable: {exc}"))
                    continue
            if size + len(entry) > self.max_request_bytes:
                requests.append(([], []))
                size = 0
            requests[-1][0].append(position)
            requests[-1][1].append(entry)
            size += len(entry)
        for n, (positions, entries) in enumerate(requests):
            wait = wait_for_visibility and n == len(requests) - 1
            sent = [ops[p] for p in positions]
            for position, result in zip(positions, self._send(sent, b"".join(entries), wait),
                                        strict=True):
                results[position] = result
        return [r for r in results if r is not None]

    def _send(self, ops: Sequence[BulkOp], body: bytes,
              wait_for_visibility: bool) -> list[ItemResult]:
        began = time.perf_counter()
        with telemetry.span("scrypath_sa.bulk", documents=len(ops), bytes=len(body)) as span:
            if span.recording:
                span.set(index=",".join(sorted({op.index for op in ops})))
            results = self._request(ops, body, wait_for_visibility)
            failed = sum(r.status not in (ItemStatus.OK, ItemStatus.CONFLICT) for r in results)
            span.set(failed=failed)
        telemetry.bulk(len(ops), len(body), time.perf_counter() - began, failed)
        return results

    def _request(self, ops: Sequence[BulkOp], body: bytes,
                 wait_for_visibility: bool) -> list[ItemResult]:
        # Only whether anything failed, and each item's status and error: a fraction of
        # the full response for the cluster to write and for us to read.
        params: dict[str, Any] = {"filter_path": "errors,items.*.status,items.*.error"}
        if wait_for_visibility:
            params["refresh"] = "wait_for"
        try:
            response = self.client.bulk(body=body, params=params)
        except (os_exc.ConnectionError, os_exc.ConnectionTimeout) as exc:
            return [ItemResult(ItemStatus.RETRYABLE, "connection_error", redact(exc))] * len(ops)
        except os_exc.SerializationError as exc:  # an answer that could not be read
            return [ItemResult(ItemStatus.RETRYABLE, "bad_response", redact(exc))] * len(ops)
        except os_exc.TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            if status == 413 and len(ops) > 1:
                return (self.bulk(ops[:len(ops) // 2], wait_for_visibility=wait_for_visibility)
                        + self.bulk(ops[len(ops) // 2:], wait_for_visibility=wait_for_visibility))
            kind = ItemStatus.RETRYABLE if status in _RETRYABLE_STATUS else ItemStatus.PERMANENT
            return [ItemResult(kind, f"http_{status}", redact(exc))] * len(ops)
        if response.get("errors") is False:  # every write applied (or deleted nothing)
            return [OK] * len(ops)
        results = [self._item(op, item) for op, item in zip(ops, response["items"], strict=True)]
        for op, result in zip(ops, results, strict=True):
            if result.error_kind == "index_unavailable":
                self._ensured.discard(op.index)  # ensure it again on the next attempt
        return results

    @staticmethod
    def _item(op: BulkOp, item: dict[str, Any]) -> ItemResult:
        result = item.get("delete" if op.document is None else "index", {})
        status = int(result.get("status", 0))
        if 200 <= status < 300 or (op.document is None and status == 404):
            return OK
        error = result.get("error") or {}
        kind = str(error.get("type", f"http_{status}")) if isinstance(error, dict) else "error"
        if status == 409:
            found = _CURRENT_VERSION.search(str(error.get("reason", "")) if isinstance(
                error, dict) else "")
            return ItemResult(ItemStatus.CONFLICT, kind,
                              stored_version=int(found.group(1)) if found else None)
        if kind == "index_not_found_exception":
            return ItemResult(ItemStatus.RETRYABLE, "index_unavailable",
                              redact(f"{op.index} is gone: {error.get('reason', '')}"))
        reason = error.get("reason", "") if isinstance(error, dict) else str(error)
        caused = error.get("caused_by", {}) if isinstance(error, dict) else {}
        if caused:
            reason = f"{reason} (caused by {caused.get('type')}: {caused.get('reason')})"
        if status in _RETRYABLE_STATUS or status == 0:
            return ItemResult(ItemStatus.RETRYABLE, kind, redact(f"{status} {kind}: {reason}"))
        return ItemResult(ItemStatus.PERMANENT, kind, redact(f"{status} {kind}: {reason}"))

    def refresh(self, alias: str) -> None:
        with _translated(f"could not refresh {alias!r}"):
            self.client.indices.refresh(index=alias)

    def versions(self, alias: str, ids: Sequence[str]) -> dict[str, int | None]:
        if not ids:
            return {}
        with _translated(f"could not read documents from {alias!r}"):
            response = self.client.mget(index=alias, body={"ids": list(ids)},
                                        params={"_source": "false"})
        return {str(doc["_id"]): (int(doc["_version"]) if doc.get("found") else None)
                for doc in response["docs"]}

    # --------------------------------------------------------- operator's needs

    def count(self, index: str) -> int:
        with _translated(f"could not count {index!r}"):
            return int(self.client.count(index=index)["count"])

    def scan_ids(self, index: str, page_size: int = 1000) -> Iterator[list[tuple[str, int]]]:
        body = {"query": {"match_all": {}}, "_source": False, "version": True,
                "sort": ["_doc"], "size": page_size}
        with _translated(f"could not scan {index!r}"):
            page = self.client.search(index=index, body=body, params={"scroll": "2m"})
            scroll_id = page.get("_scroll_id")
            try:
                while page["hits"]["hits"]:
                    yield [(str(h["_id"]), int(h.get("_version", 0))) for h in page["hits"]["hits"]]
                    page = self.client.scroll(body={"scroll_id": scroll_id, "scroll": "2m"})
                    scroll_id = page.get("_scroll_id", scroll_id)
            finally:
                if scroll_id:
                    self.client.clear_scroll(body={"scroll_id": scroll_id}, ignore=404)

    def physical_indices(self, alias: str) -> list[PhysicalIndex]:
        with _translated(f"could not list indices of {alias!r}"):
            found = self.client.indices.get(index=f"{alias}_*", ignore=404)
            stats = self.client.indices.stats(index=f"{alias}_*", metric="docs", ignore=404)
        if "status" in found:
            return []
        out = []
        for name, info in found.items():
            meta = info.get("mappings", {}).get("_meta", {}).get(META_KEY, {})
            if meta.get("alias") != alias:
                continue  # not built for this alias (e.g. another alias sharing the prefix)
            docs = stats.get("indices", {}).get(name, {}).get("primaries", {})
            out.append(PhysicalIndex(
                name=name, docs=int(docs.get("docs", {}).get("count", 0)),
                aliased=alias in info.get("aliases", {}),
                contract_hash=meta.get("contract_hash"), created_at=meta.get("created_at")))
        return sorted(out, key=lambda p: (p.created_at or "", p.name))

    def swap_alias(self, alias: str, new_index: str) -> list[str]:
        posture = self.posture(alias)
        old = [i for i in (posture.indices if posture and posture.is_alias else ())
               if i != new_index]
        actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": alias}} for i in old]
        actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
        with _translated(f"could not move alias {alias!r} to {new_index!r}"):
            self.client.indices.update_aliases(body={"actions": actions})
        self._ensured.discard(alias)
        return old

    def delete_index(self, name: str) -> None:
        with _translated(f"could not delete index {name!r}"):
            self.client.indices.delete(index=name, ignore=404)

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        with _translated(f"could not set refresh_interval on {index!r}"):
            self.client.indices.put_settings(
                index=index, body={"index": {"refresh_interval": interval}})

    def documents(self, alias: str, ids: Sequence[str]) -> dict[str, tuple[int, Any] | None]:
        if not ids:
            return {}
        with _translated(f"could not read documents from {alias!r}"):
            response = self.client.mget(index=alias, body={"ids": list(ids)})
        return {str(doc["_id"]): ((int(doc["_version"]), doc.get("_source"))
                                  if doc.get("found") else None)
                for doc in response["docs"]}

    def search(self, index: str, query: str | dict[str, Any], *, offset: int = 0,
               limit: int = 20, fields: Sequence[str] | None = None) -> SearchHits:
        if isinstance(query, str):
            body: dict[str, Any] = {"query": {"multi_match": {
                "query": query, "fields": list(fields or ["*"]), "lenient": True}}}
        else:
            body = dict(query) if "query" in query else {"query": query}
        body.update({"from": offset, "size": limit, "_source": False,
                     "track_total_hits": True})
        with _translated(f"search on {index!r} failed"):
            response = self.client.search(index=index, body=body)
        hits = response["hits"]
        return SearchHits(total=int(hits["total"]["value"]),
                          ids=[str(h["_id"]) for h in hits["hits"]])

    def close(self) -> None:
        self.client.close()
