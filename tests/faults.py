"""Fault injection on the real servers, for tests others can extend.

Every scenario built from these ends the same way: :func:`assert_in_step` checks that
the index holds exactly what the database says and that no event is left unfinished
without a reason ``status()`` reports.

* :meth:`Faults.paused` stops a server process (SIGSTOP) and continues it (SIGCONT):
  a stalled cluster or database that accepts connections and never answers.
* :meth:`Faults.restart_postgres` restarts PostgreSQL (every connection is cut).
* :class:`DroppingProxy` forwards requests to a server and drops the answers: the
  write happens, the client sees a broken connection.
* :class:`Workers` starts and kills real ``dramatiq`` worker processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import servicekit
from sqlalchemy import Engine, func, select

import scrypath_sa
from scrypath_sa import sync_events

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"completed", "discarded"}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 90) -> None:
    """Poll a real state (rows in sync_events, files a worker wrote) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _running_in_group(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies have ended)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_bytes()
            state, _, group = fields[fields.rindex(b")") + 2:].split()[:3]
            if int(group) == pgid and state != b"Z":
                return True
    return False


def states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(sync_events.c.state, func.count())
                            .group_by(sync_events.c.state)).all()
    return {state: n for state, n in rows}


def all_terminal(engine: Engine) -> Callable[[], bool]:
    return lambda: set(states(engine)) <= TERMINAL and bool(states(engine))


def assert_in_step(world: Any, os_client: Any, models: list[type] | None = None) -> None:
    """The end of every fault scenario: every indexable row is in the index with its
    content and nothing else is, and every event is finished, or unfinished with a
    reason status() reports (a problem, or a retry it names)."""
    alias = f"{world.prefix}_articles"
    os_client.indices.refresh(index=alias)
    hits = os_client.search(index=alias, body={"size": 10_000, "query": {"match_all": {}}})
    indexed = {h["_id"]: h["_source"]["title"] for h in hits["hits"]["hits"]}
    with world.Session() as session:
        rows = {str(a.id): a.title for a in session.scalars(select(world.Article))
                if a.published}
    assert indexed == rows
    report = scrypath_sa.status(models or [world.Article])
    for entry in report.models:
        unfinished = sum(n for s, n in entry.counts.items() if s not in TERMINAL)
        assert not unfinished or entry.problems or entry.retrying, entry


class Faults:
    """Faults on the servers of a test session; :meth:`undo` reverts what is left."""

    def __init__(self, process: Callable[[str], servicekit.Running]) -> None:
        self.process = process
        self._paused: list[int] = []

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """The server ``name`` stopped (SIGSTOP) for the block, continued after it."""
        pid = self.process(name).pid
        os.kill(pid, signal.SIGSTOP)
        self._paused.append(pid)
        try:
            yield
        finally:
            self._continue(pid)

    def _continue(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        if pid in self._paused:
            self._paused.remove(pid)

    def restart_postgres(self) -> None:
        """A fast restart: every open connection is cut, the server comes back."""
        workdir = Path(self.process("postgresql").workdir)
        # The options of the first start are reused; the log keeps pg_ctl's pipes free.
        servicekit._run_pg([servicekit._pg_bin("pg_ctl"), "-D", str(workdir / "data"),
                            "-l", str(workdir / "postgres.log"), "-m", "fast", "-w",
                            "-t", "60", "restart"])

    def undo(self) -> None:
        for pid in list(self._paused):
            self._continue(pid)


class DroppingProxy:
    """A loopback proxy to ``url``: requests reach the server; while ``dropping``, the
    connection is closed as the answer starts, so the client never reads it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.dropping = False
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{parts.scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if answers and self.dropping:
                    self.dropped += 1
                    break
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._listener.close()


class Workers:
    """Starts real `dramatiq` worker processes on tests/dramatiq_app.py."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, threads: int = 2, *args: str, **overrides: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, **overrides,
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
        log = (self.tmp_path / f"worker{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "tests.dramatiq_app", "--processes", "1",
             "--threads", str(threads), "--queues", self.env["SCRYPATH_TEST_QUEUE"], *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a stopped worker stuck in a stalled request
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        # The leader's exit says nothing of its worker processes: a killed one may still
        # be on its way out, alive to os.kill(pid, 0), and its claims not yet seen dead.
        wait_for(lambda: not _running_in_group(proc.pid), "the worker processes to exit")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp_path.glob("worker*.log")))
