"""Searchable models: each model's index alias and contract, looked up by class or alias,
and which of the mixin's defaults a model keeps.

The mixin marks its default methods with :func:`library_default`, so this module can
tell an override from a default without importing the mixin.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper

from scrypath_sa.errors import ConfigurationError

_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]{0,199}$")
_CONTRACT_KEYS = frozenset({"mappings", "settings"})
_DEFAULT_MARK = "__scrypath_default__"
_F = TypeVar("_F", bound=Callable[..., Any])


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
    cls: type[Any]
    index: str
    contract: Contract
    by_trigger: bool = False
    """Whether a database trigger records this model's changes (not the session)."""

    @property
    def name(self) -> str:
        return self.cls.__name__

    @functools.cached_property
    def mapper(self) -> Mapper[Any]:  # (every flush of a trigger-captured model asks)
        mapper: Mapper[Any] = inspect(self.cls)
        return mapper


CAPTURES = ("session", "trigger")
"""The values of ``__search_capture__``."""

_by_index: dict[str, ModelInfo] = {}
_by_class: weakref.WeakKeyDictionary[type, ModelInfo] = weakref.WeakKeyDictionary()
_by_trigger: set[str] = set()  # the indexes of models captured by trigger


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_options(cls: type[Any]) -> None:
    """Check ``cls``'s search options before it is mapped; errors name model and option.
    (The index alias is checked here when the class gives it, else once the table
    name is known, in :func:`register_mapped`.)"""
    name = cls.__name__
    index = getattr(cls, "__search_index__", None)
    if index is not None:
        _check_index(name, index)
    parent = next((_by_class[k] for k in cls.__mro__[1:] if k in _by_class), None)
    if parent is not None and "__search_index__" in cls.__dict__ and index != parent.index:
        raise ConfigurationError(
            f"{name}.__search_index__ = {index!r}: {name} inherits from "
            f"{parent.cls.__name__}, whose index {parent.index!r} holds the documents of "
            "its subclasses too; a subclass cannot have an index of its own")
    _contract(name, getattr(cls, "__search_contract__", None))
    capture = getattr(cls, "__search_capture__", "session")
    if capture not in CAPTURES:
        raise ConfigurationError(
            f"{name}.__search_capture__ = {capture!r}: use 'session' (the ORM session "
            "records changes) or 'trigger' (a PostgreSQL trigger on the table does)")
    if capture == "trigger" and not keeps_default(cls, "search_document_id"):
        raise ConfigurationError(
            f"{name}.__search_capture__ = 'trigger' needs the default document ids (the "
            "primary key): the trigger cannot call search_document_id(); drop the "
            "override or capture by 'session'")
    for method in ("search_document", "search_document_id", "should_index",
                   "search_load_options"):
        if not callable(getattr(cls, method, None)):
            raise ConfigurationError(
                f"{name}.{method} must be a method, got a "
                f"{type(getattr(cls, method, None)).__name__}"
            )


def _check_index(name: str, index: object) -> None:
    if not isinstance(index, str) or not _INDEX_NAME.match(index):
        raise ConfigurationError(
            f"{name}.__search_index__ = {index!r} is not a valid index alias: use lowercase "
            "letters, digits, '_', '-' or '.', starting with a letter or digit, at most 200 "
            "characters"
        )


def register_mapped(cls: type[Any], table: Any) -> ModelInfo:
    """Register ``cls`` as SQLAlchemy maps it onto ``table``. A subclass of a registered
    model is not registered again: its rows are documents of the parent's index."""
    for klass in cls.__mro__[1:]:
        if klass in _by_class:
            return _by_class[klass]
    name = cls.__name__
    index = getattr(cls, "__search_index__", None) or getattr(table, "name", None)
    _check_index(name, index)
    index = str(index)  # a plain str: a table's name is SQLAlchemy's quoted_name
    existing = _by_index.get(index)
    if existing is not None and _qualified(existing.cls) != _qualified(cls):
        raise ConfigurationError(
            f"{name}.__search_index__ = {index!r} is already used by "
            f"{_qualified(existing.cls)}: give each model its own index alias"
        )
    info = ModelInfo(cls, index, _contract(name, getattr(cls, "__search_contract__", None)),
                     by_trigger=getattr(cls, "__search_capture__", "session") == "trigger")
    _by_index[index] = info
    _by_class[cls] = info
    if info.by_trigger:
        _by_trigger.add(index)
    return info


