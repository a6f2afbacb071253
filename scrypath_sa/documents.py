"""How a row becomes a document: JSON-safe values, document ids <-> primary keys,
building one document, and the one loader of rows by primary key.

Primary keys travel as JSON-safe tuples (as ``sync_events.pk`` stores them); loaded rows
are keyed the same way, whatever the column types.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy import types as sa_types
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import instance_state

from scrypath_sa.redaction import redact
from scrypath_sa.registry import (
    ModelInfo,
    column_keys,
    pk_keys,
    uses_default_documents,
    uses_default_ids,
)
from scrypath_sa.sql import Bind, connect, key_filter, rows

Key = tuple[Any, ...]
"""A primary key as a JSON-safe tuple."""

Built = tuple[str, Any]
"""('upsert', document) | ('delete', None) | ('error', message)."""

def json_safe(value: Any) -> Any:
    """Make a column value JSON-safe the way a search document wants it."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


_PLAIN_TYPES = frozenset({
    sa_types.String, sa_types.Text, sa_types.Unicode, sa_types.UnicodeText, sa_types.VARCHAR,
    sa_types.CHAR, sa_types.NVARCHAR, sa_types.NCHAR, sa_types.TEXT, sa_types.Integer,
    sa_types.BigInteger, sa_types.SmallInteger, sa_types.INTEGER, sa_types.BIGINT,
    sa_types.SMALLINT, sa_types.Boolean, sa_types.BOOLEAN,
})
_FLOAT_TYPES = frozenset({sa_types.Float, sa_types.Double, sa_types.REAL, sa_types.FLOAT,
                          sa_types.DOUBLE, sa_types.DOUBLE_PRECISION})


def plain_json_type(column_type: Any) -> bool:
    """True when every value a column of this SQLAlchemy type reads back is already
    JSON-safe (str, int, float, bool or None), so :func:`json_safe` can be skipped.
    Exact built-in types only: a subclass or a TypeDecorator may return anything."""
    kind = type(column_type)
    if kind in _FLOAT_TYPES:
        return not column_type.asdecimal
    return kind in _PLAIN_TYPES


def column_document(obj: object) -> dict[str, Any]:
    """The default document: the declared fields (else every mapped column), JSON-safe;
    a dotted field (``author.name``, through many-to-one relationships) nests."""
    document: dict[str, Any] = {}
    for key in column_keys(type(obj)):
        *hops, last = key.split(".")
        value: Any = obj
        into = document
        for hop in hops:
            value = getattr(value, hop) if value is not None else None
            into = into.setdefault(hop, {})
        into[last] = json_safe(getattr(value, last) if value is not None else None)
    return document


def _escape(part: object) -> str:
    return str(part).replace("%", "%25").replace(":", "%3A")


def pk_document_id(pk: list[Any] | tuple[Any, ...]) -> str:
    """Primary key -> document id: ``"7"``, or ``"7:en"`` for a composite key."""
    if len(pk) == 1:
        return str(json_safe(pk[0]))
    return ":".join(_escape(json_safe(v)) for v in pk)


def _unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


def document_id(obj: Any, pk: list[Any]) -> str:
    """``obj``'s document id, given its JSON-safe primary key ``pk`` (the key itself for
    default ids, without asking the object again)."""
    if uses_default_ids(type(obj)):
        return pk_document_id(pk)
    return str(obj.search_document_id())


class ColumnReader:
    """Reads default documents with one column query (no ORM objects): the model's
    declared fields, each many-to-one hop of a dotted field an outer join. ``select``
    has the document's fields first, then the primary key's columns the document lacks;
    :meth:`document` takes one of its rows apart (``pk_positions``: where the primary
    key's values are in a row)."""

    def __init__(self, info: ModelInfo) -> None:
        fields = column_keys(info.cls)
        key_names = pk_keys(info.cls)
        read = fields + tuple(k for k in key_names if k not in fields)
        joined: dict[tuple[str, ...], Any] = {}
        columns: list[Any] = []
        for field_ in read:
            *hops, last = field_.split(".")
            entity: Any = info.cls
            for depth, hop in enumerate(hops):
                path = tuple(hops[:depth + 1])
                if path not in joined:
                    target = aliased(getattr(entity, hop).property.mapper.class_)
                    joined[path] = (getattr(entity, hop).of_type(target), target)
                entity = joined[path][1]
            columns.append(getattr(entity, last).label(f"c{len(columns)}"))
        query = select(*columns).select_from(info.cls)
        for on, _ in joined.values():
            query = query.outerjoin(on)
        self.select = query
        self.pk_columns = list(info.mapper.primary_key)
        self._fields = fields
        self._width = len(fields)
        self._nested = {i: f.split(".") for i, f in enumerate(fields) if "." in f}
        self.pk_positions = [read.index(k) for k in key_names]
        self._convert = [i for i, c in enumerate(columns) if not plain_json_type(c.type)]

    def document(self, row: Sequence[Any]) -> tuple[Key, dict[str, Any]]:
        """(JSON-safe primary key, document) of one row of :attr:`select`."""
        values: Any = row
        if self._convert:
            values = list(row)
            for i in self._convert:
                values[i] = json_safe(values[i])
        key = tuple([values[p] for p in self.pk_positions])
        if not self._nested:
            return key, dict(zip(self._fields, values[:self._width], strict=True))
        document: dict[str, Any] = {}
        for i, field_ in enumerate(self._fields):
            if i in self._nested:
                *hops, last = self._nested[i]
                into = document
                for hop in hops:
                    into = into.setdefault(hop, {})
                into[last] = values[i]
            else:
                document[field_] = values[i]
        return key, document


