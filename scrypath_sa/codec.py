"""The one JSON codec: orjson when it is installed, the standard library otherwise.

Both give compact UTF-8 JSON with non-string keys written as strings. orjson cannot hold
an integer wider than 64 bits; such a value is written by the standard library instead,
so the text never depends on which one ran. A value JSON cannot hold raises
``TypeError`` (or ``ValueError`` for NaN and infinities in the fallback).
"""

from __future__ import annotations

import json
from typing import Any


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


try:
    import orjson

    def dumps(value: Any) -> bytes:
        """``value`` as compact JSON bytes."""
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # e.g. an integer wider than 64 bits
            return _std_dumps(value)

    def loads(data: str | bytes) -> Any:
        """Parse JSON text."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # e.g. integers wider than 64 bits
            return json.loads(data)

except ImportError:  # pragma: no cover - exercised only without orjson
    dumps = _std_dumps

    def loads(data: str | bytes) -> Any:
        return json.loads(data)


def dumps_text(value: Any) -> str:
    """``value`` as compact JSON text (for a text parameter)."""
    return dumps(value).decode()