def unregister(cls: type) -> None:
    """Forget ``cls`` (its mapping failed after its options were registered)."""
    info = _by_class.pop(cls, None)
    if info is not None and _by_index.get(info.index) is info:
        del _by_index[info.index]
        _by_trigger.discard(info.index)
    for deps in _dependencies.values():
        deps[:] = [d for d in deps if d.dependent is not cls]


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


def info_for_table(table: Any) -> ModelInfo | None:
    """The model mapped to ``table`` (its own table, not an inherited one)."""
    for info in _by_index.values():
        mapper = inspect(info.cls, raiseerr=False)  # None once its registry was disposed
        if mapper is not None and mapper.local_table is table:
            return info
    return None


def info_for_index(index: str) -> ModelInfo | None:
    return _by_index.get(index)


def all_models() -> list[ModelInfo]:
    return list(_by_index.values())


def has_trigger_models() -> bool:
    """Whether any registered model is captured by trigger (every flush asks)."""
    return bool(_by_trigger)


# ------------------------------------------------------------ keys and the defaults kept

_pk_keys_cache: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()
_column_keys_cache: weakref.WeakKeyDictionary[type, tuple[str, ...]] = (
    weakref.WeakKeyDictionary())
_default_ids_cache: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def pk_keys(cls: type) -> tuple[str, ...]:
    """The attribute names of ``cls``'s primary-key columns, in key order."""
    keys = _pk_keys_cache.get(cls)
    if keys is None:
        mapper: Mapper[Any] = inspect(cls)
        keys = _pk_keys_cache[cls] = tuple(
            mapper.get_property_by_column(c).key for c in mapper.primary_key)
    return keys


def column_keys(cls: type) -> tuple[str, ...]:
    """The attributes the default document is built from: ``__search_fields__`` when the
    model declares it, else every mapped column."""
    keys = _column_keys_cache.get(cls)
    if keys is None:
        declared = search_fields(cls)
        mapper: Mapper[Any] = inspect(cls)
        keys = _column_keys_cache[cls] = declared if declared is not None else tuple(
            attr.key for attr in mapper.column_attrs)
    return keys


def search_fields(cls: type) -> tuple[str, ...] | None:
    """``cls.__search_fields__``: the attributes its document is built from (dotted
    paths through relationships for a custom ``search_document()``); None when it
    does not say."""
    declared = getattr(cls, "__search_fields__", None)
    return None if declared is None else tuple(declared)


@dataclass(frozen=True)
class Dependency:
    """``dependent``'s documents read the rows of ``related`` through the relationships
    ``path`` (from the dependent towards the related class); ``reads`` are the
    attributes of a related row whose change changes those documents."""

    dependent: type[Any]
    related: type[Any]
    path: tuple[Any, ...]  # relationship properties
    reads: frozenset[str]


_dependencies: dict[type, list[Dependency]] = {}


def has_dependencies() -> bool:
    return any(_dependencies.values())


def dependencies_on(cls: type) -> list[Dependency]:
    """The documents that read rows of ``cls`` (through declared related fields)."""
    return _dependencies.get(cls, [])


