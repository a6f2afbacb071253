"""Keep secrets out of logs, errors, reports and ``sync_events.last_error``."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
_AUTH_HEADER = re.compile(
    r"(?P<name>\b(?:authorization|proxy-authorization|x-api-key|api[_-]?key)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>(?:(?:basic|bearer|apikey)\s+)?[^'\"\s,}]+)",
    re.IGNORECASE,
)
_CREDENTIAL_PAIR = re.compile(
    r"(?P<name>\b(?:password|passwd|pwd|secret|token)\b['\"]?\s*[:=]\s*['\"]?)(?P<value>[^'\"\s,}&]+)",
    re.IGNORECASE,
)
_HTTP_AUTH_TUPLE = re.compile(r"(?P<name>http_auth['\"]?\s*[:=]\s*)\([^)]*\)", re.IGNORECASE)

MASK = "***"
MAX_ERROR_CHARS = 2000


def redact(text: object, limit: int | None = MAX_ERROR_CHARS) -> str:
    """Return ``str(text)`` with URL passwords, auth headers and credential pairs masked.

    The result is cut to ``limit`` characters (after masking, so a cut never reveals
    part of a secret).
    """
    out = str(text)
    out = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m['name']}{MASK}", out)
    out = _CREDENTIAL_PAIR.sub(lambda m: f"{m['name']}{MASK}", out)
    out = _HTTP_AUTH_TUPLE.sub(lambda m: f"{m['name']}({MASK})", out)
    if limit is not None and len(out) > limit:
        out = out[: limit - 14] + " …[truncated]"
    return out
