"""A small operator dashboard: a WSGI app you mount in your own web app, behind an
authorization callback you supply.

    dashboard = Dashboard(config, authorize=lambda environ, action: ...)

    # Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/search": dashboard})
    # FastAPI / Starlette
    from a2wsgi import WSGIMiddleware   # or starlette.middleware.wsgi.WSGIMiddleware
    app.mount("/search", WSGIMiddleware(dashboard))

``models`` limits the pages to some models (default: every registered one).
``authorize(environ, action)`` answers for every request: ``action`` is ``"view"``
(any page) or ``"retry"`` (the one action: retry one event). Without ``"view"`` the
answer is 403 and nothing is read; without ``"retry"`` the pages are read-only (no
buttons, and a POST is refused). POSTs carry a token tied to a cookie of this
dashboard (``SameSite=Strict``) and are refused without it (CSRF). Pages: the models
(events by state, the lag, the alias and its health, the contract), the failed
events with their errors, and a reconcile report (report only).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from collections.abc import Callable, Iterable, Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from scrypath_sa.config import Config
from scrypath_sa.errors import EventError, ScrypathError
from scrypath_sa.install import resolve_config
from scrypath_sa.ops import failed, reconcile, retry, status
from scrypath_sa.redaction import redact

Authorize = Callable[[dict[str, Any], str], bool]
StartResponse = Callable[..., Any]
COOKIE = "scrypath_dashboard"

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f3f3f3}.problem{color:#a00}.ok{color:#070}
nav a{margin-right:1em}.note{background:#eef;padding:6px 10px}
"""


