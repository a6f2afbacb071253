"""The app module the CLI tests point ``--app`` at: models and configure() from env."""

from __future__ import annotations

import os

from sqlalchemy.orm import sessionmaker

import scrypath_sa
from scrypath_sa.backends import OpenSearchBackend
from tests.models import define_models, make_engine

env = os.environ
Base, Article, Comment, Translation = define_models(env["SCRYPATH_TEST_PREFIX"])
engine = make_engine(env["SCRYPATH_TEST_DATABASE_URL"])
modes = {}
if env.get("SCRYPATH_TEST_BROKER_URL"):  # a Dramatiq mode on this Redis broker
    from dramatiq.brokers.redis import RedisBroker

    from scrypath_sa.modes.dramatiq import DramatiqMode

    modes["dramatiq"] = DramatiqMode(RedisBroker(url=env["SCRYPATH_TEST_BROKER_URL"]))
config = scrypath_sa.configure(
    sessionmaker(engine), bind=engine, modes=modes,
    mode="dramatiq" if modes else "inline",
    backend=OpenSearchBackend(env["SCRYPATH_TEST_OPENSEARCH_URL"], max_retries=0, timeout=5))
