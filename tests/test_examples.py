"""Every example runs, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
