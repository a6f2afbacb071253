"""Searchable models: their index contract, how a row becomes a document, ids and keys."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import hashlib
import json
import re
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy import types as sa_types
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import instance_state

from scrypath_sa.errors import ConfigurationError

if TYPE_CHECKING:
    from scrypath_sa.mixin import Searchable

_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]{0,199}$")
_CONTRACT_KEYS = frozenset({"mappings", "settings"})


@dataclass(frozen=True)
class Contract:
    """An index's mappings and settings; its hash identifies the contract in ``_meta``."""

    mappings: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        canonical = json.dumps({"mappings": self.mappings, "settings": self.settings},
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelInfo:
    cls: type[Searchable]
    index: str
    contract: Contract

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def mapper(self) -> Mapper[Any]:
        mapper: Mapper[Any] = inspect(self.cls)
        return mapper


_by_index: dict[str, ModelInfo] = {}
_by_class: weakref.WeakKeyDictionary[type, ModelInfo] = weakref.WeakKeyDictionary()


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Searchable]) -> ModelInfo:
    """Validate ``cls``'s search options and register it; errors name model and option."""
    name = cls.__name__
    index = cls.__dict__.get("__search_index__") or getattr(cls, "__search_index__", None)
    if index is None:
        index = getattr(cls, "__tablename__", None)
    if not isinstance(index, str) or not _INDEX_NAME.match(index):
        raise ConfigurationError(
            f"{name}.__search_index__ = {index!r} is not a valid index alias: use lowercase "
            "letters, digits, '_', '-' or '.', starting with a letter or digit, at most 200 "
            "characters"
        )
    contract = _contract(name, getattr(cls, "__search_contract__", None))
    for method in ("search_document", "search_document_id", "should_index",
                   "search_load_options"):
        if not callable(getattr(cls, method, None)):
            raise ConfigurationError(
                f"{name}.{method} must be a method, got {getattr(cls, method, None)!r}"
            )
    existing = _by_index.get(index)
    if existing is not None and _qualified(existing.cls) != _qualified(cls):
        raise ConfigurationError(
            f"{name}.__search_index__ = {index!r} is already used by "
            f"{_qualified(existing.cls)}: give each model its own index alias"
        )
    info = ModelInfo(cls, index, contract)
    _by_index[index] = info
    _by_class[cls] = info
    return info


def _contract(model: str, raw: object) -> Contract:
    if raw is None:
        return Contract()
    if isinstance(raw, Contract):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{model}.__search_contract__ must be a dict with 'mappings' and/or 'settings', "
            f"got {type(raw).__name__}"
        )
    unknown = set(raw) - _CONTRACT_KEYS
    if unknown:
        raise ConfigurationError(
            f"{model}.__search_contract__ has unknown keys {sorted(unknown)}: only "
            "'mappings' and 'settings' are allowed"
        )
    for key in _CONTRACT_KEYS & set(raw):
        if not isinstance(raw[key], Mapping):
            raise ConfigurationError(f"{model}.__search_contract__[{key!r}] must be a dict")
    try:
        json.dumps(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{model}.__search_contract__ must be JSON-serialisable: {exc}"
        ) from None
    return Contract(dict(raw.get("mappings", {})), dict(raw.get("settings", {})))


def info_for(cls: type) -> ModelInfo | None:
    for klass in cls.__mro__:
        found = _by_class.get(klass)
        if found is not None:
            return found
    return None


def info_for_index(index: str) -> ModelInfo | None:
    return _by_index.get(index)


def all_models() -> list[ModelInfo]:
    return list(_by_index.values())


# ---------------------------------------------------------------------------- documents

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


_keys_cache: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _column_keys(cls: type) -> tuple[str, ...]:
    keys = _keys_cache.get(cls)
    if keys is None:
        mapper: Mapper[Any] = inspect(cls)
        keys = _keys_cache[cls] = tuple(attr.key for attr in mapper.column_attrs)
    return keys


_pk_keys_cache: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def pk_keys(cls: type) -> tuple[str, ...]:
    """The attribute names of ``cls``'s primary-key columns, in key order."""
    keys = _pk_keys_cache.get(cls)
    if keys is None:
        mapper: Mapper[Any] = inspect(cls)
        keys = _pk_keys_cache[cls] = tuple(
            mapper.get_property_by_column(c).key for c in mapper.primary_key)
    return keys


def column_document(obj: object) -> dict[str, Any]:
    """The default document: every mapped column attribute, JSON-safe."""
    return {key: json_safe(getattr(obj, key)) for key in _column_keys(type(obj))}


def _escape(part: object) -> str:
    return str(part).replace("%", "%25").replace(":", "%3A")


def pk_document_id(pk: list[Any] | tuple[Any, ...]) -> str:
    """Primary key -> document id: ``"7"``, or ``"7:en"`` for a composite key."""
    if len(pk) == 1:
        return str(json_safe(pk[0]))
    return ":".join(_escape(json_safe(v)) for v in pk)


def _unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


_default_ids_cache: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def uses_default_ids(cls: type) -> bool:
    """True when ``cls`` keeps the default document ids (its primary key); cached, as
    every captured row asks."""
    known = _default_ids_cache.get(cls)
    if known is None:
        from scrypath_sa.mixin import Searchable

        known = _default_ids_cache[cls] = (
            getattr(cls, "search_document_id", None) is Searchable.search_document_id)
    return known


def document_id(obj: Any, pk: list[Any]) -> str:
    """``obj``'s document id, given its JSON-safe primary key ``pk`` (the key itself for
    default ids, without asking the object again)."""
    if uses_default_ids(type(obj)):
        return pk_document_id(pk)
    return str(obj.search_document_id())


def uses_default_documents(cls: type) -> bool:
    """True when documents, ids and ``should_index`` are all the defaults, so a document
    can be built from the row's columns alone (no ORM object needed)."""
    from scrypath_sa.mixin import Searchable

    return (getattr(cls, "search_document", None) is Searchable.search_document
            and uses_default_ids(cls) and uses_default_should_index(cls)
            and not list(cls.search_load_options()))  # type: ignore[attr-defined]


def column_query_parts(info: ModelInfo) -> tuple[list[Any], tuple[str, ...], tuple[str, ...]]:
    """(labelled columns, document keys, primary-key keys) to read default documents with
    a plain column query."""
    mapper = info.mapper
    keys = _column_keys(info.cls)
    columns = [mapper.get_property(k).columns[0].label(k) for k in keys]
    return columns, keys, pk_keys(info.cls)


def uses_default_should_index(cls: type) -> bool:
    from scrypath_sa.mixin import Searchable

    return getattr(cls, "should_index", None) is Searchable.should_index


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
