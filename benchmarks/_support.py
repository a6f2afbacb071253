"""Shared benchmark plumbing: real services from the environment or started here."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import servicekit  # noqa: E402

ENV = {
    "postgresql": "SCRYPATH_TEST_DATABASE_URL",
    "redis": "SCRYPATH_TEST_REDIS_URL",
    "opensearch": "SCRYPATH_TEST_OPENSEARCH_URL",
}


@contextlib.contextmanager
def services(*names: str) -> Iterator[dict[str, str]]:
    """URLs of the named services: from SCRYPATH_TEST_* variables, else started here."""
    urls = {n: os.environ[ENV[n]] for n in names if os.environ.get(ENV[n])}
    missing = [n for n in names if n not in urls]
    workdir = Path(tempfile.mkdtemp(prefix="scrypath-bench-"))
    workdir.chmod(0o755)
    started = servicekit.start_all(workdir, missing) if missing else {}
    try:
        yield {**urls, **{n: r.url for n, r in started.items()}}
    finally:
        for running in started.values():
            running.stop()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(samples: list[float]) -> float:
    return min(samples)


def summary(samples: list[float]) -> str:
    return f"best {min(samples):.3f}s median {statistics.median(samples):.3f}s"


def fresh_schema(engine: Any, metadata: Any, *tables: str) -> None:
    """Drop ``tables`` and the library's, then create ``metadata``'s and the library's."""
    from sqlalchemy import text

    import scrypath_sa

    names = ", ".join([*tables, "sync_events", "sync_checkpoints"])
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {names}"))
    metadata.create_all(engine)
    scrypath_sa.metadata.create_all(engine)


def hold_mode() -> Any:
    """A mode that records events and hands them nowhere (the commit's own cost, or
    events left for a processor run the benchmark drives)."""
    from scrypath_sa.modes import Mode
    from scrypath_sa.outcome import Outcome

    class Hold(Mode):
        name = "hold"

        def dispatch(self, config: Any, event_ids: Any, engine: Any = None) -> Outcome:
            return Outcome(mode=self.name, event_ids=list(event_ids))

    return Hold()


_COMPONENTS = {"java": "opensearch", "postgres": "postgresql", "redis-server": "redis"}


def _processes() -> Iterator[tuple[int, str, int, int, int]]:
    """(pid, command name, parent pid, own CPU ticks, reaped children's CPU ticks) of
    every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
        yield (int(entry.name), comm, int(fields[1]), int(fields[11]) + int(fields[12]),
               int(fields[13]) + int(fields[14]))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each service on this machine and by this benchmark's
    own process (children it waited for included), from /proc: subtract two readings
    to see where a phase's CPU went. Services' exited children (PostgreSQL backends)
    count through their parent, which reaps them."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"client": 0.0, **{name: 0.0 for name in _COMPONENTS.values()}}
    processes = list(_processes())
    names = {pid: comm for pid, comm, *_ in processes}
    for pid, comm, parent, own, reaped in processes:
        if pid == os.getpid():
            used["client"] += (own + reaped) / tick
        elif comm in _COMPONENTS:
            # A service's children (PostgreSQL backends) count while they live, then
            # through the parent that reaped them.
            top = names.get(parent) != comm
            used[_COMPONENTS[comm]] += (own + (reaped if top else 0)) / tick
    return used


def cpu_used(before: dict[str, float]) -> dict[str, float]:
    """CPU seconds per component since ``before`` (a :func:`cpu_seconds` reading)."""
    now = cpu_seconds()
    return {name: now[name] - before.get(name, 0.0) for name in now}


def tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live descendants so far (children they
    reaped included), from /proc; 0 once it is gone."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for child, _, parent, own, reaped in _processes():
        children.setdefault(parent, []).append(child)
        ticks[child] = own + reaped
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")
