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


# The supported range, as (Python, SQLAlchemy, alembic) pins. scripts/test runs the whole
# suite on the development environment (Python 3.11, the newest SQLAlchemy 2.1) and the
# tests that need no server on each of these: every Python and every SQLAlchemy line
# once, within CI's time. `nox -s compat_full` crosses them all.
COMPAT = [
    ("3.10", "SQLAlchemy==2.0.32", "alembic==1.12.1"),  # the floors in pyproject.toml
    ("3.12", "SQLAlchemy>=2.0,<2.1", "alembic"),  # the newest 2.0
    ("3.13", "SQLAlchemy>=2.1", "alembic"),  # the newest 2.1
]
SQLALCHEMY_LINES = [("SQLAlchemy==2.0.32", "alembic==1.12.1"),
                    ("SQLAlchemy>=2.0,<2.1", "alembic"), ("SQLAlchemy>=2.1", "alembic")]


def _quick_on(session: nox.Session, sqlalchemy: str, alembic: str) -> None:
    session.install(PACKAGE, *_groups("tests"))
    session.install(sqlalchemy, alembic)
    session.run("python", "-c", "import sqlalchemy, alembic; "
                "print('SQLAlchemy', sqlalchemy.__version__, 'alembic', alembic.__version__)")
    session.run("pytest", "-q", "-m", "not services", *session.posargs)


@nox.session
@nox.parametrize(("python", "sqlalchemy", "alembic"), COMPAT)
def compat(session: nox.Session, sqlalchemy: str, alembic: str) -> None:
    """The no-server tests on each supported (Python, SQLAlchemy, alembic) pin."""
    _quick_on(session, sqlalchemy, alembic)


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
@nox.parametrize(("sqlalchemy", "alembic"), SQLALCHEMY_LINES)
def compat_full(session: nox.Session, sqlalchemy: str, alembic: str) -> None:
    """Every Python with every SQLAlchemy line (longer than CI's budget allows)."""
    _quick_on(session, sqlalchemy, alembic)


@nox.session
def bench(session: nox.Session) -> None:
    session.install(PACKAGE, *_groups("tests"))
    for name in ("bench_processor", "bench_dramatiq", "bench_backfill"):
        session.run("python", "-m", f"benchmarks.{name}", *session.posargs)