class Dashboard:
    """The dashboard as a WSGI application (see the module's docs)."""

    def __init__(self, config: Config | None = None, *, authorize: Authorize,
                 models: Sequence[type | str] | None = None, secret: bytes | None = None,
                 title: str = "Search sync") -> None:
        self._config = config
        self.models = list(models) if models is not None else None
        self.authorize = authorize
        self.secret = secret or secrets.token_bytes(32)
        self.title = title

    @property
    def config(self) -> Config:
        return resolve_config(self._config)

    # -------------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any],
                 start_response: StartResponse) -> Iterable[bytes]:
        if not self.authorize(environ, "view"):
            return self._respond(start_response, "403 Forbidden",
                                 self._page("Forbidden", "<p>Not allowed.</p>"))
        path = environ.get("PATH_INFO", "/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        cookie = self._cookie(environ)
        try:
            if method == "POST" and path == "/retry":
                return self._retry(environ, start_response, cookie)
            if method != "GET":
                return self._respond(start_response, "405 Method Not Allowed",
                                     self._page("Not allowed", "<p>GET only here.</p>"))
            pages = {"/": self._overview, "/failed": self._failed,
                     "/reconcile": self._reconcile}
            if path not in pages:
                return self._respond(start_response, "404 Not Found",
                                     self._page("Not found", "<p>No such page.</p>"))
            body = pages[path](environ, cookie)
        except ScrypathError as exc:
            body = self._page("Unavailable", f'<p class="problem">{_e(redact(exc))}</p>')
            return self._respond(start_response, "503 Service Unavailable", body, cookie)
        return self._respond(start_response, "200 OK", body, cookie)

    def _respond(self, start_response: StartResponse, status_line: str, body: str,
                 cookie: str | None = None, headers: list[tuple[str, str]] | None = None,
                 ) -> Iterable[bytes]:
        data = body.encode()
        sent = [("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                            "form-action 'self'")]
        if cookie is not None:
            sent.append(("Set-Cookie", f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/"))
        start_response(status_line, sent + (headers or []))
        return [data]

    # -------------------------------------------------------------------- CSRF

    def _cookie(self, environ: dict[str, Any]) -> str:
        jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        found = jar.get(COOKIE)
        value = found.value if found is not None else ""
        return value if len(value) == 43 else secrets.token_urlsafe(32)

    def _token(self, cookie: str) -> str:
        return hmac.new(self.secret, cookie.encode(), hashlib.sha256).hexdigest()

    def _checked(self, environ: dict[str, Any], cookie: str) -> dict[str, list[str]] | None:
        """The POSTed form when its token matches this browser's cookie, else None."""
        sent = SimpleCookie(environ.get("HTTP_COOKIE", "")).get(COOKIE)
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), 10_000)
        except ValueError:
            length = 0
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if sent is None or sent.value != cookie or not hmac.compare_digest(
                token, self._token(cookie)):
            return None
        return form

    # ------------------------------------------------------------------- pages

    def _page(self, heading: str, content: str) -> str:
        return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(self.title)}: "
                f"{_e(heading)}</title><style>{_STYLE}</style></head><body>"
                f'<nav><a href="./">Models</a><a href="failed">Failed events</a>'
                f'<a href="reconcile">Reconcile</a></nav><h1>{_e(heading)}</h1>'
                f"{content}</body></html>")

    def _overview(self, environ: dict[str, Any], cookie: str) -> str:
        report = status(self.models, config=self.config)
        rows = []
        for m in report.models:
            counts = " ".join(
                f'<span>{_e(s)}&nbsp;<b id="count-{_e(m.index)}-{_e(s)}">{n}</b></span>'
                for s, n in m.counts.items() if n) or "none"
            lag = (f"{m.oldest_unfinished_age_seconds:.0f}s"
                   if m.oldest_unfinished_age_seconds is not None else "-")
            health = (m.health.status if m.health is not None
                      else "unknown" if m.backend_error else "-")
            contract = {True: "matches", False: "DIFFERS", None: "unknown"}[m.contract_matches]
            problems = "".join(f'<li class="problem">{_e(p)}</li>' for p in m.problems)
            documents = "unknown" if m.backend_error else "none"
            rows.append(
                f'<tr id="model-{_e(m.index)}"><td>{_e(m.model)}<br><small>{_e(m.index)} '
                f"&rarr; {_e(', '.join(m.alias_points_to) or '(none)')}</small></td>"
                f'<td>{counts}</td><td id="lag-{_e(m.index)}">{lag}</td>'
                f'<td id="documents-{_e(m.index)}">'
                f"{m.documents if m.documents is not None else documents}</td>"
                f'<td id="health-{_e(m.index)}">{_e(health)}</td><td>{contract}</td>'
                f"<td><ul>{problems}</ul></td></tr>")
        verdict = ('<p class="problem">Needs attention.</p>' if report.needs_attention
                   else '<p class="ok">Nothing needs attention.</p>')
        general = "".join(f'<li class="problem">{_e(p)}</li>' for p in report.problems)
        return self._page("Models", f"{verdict}<ul>{general}</ul><table><tr><th>model, "
                          "alias</th><th>events by state</th><th>lag</th><th>documents</th>"
                          "<th>health</th><th>contract</th><th>problems</th></tr>"
                          f"{''.join(rows)}</table>")

    def _failed(self, environ: dict[str, Any], cookie: str) -> str:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        report = failed(self.models, config=self.config, limit=200)
        may_retry = self.authorize(environ, "retry")
        note = ""
        if "retried" in query:
            note = (f'<p class="note" id="note">Event {_e(query["retried"][0])}: '
                    f'{_e((query.get("state") or ["?"])[0])}</p>')
        rows = []
        for event in report.events:
            button = ""
            if may_retry:
                button = (f'<form method="post" action="retry"><input type="hidden" '
                          f'name="token" value="{self._token(cookie)}"><input type="hidden" '
                          f'name="event_id" value="{event.id}"><button type="submit" '
                          f'id="retry-{event.id}">Retry</button></form>')
            rows.append(
                f'<tr id="event-{event.id}"><td>{event.id}</td><td>{_e(event.model)}</td>'
                f"<td>{_e(event.document_id)}</td><td>{_e(event.operation)}</td>"
                f'<td class="state">{_e(event.state)}</td><td>{event.attempts}</td>'
                f"<td>{_e(event.error_kind or '')}</td><td>{_e(event.last_error or '')}</td>"
                f"<td>{button}</td></tr>")
        table = ("<table><tr><th>event</th><th>model</th><th>document</th><th>operation</th>"
                 "<th>state</th><th>attempts</th><th>error kind</th><th>error</th><th></th>"
                 f"</tr>{''.join(rows)}</table>") if rows else "<p>No failed events.</p>"
        return self._page("Failed events", note + table)

    def _reconcile(self, environ: dict[str, Any], cookie: str) -> str:
        report = reconcile(self.models, config=self.config)
        rows = "".join(
            f'<tr id="drift-{_e(m.index)}"><td>{_e(m.model)}</td><td>{m.rows}</td>'
            f"<td>{m.documents}</td><td>{m.missing_from_index}</td><td>{m.orphaned_in_index}"
            f"</td><td>{m.content_differs}</td><td>{m.in_flight}</td>"
            f"<td>{_e(m.recommendation)}</td></tr>" for m in report.models)
        return self._page("Reconcile (report only)", (
            "<table><tr><th>model</th><th>rows</th><th>documents</th><th>missing</th>"
            "<th>orphaned</th><th>content differs</th><th>in flight</th>"
            f"<th>recommendation</th></tr>{rows}</table>"
            "<p>Repairs run from the CLI: <code>scrypath-sa reconcile --action ...</code></p>"))

    def _retry(self, environ: dict[str, Any], start_response: StartResponse,
               cookie: str) -> Iterable[bytes]:
        if not self.authorize(environ, "retry"):
            return self._respond(start_response, "403 Forbidden",
                                 self._page("Forbidden", "<p>Retrying is not allowed.</p>"))
        form = self._checked(environ, cookie)
        if form is None:
            return self._respond(start_response, "403 Forbidden", self._page(
                "Forbidden", "<p>The form's token did not match: reload the page.</p>"))
        try:
            event_id = int((form.get("event_id") or [""])[0])
        except ValueError:
            return self._respond(start_response, "400 Bad Request",
                                 self._page("Bad request", "<p>No event id.</p>"))
        try:
            state = retry(event_id, config=self.config).state
        except EventError as exc:
            state = f"not retried: {redact(exc)}"
        location = f"failed?retried={event_id}&state={_q(state)}"
        return self._respond(start_response, "303 See Other", "", cookie,
                             [("Location", location)])


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
