"""Developer sessions. The services come from scripts/services or the pytest harness."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typing", "docs"]
PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[opensearch,dramatiq]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "scrypath_sa")


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[opensearch,dramatiq]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[opensearch,dramatiq]")
    session.install(*nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".")
    session.install(*nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict")
