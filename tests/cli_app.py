"""The app module the CLI tests point ``--app`` at: models and configure() from env."""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

import scrypath_sa
from scrypath_sa.backends import OpenSearchBackend
from tests.models import define_models

env = os.environ
Base, Article, Comment, Translation = define_models(env["SCRYPATH_TEST_PREFIX"])
engine = create_engine(env["SCRYPATH_TEST_DATABASE_URL"])
config = scrypath_sa.configure(
    sessionmaker(engine), bind=engine,
    backend=OpenSearchBackend(env["SCRYPATH_TEST_OPENSEARCH_URL"], max_retries=0, timeout=5))