_readers: weakref.WeakKeyDictionary[type, ColumnReader] = weakref.WeakKeyDictionary()


def column_reader(info: ModelInfo) -> ColumnReader:
    """The :class:`ColumnReader` of ``info``'s model (built once)."""
    reader = _readers.get(info.cls)
    if reader is None:
        reader = _readers[info.cls] = ColumnReader(info)
    return reader


def parse_document_id(info: ModelInfo, document_id: str) -> tuple[Any, ...] | None:
    """Document id -> primary key values typed for the columns, for default ids.
    None when the id cannot be a key of this model."""
    columns = list(info.mapper.primary_key)
    parts = [document_id] if len(columns) == 1 else [
        _unescape(p) for p in document_id.split(":")]
    return typed_key(info, parts)


def typed_key(info: ModelInfo, parts: list[Any]) -> tuple[Any, ...] | None:
    """JSON-safe key values -> values typed for the primary key columns (None if not)."""
    columns = list(info.mapper.primary_key)
    if len(parts) != len(columns):
        return None
    values = []
    for column, part in zip(columns, parts, strict=True):
        try:
            kind = column.type.python_type
        except NotImplementedError:
            kind = str
        try:
            values.append(kind(part) if kind in (int, str, uuid.UUID, float) else part)
            if kind in (dt.date, dt.datetime) and isinstance(part, str):
                values[-1] = kind.fromisoformat(part)
        except (TypeError, ValueError):
            return None
    return tuple(values)


def primary_key(obj: object) -> list[Any]:
    """The primary key of a persistent, just-inserted or just-deleted object, as a
    JSON-safe list."""
    identity = instance_state(obj).identity
    # Just inserted, the identity is set only when the flush ends: the key attributes.
    return json_safe_key(
        identity if identity is not None else [getattr(obj, k) for k in pk_keys(type(obj))])


def json_safe_key(values: Sequence[Any]) -> list[Any]:
    """Primary-key values as a JSON-safe list (ints and strings as they are)."""
    return [v if type(v) in _PLAIN_KEYS else json_safe(v) for v in values]


_PLAIN_KEYS = (int, str)


# ------------------------------------------------------------------ building documents

def build_document(obj: Any) -> Built:
    """('upsert', document) | ('delete', None) | ('error', message) for one row."""
    name = type(obj).__name__
    try:
        if not obj.should_index():
            return ("delete", None)
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.should_index() raised {type(exc).__name__}: {redact(exc)}")
    try:
        document = obj.search_document()
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.search_document() raised {type(exc).__name__}: {redact(exc)}")
    if not isinstance(document, dict):
        return ("error", f"{name}.search_document() must return a dict, "
                         f"got {type(document).__name__}")
    return ("upsert", document)


# -------------------------------------------------------------- loading rows by key

LOAD_CHUNK = 1000


def rows_by_key(session: Session, info: ModelInfo, keys: Sequence[Sequence[Any]], *,
                load_options: bool = True) -> dict[Key, Any]:
    """The rows of ``info``'s model whose primary key is among ``keys`` (JSON-safe or
    typed), keyed by their JSON-safe key; rows that are gone are absent."""
    pk_cols = list(info.mapper.primary_key)
    options = info.cls.search_load_options() if load_options else ()
    found: dict[Key, Any] = {}
    for start in range(0, len(keys), LOAD_CHUNK):
        where = key_filter(session.connection(), pk_cols, keys[start:start + LOAD_CHUNK])
        for obj in session.scalars(select(info.cls).where(where).options(*options)):
            found[tuple(primary_key(obj))] = obj
    return found


def rows_by_document_id(session: Session, info: ModelInfo,
                        keys: Mapping[str, Sequence[Any] | None], *,
                        load_options: bool = True) -> dict[str, Any]:
    """Document id -> its row, for the ids of ``keys`` (id -> primary key, JSON-safe or
    typed, or None when unknown) whose row exists."""
    found = rows_by_key(session, info, [k for k in keys.values() if k is not None],
                        load_options=load_options)
    rows = {}
    for doc_id, key in keys.items():
        row = found.get(tuple(json_safe_key(key))) if key is not None else None
        if row is not None:
            rows[doc_id] = row
    return rows


def load_documents(bind: Bind, info: ModelInfo, keys: Sequence[Key]) -> dict[Key, Built]:
    """JSON-safe primary key -> built document for the rows among ``keys`` that exist."""
    if uses_default_documents(info.cls):
        return column_documents(bind, info, keys)
    with Session(bind, expire_on_commit=False) as session:
        found = rows_by_key(session, info, keys)
        # Built while the session is open, so lazy loads still work.
        built = {key: build_document(obj) for key, obj in found.items()}
        if isinstance(bind, Engine):
            session.commit()  # rather than the close's ROLLBACK (see sql.connect)
        return built


def column_documents(bind: Bind, info: ModelInfo, keys: Sequence[Key]) -> dict[Key, Built]:
    """The same documents for models with default documents, from a plain column query
    (no ORM objects to build). Each document is a dict of plain values, which the cycle
    collector does not track."""
    reader = column_reader(info)
    built: dict[Key, Built] = {}
    with connect(bind) as conn:
        for start in range(0, len(keys), LOAD_CHUNK):
            where = key_filter(conn, reader.pk_columns, keys[start:start + LOAD_CHUNK])
            for row in rows(conn.execute(reader.select.where(where))):
                key, document = reader.document(row)
                built[key] = ("upsert", document)
    return built
