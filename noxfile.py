"""Developer sessions. ``nox`` (the default sessions) runs the same gate as scripts/test:
the static checks of scripts/lint, then the whole suite. The services come from
scripts/services or the pytest harness."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests-3.11"]  # what scripts/test runs
PYPROJECT = nox.project.load_toml("pyproject.toml")
PACKAGE = "-e.[opensearch,dramatiq]"


def _groups(*names: str) -> list[str]:
    return [dep for name in names for dep in nox.project.dependency_groups(PYPROJECT, name)]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, import layers, mypy, docs: scripts/lint in this session's environment."""
    session.install(PACKAGE, *_groups("lint", "typing", "docs"))
    session.run("bash", "scripts/lint", env={"BIN": session.bin}, external=True)


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    """The whole suite (real services)."""
    session.install(PACKAGE, *_groups("tests"))
    session.run("pytest", *session.posargs)


@nox.session
def quick(session: nox.Session) -> None:
    """The tests that need no server (no Java, no PostgreSQL, no Redis)."""
    session.install(PACKAGE, *_groups("tests"))
    session.run("pytest", "-m", "not services", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install(PACKAGE, *_groups("tests"))
    for name in ("bench_processor", "bench_dramatiq", "bench_backfill"):
        session.run("python", "-m", f"benchmarks.{name}", *session.posargs)