def check_fields(cls: type, mapper: Mapper[Any]) -> None:
    """Each ``__search_fields__`` entry names a mapped attribute (a path through
    relationships to one); the default document takes column attributes only. Each
    path through relationships makes the model depend on the rows it passes."""
    declared = getattr(cls, "__search_fields__", None)
    if declared is None:
        return
    name = cls.__name__
    if isinstance(declared, str) or not all(isinstance(f, str) for f in declared):
        raise ConfigurationError(
            f"{name}.__search_fields__ must be a list of attribute names, got {declared!r}")
    columns = {attr.key for attr in mapper.column_attrs}
    found: dict[tuple[Any, ...], set[str]] = {}
    for field_ in declared:
        target: Mapper[Any] = mapper
        parts = field_.split(".")
        path: list[Any] = []
        for depth, part in enumerate(parts):
            prop = target.attrs.get(part)
            if prop is None:
                raise ConfigurationError(
                    f"{name}.__search_fields__: {field_!r} does not resolve: "
                    f"{target.class_.__name__} has no mapped attribute {part!r}")
            if path:  # a row of a related class: its attribute `part` is read
                found.setdefault(tuple(path), set()).add(part)
            if depth < len(parts) - 1:
                if not hasattr(prop, "mapper"):
                    raise ConfigurationError(
                        f"{name}.__search_fields__: {field_!r} does not resolve: "
                        f"{target.class_.__name__}.{part} is not a relationship")
                path.append(prop)
                target = prop.mapper
        if keeps_default(cls, "search_document") and field_ not in columns and (
                not path or any(hop.uselist for hop in path)
                or not hasattr(prop, "columns")):
            raise ConfigurationError(
                f"{name}.__search_fields__: {field_!r} is not a column of {name} or of a "
                "row it reaches through many-to-one relationships; the default document "
                "is built from such columns: read other related values in your own "
                "search_document(), and list the path here for change tracking")
    if found and (len(mapper.primary_key) != 1 or not uses_default_ids(cls)):
        raise ConfigurationError(
            f"{name}.__search_fields__ reads related rows: their changes find the "
            f"{name} documents to rewrite in the database, which needs a one-column "
            "primary key and the default document ids")
    for hops, reads in found.items():
        related = hops[-1].mapper.class_
        if len(inspect(related).primary_key) != 1:
            raise ConfigurationError(
                f"{name}.__search_fields__ reads {related.__name__} rows, whose primary "
                "key has several columns: not supported for related fields")
        deps = _dependencies.setdefault(related, [])
        deps[:] = [d for d in deps if not (d.dependent is cls and d.path == hops)]
        deps.append(Dependency(cls, related, hops, frozenset(reads)))


_changed_fields_cache: weakref.WeakKeyDictionary[type, tuple[str, ...] | None] = (
    weakref.WeakKeyDictionary())


def changed_fields(cls: type) -> tuple[str, ...] | None:
    """The attributes whose change makes a new document (the first step of each
    declared path); None when every change does. Cached: every flush asks."""
    try:
        return _changed_fields_cache[cls]
    except KeyError:
        declared = search_fields(cls)
        found = None if declared is None else tuple(
            dict.fromkeys(f.split(".")[0] for f in declared))
        _changed_fields_cache[cls] = found
        return found


def library_default(method: _F) -> _F:
    """Mark a mixin method as the library's default (see :func:`keeps_default`)."""
    setattr(method, _DEFAULT_MARK, True)
    return method


def keeps_default(cls: type, method: str) -> bool:
    """True when ``cls`` does not override the mixin's ``method``."""
    return bool(getattr(getattr(cls, method, None), _DEFAULT_MARK, False))


def uses_default_ids(cls: type) -> bool:
    """True when ``cls`` keeps the default document ids (its primary key); cached, as
    every captured row asks."""
    known = _default_ids_cache.get(cls)
    if known is None:
        known = _default_ids_cache[cls] = keeps_default(cls, "search_document_id")
    return known


def uses_default_should_index(cls: type) -> bool:
    return keeps_default(cls, "should_index")


def uses_default_documents(cls: type) -> bool:
    """True when documents, ids and ``should_index`` are all the defaults, so a document
    can be built from the row's columns alone (no ORM object needed)."""
    return (keeps_default(cls, "search_document") and uses_default_ids(cls)
            and uses_default_should_index(cls)
            and not list(cls.search_load_options()))  # type: ignore[attr-defined]
