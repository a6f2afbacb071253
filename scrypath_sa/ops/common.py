"""Shared plumbing of the operator API: naming models, JSON rendering."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable
from typing import Any

from scrypath_sa import registry
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.registry import ModelInfo


def resolve_models(models: Iterable[type | str] | None) -> list[ModelInfo]:
    """Model classes or index aliases -> registered models (default: all of them)."""
    if models is None:
        return sorted(registry.all_models(), key=lambda m: m.index)
    out = []
    for model in models:
        info = (registry.info_for_index(model) if isinstance(model, str)
                else registry.info_for(model))
        if info is None and isinstance(model, str):
            info = next((m for m in registry.all_models() if m.name == model), None)
        if info is None:
            raise ConfigurationError(
                f"{model!r} is not a Searchable model or index alias known in this process; "
                f"known: {sorted(m.index for m in registry.all_models())}")
        out.append(info)
    return out


def jsonable(value: Any) -> Any:
    """Reports -> plain JSON types (datetimes as ISO 8601, dataclasses as dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value
