"""Every example runs, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_with_no_servers(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "examples/quickstart.py", "--dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mode=inline    state=completed" in out
    assert "mode=manual    state=backend_accepted" in out
    assert "mode=dramatiq  state=enqueued" in out
    assert "'completed': 3" in out
    assert "search('run'): 2 hits" in out
    assert "reconcile recommends: backfill" in out
    assert "after reconcile(action='backfill'): nothing" in out
    assert (tmp_path / "search.sqlite3").exists()


def run_python(code: str, env: dict[str, str], cwd: Path = ROOT) -> dict:  # type: ignore[type-arg]
    import json
    import os

    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


FASTAPI_CALLS = """
import json, sys
sys.path.insert(0, "examples")
from fastapi.testclient import TestClient
from fastapi_app import app
client = TestClient(app)
saved = client.post("/articles", json={"id": 1, "title": "Running foxes"}).json()
found = client.get("/search", params={"q": "run"}).json()
print(json.dumps({"saved": saved, "found": found}))
"""


def test_fastapi_example_reports_the_sync_honestly(tmp_path: Path) -> None:
    out = run_python(FASTAPI_CALLS, {"SCRYPATH_EXAMPLE_DIR": str(tmp_path)})
    assert out["saved"] == {"saved": True, "search": {"mode": "inline", "state": "completed",
                                                      "visible": True}}
    assert out["found"]["ids"] == [1]


def test_fastapi_async_example_reports_the_sync_honestly(tmp_path: Path) -> None:
    code = """
import json, sys
sys.path.insert(0, "examples")
from fastapi.testclient import TestClient
from fastapi_async_app import app
with TestClient(app) as client:
    saved = client.post("/articles", json={"id": 1, "title": "Running foxes"}).json()
    found = client.get("/search", params={"q": "run"}).json()
print(json.dumps({"saved": saved, "found": found}))
"""
    out = run_python(code, {"SCRYPATH_EXAMPLE_DIR": str(tmp_path)})
    assert out["saved"] == {"saved": True, "search": {"mode": "inline", "state": "completed",
                                                      "visible": True}}
    assert out["found"] == {"total": 1, "ids": [1]}


def test_flask_example_on_db_session(tmp_path: Path) -> None:
    code = """
import json
from examples.flask_app import create_app
client = create_app().test_client()
saved = client.post("/notes", json={"id": 7, "body": "jumping cats"}).get_json()
found = client.get("/search", query_string={"q": "jump"}).get_json()
print(json.dumps({"saved": saved, "found": found}))
"""
    out = run_python(code, {"SCRYPATH_EXAMPLE_DIR": str(tmp_path)})
    assert out["saved"] == {"saved": True, "search": {"mode": "inline", "state": "completed"}}
    assert out["found"] == {"total": 1, "ids": [7]}


def test_fastapi_in_dramatiq_mode_with_the_example_worker(tmp_path: Path, redis_url: str) -> None:
    import os
    import time

    queue_env = {"SCRYPATH_EXAMPLE_DIR": str(tmp_path), "SCRYPATH_EXAMPLE_MODE": "dramatiq",
                 "SCRYPATH_EXAMPLE_REDIS_URL": redis_url}
    out = run_python(FASTAPI_CALLS, queue_env)
    # Only a message was sent: the endpoint says so, and the search does not find it yet.
    assert out["saved"] == {"saved": True, "search": {"mode": "dramatiq", "state": "enqueued",
                                                      "visible": False}}
    assert out["found"]["ids"] == []
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "examples.worker", "--processes", "1",
         "--threads", "1", "--queues", "scrypath_sa"],
        cwd=ROOT, env={**os.environ, **queue_env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        status_code = "import json, examples.app as a, scrypath_sa as s; " \
                      "print(json.dumps(s.status([a.Article]).models[0].counts))"
        deadline = time.monotonic() + 90
        while run_python(status_code, queue_env)["completed"] != 1:
            assert time.monotonic() < deadline, "the example worker did not complete the event"
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
    search = "import json, examples.app as a, scrypath_sa as s; " \
             "print(json.dumps([x.id for x in s.search(a.Session(), a.Article, 'run').items]))"
    assert run_python(search, queue_env) == [1]


def test_cli_on_the_example_app(tmp_path: Path) -> None:
    env = {"SCRYPATH_EXAMPLE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "examples/quickstart.py", "--dir", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    import os

    for command in (["status"], ["reconcile"], ["failed"], ["prune", "--dry-run"]):
        result = subprocess.run([sys.executable, "-m", "scrypath_sa.cli", "--app",
                                 "examples.app:config", *command], cwd=ROOT,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert result.returncode == 0, (command, result.stdout, result.stderr)


def test_alembic_example_upgrades_head_with_the_sync_tables(tmp_path: Path) -> None:
    """A plain Alembic project: ``upgrade head`` (one head) creates the sync tables
    through its own history, and autogenerate afterwards proposes nothing of ours."""
    import os
    import sqlite3

    from scrypath_sa import migrations

    env = {**os.environ, "SCRYPATH_EXAMPLE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "examples/migrate.py", "upgrade", "head"], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=120)
    db = sqlite3.connect(tmp_path / "app.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"articles", "sync_events", "sync_checkpoints", "alembic_version"} <= tables
    assert db.execute(f"SELECT version_num FROM {migrations.VERSION_TABLE}").fetchall() == [
        (migrations.newest(),)]
    db.close()
    # The example's versions say what autogenerate writes with this release: nothing to add.
    script = tmp_path / "check.py"
    script.write_text(
        "import sys; sys.path.insert(0, 'examples'); from migrate import config\n"
        "from alembic import command\n"
        "command.check(config())\n")
    check = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("example", "passed"), [
    ("test_app.py", 2), ("test_flask_app.py", 2), ("test_fastapi_app.py", 2)])
def test_the_example_app_tests_pass(tmp_path: Path, example: str, passed: int) -> None:
    """examples/test_*.py are the documented ways to test an app (plain, Flask's test
    client, FastAPI's TestClient and httpx's AsyncClient): they must pass."""
    import os

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"examples/{example}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SCRYPATH_EXAMPLE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{passed} passed" in result.stdout


def test_cli_finds_the_configuration_through_a_flask_app_or_its_factory(
        tmp_path: Path) -> None:
    import os

    (tmp_path / "wsgi.py").write_text("from examples.flask_app import create_app\n"
                                      "app = create_app()\n")
    env = {**os.environ, "SCRYPATH_EXAMPLE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    for app in ("wsgi:app", "examples.flask_app:create_app"):
        result = subprocess.run([sys.executable, "-m", "scrypath_sa.cli", "--app", app,
                                 "status"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, (app, result.stdout, result.stderr)
        assert "Note -> notes" in result.stdout
