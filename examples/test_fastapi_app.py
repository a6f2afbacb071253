"""How to test a FastAPI app on AsyncSession that uses scrypath_sa, with FastAPI's
``TestClient`` and httpx's ``AsyncClient``, and the pytest plugin's ``scrypath_capture``:
``pytest examples/test_fastapi_app.py``. No search server: the example uses the
embedded backend.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SCRYPATH_EXAMPLE_DIR", tempfile.mkdtemp(prefix="scrypath-example-"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrypath_sa.config import Config

# ----------------------------------------------------------------------------- FastAPI

@pytest.fixture
def fastapi_app() -> Any:
    import fastapi_async_app  # type: ignore[import-not-found]  # configured on import

    return fastapi_async_app.app


@pytest.fixture
def scrypath_config(fastapi_app: Any) -> Config:
    """Two configurations are installed by the FastAPI example (its own and the sync
    app's it shares a backend with): say which one the fixtures act on."""
    import fastapi_async_app

    config: Config = fastapi_async_app.config
    return config


def test_fastapi_test_client(fastapi_app: Any, scrypath_capture: list[Any]) -> None:
    from fastapi.testclient import TestClient

    with TestClient(fastapi_app) as client:  # runs the lifespan: tables made
        saved = client.post("/articles", json={"id": 10, "title": "Running foxes"}).json()
        assert saved["search"]["state"] == "completed"
        assert client.get("/search", params={"q": "run"}).json()["ids"] == [10]
    assert [(op.action, op.id) for op in scrypath_capture] == [("index", "10")]


@pytest.mark.anyio
async def test_fastapi_httpx_async_client(fastapi_app: Any,
                                          scrypath_capture: list[Any]) -> None:
    import httpx

    async with fastapi_app.router.lifespan_context(fastapi_app):
        transport = httpx.ASGITransport(app=fastapi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            saved = (await client.post("/articles", json={"id": 11, "title": "Async owls"})).json()
            assert saved["search"] == {"mode": "inline", "state": "completed", "visible": True}
            found = (await client.get("/search", params={"q": "owls"})).json()
    assert found["ids"] == [11]
    assert [(op.action, op.id) for op in scrypath_capture] == [("index", "11")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
