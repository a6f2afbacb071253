"""The example app: one model, SQLite, the embedded search backend, and Dramatiq.

Files live in ``$SCRYPATH_EXAMPLE_DIR`` (default: the current directory). Dramatiq uses
Redis at ``$SCRYPATH_EXAMPLE_REDIS_URL`` when set (run ``dramatiq examples.worker``),
else its in-process stub broker. The CLI finds the configuration here:
``scrypath-sa --app examples.app:config status``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import scrypath_sa
from scrypath_sa import Searchable
from scrypath_sa.backends import EmbeddedBackend
from scrypath_sa.modes.dramatiq import DramatiqMode

DIR = Path(os.environ.get("SCRYPATH_EXAMPLE_DIR", "."))


class Base(DeclarativeBase):
    pass


class Article(Searchable, Base):
    __tablename__ = "articles"
    __search_index__ = "articles"
    __search_contract__ = {"mappings": {"properties": {"title": {"type": "text"}}}}  # noqa: RUF012

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    published: Mapped[bool] = mapped_column(default=True)

    def should_index(self) -> bool:
        return self.published


engine = create_engine(f"sqlite:///{DIR / 'app.sqlite3'}")
Session = sessionmaker(engine)
broker: Broker
if os.environ.get("SCRYPATH_EXAMPLE_REDIS_URL"):
    broker = RedisBroker(url=os.environ["SCRYPATH_EXAMPLE_REDIS_URL"])
else:
    broker = StubBroker()
    broker.emit_after("process_boot")
dramatiq.set_broker(broker)
# freeze_gc: worker processes keep what they imported out of the cycle collector's walks
# (docs/modes.md); the web process is unaffected.
config = scrypath_sa.configure(Session, backend=EmbeddedBackend(DIR / "search.sqlite3"),
                               mode=os.environ.get("SCRYPATH_EXAMPLE_MODE", "inline"),
                               bind=engine,
                               modes={"dramatiq": DramatiqMode(broker, freeze_gc=True)})
