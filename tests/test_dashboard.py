"""The operator dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), served by wsgiref, on SQLite and the real
OpenSearch node. Set SCRYPATH_SCREENSHOTS=docs/images to refresh the docs' pictures."""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from sqlalchemy import create_engine, select, update

import scrypath_sa
from scrypath_sa import sync_events
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.dashboard import Dashboard
from tests.models import World, make_world

SECRET = "hunter2-not-for-pages"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection: Chromium keeps idle connections open, which would block
    a one-at-a-time server."""

    daemon_threads = True


@pytest.fixture
def world(tmp_path: Path, index_prefix: str) -> World:
    return make_world(create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}"), index_prefix)


@pytest.fixture
def served(world: World, opensearch_url: str) -> Iterator[tuple[str, dict[str, bool], Any]]:
    backend = OpenSearchBackend(opensearch_url.replace("://", f"://admin:{SECRET}@"))
    config = scrypath_sa.configure(world.Session, backend=backend)
    allowed = {"view": True, "retry": True}
    app = Dashboard(config, authorize=lambda environ, action: allowed[action],
                    models=[world.Article])
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", allowed, config
    server.shutdown()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(binary).exists() or not Path(driver_path).exists():
        pytest.fail("Chromium is not installed: run scripts/bootstrap (it installs Debian's "
                    "chromium and chromium-driver)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def _shoot(driver: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SCRYPATH_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"dashboard-{name}.png"))


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _events(world: World) -> dict[int, tuple[str, int]]:
    with world.engine.connect() as conn:
        return {r.id: (r.state, r.attempts) for r in conn.execute(
            select(sync_events.c.id, sync_events.c.state, sync_events.c.attempts))}


def test_the_dashboard_in_a_real_browser(world: World, served: Any, browser: Any,
                                         tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url, allowed, config = served
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"fine {i}", views=i) for i in (1, 2, 3)]
                        + [world.Article(id=i, title=f"poison {i}", views="x") for i in (4, 5)])
        session.commit()

    # The models page shows what status() says.
    browser.get(url)
    alias = f"{world.prefix}_articles"
    (model,) = scrypath_sa.status([world.Article], config=config).models
    assert _text(browser, f"count-{alias}-completed") == str(model.counts["completed"]) == "3"
    assert _text(browser, f"count-{alias}-discarded") == str(model.counts["discarded"]) == "2"
    assert _text(browser, f"documents-{alias}") == str(model.documents) == "3"
    assert _text(browser, f"health-{alias}") == model.health.status  # type: ignore[union-attr]
    assert "Needs attention" in browser.page_source
    _shoot(browser, "models", tmp_path)

    # The failed page: fix one poisoned row behind the library's back, retry exactly it.
    with world.engine.begin() as conn:
        conn.execute(update(world.Article.__table__).where(world.Article.id == 4)
                     .values(views=4))
    events = _events(world)
    four, five = (next(i for i, (s, _) in events.items() if s == "discarded" and i == n)
                  for n in sorted(i for i, (s, _) in events.items() if s == "discarded"))
    browser.get(url + "failed")
    _shoot(browser, "failed", tmp_path)
    browser.find_element(By.ID, f"retry-{four}").click()
    # The click returns before the POST, its inline retry and the redirect are done: wait
    # for the page it leads to (a note appears only there).
    WebDriverWait(browser, 60).until(
        expected_conditions.presence_of_element_located((By.ID, "note")))
    assert f"Event {four}: completed" in _text(browser, "note")
    after = _events(world)
    assert after[four] == ("completed", 1)  # retried: attempts start over
    assert after[five] == events[five]  # the other event untouched
    assert {k: v for k, v in after.items() if k not in (four, five)} == {
        k: v for k, v in events.items() if k not in (four, five)}
    assert not browser.find_elements(By.ID, f"retry-{four}")  # no longer failed

    browser.get(url + "reconcile")
    assert "recommendation" in browser.page_source
    _shoot(browser, "reconcile", tmp_path)
    pages = browser.page_source
    for page in ("", "failed"):
        browser.get(url + page)
        pages += browser.page_source
    assert SECRET not in pages and "admin:" not in pages

    # Read-only: no buttons, and a POST is refused; nothing changes.
    allowed["retry"] = False
    browser.get(url + "failed")
    assert not browser.find_elements(By.TAG_NAME, "button")
    allowed["retry"] = True
    # A forged POST (no cookie of ours, no token) is refused.
    forged = urllib.request.Request(  # noqa: S310 - loopback
        url + "retry", data=f"event_id={five}".encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged)  # noqa: S310 - loopback
    assert refused.value.code == 403
    assert _events(world)[five] == events[five]

    # Unauthorized: refused, nothing shown.
    allowed["view"] = False
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url)  # noqa: S310 - loopback
    assert denied.value.code == 403
    browser.get(url)
    assert "Not allowed" in browser.page_source and f"count-{alias}" not in browser.page_source
