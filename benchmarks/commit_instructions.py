"""The library's client-side cost per commit, in instructions (callgrind): repeatable
whatever else the machine is doing, so a refactor can be held to "no slower".

    python -m benchmarks.commit_instructions [--against DIR] [--commits 100] [--rows 1000]

Each workload runs in its own process under ``valgrind --tool=callgrind``, collecting
only around the measured work (imports, tables, ``configure()`` and a warm-up commit are
not counted): single-row commits with no library installed (``plain``), in ``dramatiq``
mode on Dramatiq's StubBroker (the send and the ``enqueued`` mark included, one mark
per commit, so that the count does not depend on thread timing), in ``inline`` mode on
the in-memory backend (the whole write included), one commit of ``--rows`` rows in
``dramatiq`` mode, and one processor run over ``--rows`` committed events
(``process_pending``: claim, read, build, write to the in-memory backend, record
``completed``). SQLite, so no server takes part. ``--against DIR`` runs the same
workloads on the checkout in DIR (an older commit, say) and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dramatiq.brokers.stub import StubBroker
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import scrypath_sa
from scrypath_sa import Searchable
from scrypath_sa.modes import Mode
from scrypath_sa.modes.dramatiq import DramatiqMode
from scrypath_sa.outcome import Outcome
from scrypath_sa.testing import InMemoryBackend, process_pending

ROOT = Path(__file__).resolve().parent.parent
MODES = ("plain", "dramatiq", "inline", "bulk", "process")


def workload(mode: str, count: int) -> None:
    """Runs inside callgrind: set up uninstrumented, count the commits only."""
    class Hold(Mode):
        """Leaves committed events ``requested`` for ``process_pending``."""

        name = "hold"

        def dispatch(self, config: Any, event_ids: Any, engine: Any = None) -> Outcome:
            return Outcome(mode=self.name, event_ids=list(event_ids))

    class Base(DeclarativeBase):
        pass

    class Doc(Searchable, Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))

    engine = create_engine(f"sqlite:///{tempfile.mkdtemp()}/commits.sqlite")
    Base.metadata.create_all(engine)
    scrypath_sa.metadata.create_all(engine)
    session_factory = sessionmaker(engine)
    relay = DramatiqMode(StubBroker(), linger=0.0)
    default = {"inline": "inline", "process": "hold"}.get(mode, "dramatiq")
    if mode != "plain":
        scrypath_sa.configure(session_factory, backend=InMemoryBackend(), bind=engine,
                              mode=default, modes={"dramatiq": relay, "hold": Hold()})
    with session_factory() as session:
        session.add(Doc(id=0, title="warm up"))
        session.commit()
    relay.flush()

    def collect(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       check=False, capture_output=True)

    if mode == "process":
        with session_factory() as session:
            session.add_all([Doc(id=i, title=f"title {i}") for i in range(1, count + 1)])
            session.commit()
    collect(True)
    if mode == "process":
        outcome = process_pending()
        assert outcome.states == {"completed": count + 1}, outcome.describe()
    elif mode == "bulk":
        with session_factory() as session:
            session.add_all([Doc(id=i, title=f"title {i}") for i in range(1, count + 1)])
            session.commit()
    else:
        for i in range(1, count + 1):
            with session_factory() as session:
                session.add(Doc(id=i, title=f"title {i}"))
                session.commit()
            relay.flush()  # one mark per commit, not as many as the thread timing made
    relay.flush()
    collect(False)


def instructions(root: Path, mode: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={tmp}/out", sys.executable, str(Path(__file__).resolve()),
             "--workload", mode, str(count)],
            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
            text=True, timeout=1800, check=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def per_commit(root: Path, commits: int, rows: int) -> dict[str, float]:
    with ThreadPoolExecutor(max_workers=2) as pool:  # counts do not depend on the load
        futures = {mode: pool.submit(instructions, root, mode,
                                     rows if mode in ("bulk", "process") else commits)
                   for mode in MODES}
        counts = {mode: future.result() for mode, future in futures.items()}
    return {
        "dramatiq": (counts["dramatiq"] - counts["plain"]) / commits,
        "inline": (counts["inline"] - counts["plain"]) / commits,
        "bulk": counts["bulk"] / rows,
        "process": counts["process"] / rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--workload", nargs=2, metavar=("MODE", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        workload(args.workload[0], int(args.workload[1]))
        return
    here = per_commit(ROOT, args.commits, args.rows)
    other = per_commit(args.against.resolve(), args.commits, args.rows) if args.against else None
    labels = {"dramatiq": "dramatiq mode, library instructions per single-row commit",
              "inline": "inline mode, library instructions per single-row commit",
              "bulk": f"dramatiq mode, instructions per row of one {args.rows}-row commit",
              "process": f"processor, instructions per event of one {args.rows}-event run"}
    for key, label in labels.items():
        line = f"{label}: {here[key]:,.0f}"
        if other is not None:
            line += f" (against {other[key]:,.0f}: RATIO {here[key] / other[key]:.3f}x)"
        print(line)


if __name__ == "__main__":
    main()
