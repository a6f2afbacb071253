"""Model factories for sync tests: each test gets fresh classes on its own index alias."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, ForeignKey, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

import scrypath_sa
from scrypath_sa import Searchable, triggers


def make_engine(url: str) -> Engine:
    """An engine as an application makes one for ``url``; behind PgBouncer in transaction
    mode (before 1.21) psycopg must not prepare statements: the next transaction may
    run on another server connection (docs/deployment.md)."""
    if url == os.environ.get("SCRYPATH_TEST_PGBOUNCER_URL"):
        return create_engine(url, connect_args={"prepare_threshold": None})
    return create_engine(url)


def make_broker(url: str) -> Any:
    """The Dramatiq broker for ``url``: RabbitMQ for ``amqp://``, else Redis."""
    if url.startswith("amqp://"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=url)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class World:
    Base: Any
    Article: Any
    Comment: Any
    Translation: Any
    Session: sessionmaker[Any]
    engine: Engine
    prefix: str


def define_models(prefix: str, contract: dict[str, Any] | None = None,
                  capture: str = "session") -> tuple[Any, ...]:
    """Fresh Base, Article, Comment, Translation classes on indices under ``prefix``;
    ``capture``: Article's and Translation's ``__search_capture__``."""

    class Base(DeclarativeBase):
        pass

    class Article(Searchable, Base):
        __tablename__ = "articles"
        __search_index__ = f"{prefix}_articles"
        __search_capture__ = capture
        __search_contract__ = contract or {
            "mappings": {"properties": {
                "title": {"type": "text", "analyzer": "english"},
                "views": {"type": "integer"},
                "published": {"type": "boolean"},
            }},
            "settings": {"number_of_shards": 1, "number_of_replicas": 0,
                         "refresh_interval": "100ms"},
        }

        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        views: Mapped[Any] = mapped_column(String(50), default="0")
        published: Mapped[bool] = mapped_column(default=True)
        price: Mapped[decimal.Decimal | None] = mapped_column(default=None)
        created: Mapped[dt.datetime | None] = mapped_column(default=None)
        colour: Mapped[Colour | None] = mapped_column(default=None)
        comments: Mapped[list[Comment]] = relationship(
            back_populates="article", cascade="all, delete-orphan")

        def should_index(self) -> bool:
            return self.published

    class Comment(Searchable, Base):
        __tablename__ = "comments"
        __search_index__ = f"{prefix}_comments"
        id: Mapped[int] = mapped_column(primary_key=True)
        article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"))
        body: Mapped[str] = mapped_column(String(200))
        article: Mapped[Article] = relationship(back_populates="comments")

    class Translation(Searchable, Base):
        __tablename__ = "translations"
        __search_index__ = f"{prefix}_translations"
        __search_capture__ = capture
        article_id: Mapped[int] = mapped_column(primary_key=True)
        lang: Mapped[str] = mapped_column(String(5), primary_key=True)
        text: Mapped[str] = mapped_column(String(200))

    return Base, Article, Comment, Translation


def make_world(engine: Engine, prefix: str, contract: dict[str, Any] | None = None,
               capture: str = "session") -> World:
    Base, Article, Comment, Translation = define_models(prefix, contract, capture)
    Base.metadata.create_all(engine)
    scrypath_sa.metadata.create_all(engine)
    if capture == "trigger":
        triggers.install(engine, [Article, Translation])
    return World(Base, Article, Comment, Translation, sessionmaker(engine), engine, prefix)
