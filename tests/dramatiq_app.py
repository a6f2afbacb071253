"""The app module a real `dramatiq` worker imports in the Dramatiq tests.

It does what a user's worker module does: define the models, build the broker, install
scrypath_sa with a DramatiqMode on that broker. Settings come from the environment the
test gives the worker.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy.orm import sessionmaker

import scrypath_sa
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.modes.dramatiq import DramatiqMode
from tests.models import define_models, make_broker, make_engine

env = os.environ
PREFIX = env["SCRYPATH_TEST_PREFIX"]
Base, Article, Comment, Translation = define_models(
    PREFIX, capture=env.get("SCRYPATH_TEST_CAPTURE", "session"))

broker = make_broker(env["SCRYPATH_TEST_BROKER_URL"])
if env.get("PROMETHEUS_MULTIPROC_DIR"):  # tests/test_telemetry.py: counted across processes
    from scrypath_sa.metrics import worker_middleware

    broker.add_middleware(worker_middleware())
dramatiq.set_broker(broker)


class StallingBackend(OpenSearchBackend):
    """Announces that a bulk is in flight, then never returns (the test kills us); with
    SCRYPATH_TEST_STALL_AFTER=N, the first N bulks go through."""

    calls = 0

    def bulk(self, ops: Any, *, wait_for_visibility: bool) -> Any:
        StallingBackend.calls += 1
        if StallingBackend.calls <= int(env.get("SCRYPATH_TEST_STALL_AFTER", "0")):
            return super().bulk(ops, wait_for_visibility=wait_for_visibility)
        Path(env["SCRYPATH_TEST_STALL_FILE"]).write_text(",".join(op.id for op in ops))
        threading.Event().wait()


backend_cls = StallingBackend if env.get("SCRYPATH_TEST_STALL_FILE") else OpenSearchBackend
# A comma-separated list is the nodes of a cluster (tests/test_cluster.py).
backend = backend_cls(env["SCRYPATH_TEST_OPENSEARCH_URL"].split(","), max_retries=0, timeout=5)
engine = make_engine(env["SCRYPATH_TEST_DATABASE_URL"])
mode = DramatiqMode(broker, queue_name=env["SCRYPATH_TEST_QUEUE"],
                    max_retries=int(env.get("SCRYPATH_TEST_MAX_RETRIES", "8")))
config = scrypath_sa.configure(
    sessionmaker(engine), backend=backend, mode="dramatiq", bind=engine,
    modes={"dramatiq": mode}, backoff_base=float(env.get("SCRYPATH_TEST_BACKOFF", "0.05")),
    backoff_max=2.0, max_attempts=int(env.get("SCRYPATH_TEST_MAX_ATTEMPTS", "50")),
    batch_size=int(env.get("SCRYPATH_TEST_BATCH_SIZE", "500")),
)
