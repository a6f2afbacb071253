"""Documents that read related rows (``__search_fields__`` paths through relationships):
a change of a related row rewrites its dependents' documents, found by joins in the
database. Many-to-one, one-to-many, many-to-many and two hops; ORM and ORM bulk writes;
real PostgreSQL and SQLite, the real OpenSearch node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Engine, ForeignKey, String, Table, delete, select, text, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    configure_mappers,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

import scrypath_sa
from scrypath_sa import Searchable, registry
from scrypath_sa.errors import ConfigurationError
from tests.faults import states


class World:
    def __init__(self, engine: Engine, prefix: str) -> None:
        class Base(DeclarativeBase):
            pass

        tagging = Table("r_tagging", Base.metadata,
                        Column("post_id", ForeignKey("r_posts.id"), primary_key=True),
                        Column("tag_id", ForeignKey("r_tags.id"), primary_key=True))

        class Blog(Base):
            __tablename__ = "r_blogs"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(String(100))

        class Author(Base):
            __tablename__ = "r_authors"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(100))
            email: Mapped[str] = mapped_column(String(100), default="")

        class Tag(Base):
            __tablename__ = "r_tags"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(100))

        class Post(Searchable, Base):
            __tablename__ = "r_posts"
            __search_index__ = f"{prefix}_posts"
            __search_fields__ = ("title", "author.name", "tags.name", "comments.body")
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(String(100))
            author_id: Mapped[int] = mapped_column(ForeignKey("r_authors.id"))
            blog_id: Mapped[int | None] = mapped_column(ForeignKey("r_blogs.id"))
            author: Mapped[Author] = relationship()
            blog: Mapped[Blog | None] = relationship()
            tags: Mapped[list[Tag]] = relationship(secondary=tagging)
            comments: Mapped[list[Comment]] = relationship(back_populates="post")

            @classmethod
            def search_load_options(cls) -> Any:
                return [selectinload(cls.author), selectinload(cls.tags),
                        selectinload(cls.comments)]

            def search_document(self) -> dict[str, Any]:
                return {"title": self.title, "author": self.author.name,
                        "tags": sorted(t.name for t in self.tags),
                        "comments": sorted(c.body for c in self.comments)}

        class Comment(Searchable, Base):
            __tablename__ = "r_comments"
            __search_index__ = f"{prefix}_comments"
            __search_fields__ = ("body", "post.blog.title")
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str] = mapped_column(String(100))
            post_id: Mapped[int] = mapped_column(ForeignKey("r_posts.id"))
            post: Mapped[Post] = relationship(back_populates="comments")

            def search_document(self) -> dict[str, Any]:
                blog = self.post.blog
                return {"body": self.body, "blog": blog.title if blog else None}

        class Note(Searchable, Base):  # the default document, with many-to-one paths
            __tablename__ = "r_notes"
            __search_index__ = f"{prefix}_notes"
            __search_fields__ = ("text", "post.title", "post.blog.title")
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(String(100))
            post_id: Mapped[int | None] = mapped_column(ForeignKey("r_posts.id"))
            post: Mapped[Post | None] = relationship()

        Base.metadata.create_all(engine)
        scrypath_sa.metadata.create_all(engine)
        self.Base, self.engine, self.prefix = Base, engine, prefix
        self.Blog, self.Author, self.Tag, self.Post, self.Comment, self.Note = (
            Blog, Author, Tag, Post, Comment, Note)
        self.Session = sessionmaker(engine)


@pytest.fixture
def world(engine: Engine, index_prefix: str, backend: Any) -> Iterator[World]:
    w = World(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        blog = w.Blog(id=1, title="the blog")
        ann, bob = w.Author(id=1, name="Ann"), w.Author(id=2, name="Bob")
        red = w.Tag(id=1, name="red")
        posts = [w.Post(id=i, title=f"post {i}", author=ann if i < 4 else bob, blog=blog,
                        tags=[red] if i % 2 else []) for i in range(1, 6)]
        session.add_all(posts)
        session.add_all([w.Comment(id=1, body="first", post=posts[0]),
                         w.Comment(id=2, body="second", post=posts[1])])
        session.commit()
    yield w
    w.Base.metadata.drop_all(engine)


def doc(os_client: Any, w: World, index: str, doc_id: int) -> Any:
    return os_client.get(index=f"{w.prefix}_{index}", id=str(doc_id))["_source"]


def posts_in_step(w: World, os_client: Any) -> None:
    """Every post document equals what its row (and related rows) build now."""
    os_client.indices.refresh(index=f"{w.prefix}_posts")
    with w.Session() as session:
        for post in session.scalars(select(w.Post)):
            assert doc(os_client, w, "posts", post.id) == post.search_document()
    assert set(states(w.engine)) == {"completed"}


def test_renaming_a_related_row_rewrites_its_dependents(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.get(world.Author, 1).name = "Anne"
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "completed" and outcome.documents == 3  # posts 1-3, not 4-5
    assert doc(os_client, world, "posts", 2)["author"] == "Anne"
    posts_in_step(world, os_client)


def test_a_change_no_document_reads_records_nothing(world: World) -> None:
    with world.engine.connect() as conn:
        before = states(world.engine)
    with world.Session() as session:
        session.get(world.Author, 1).email = "ann@example.org"
        session.commit()
    assert states(world.engine) == before
    del conn


def test_one_to_many_and_many_to_many(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Comment(id=3, body="third", post_id=3))  # a new child
        session.get(world.Comment, 2).post_id = 4  # moved: post 2 loses it, 4 gains it
        session.get(world.Tag, 1).name = "crimson"  # posts 1, 3, 5 through the table
        session.commit()
    assert doc(os_client, world, "posts", 2)["comments"] == []
    assert doc(os_client, world, "posts", 4)["comments"] == ["second"]
    assert doc(os_client, world, "posts", 5)["tags"] == ["crimson"]
    posts_in_step(world, os_client)


def test_deleting_a_related_row_rewrites_the_parent_never_deletes_it(
        world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.delete(session.get(world.Comment, 1))
        session.commit()
    assert doc(os_client, world, "posts", 1) == {
        "title": "post 1", "author": "Ann", "tags": ["red"], "comments": []}
    posts_in_step(world, os_client)


def test_two_hops_and_orm_bulk_writes(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.get(world.Blog, 1).title = "renamed blog"  # comment -> post -> blog
        session.execute(update(world.Author).where(world.Author.id == 2).values(name="Rob"))
        session.commit()
    assert doc(os_client, world, "comments", 1)["blog"] == "renamed blog"
    assert doc(os_client, world, "posts", 5)["author"] == "Rob"
    with world.Session() as session:
        session.execute(delete(world.Comment).where(world.Comment.id == 2))
        session.commit()
    assert doc(os_client, world, "posts", 2)["comments"] == []
    # Comment is Searchable too: its own document goes, as well as its parent's copy.
    assert not os_client.exists(index=f"{world.prefix}_comments", id="2")
    posts_in_step(world, os_client)


def test_reconcile_sees_a_related_row_changed_by_raw_sql(world: World) -> None:
    with world.engine.begin() as conn:
        conn.execute(text("UPDATE r_authors SET name = 'raw' WHERE id = 2"))
    (drift,) = scrypath_sa.reconcile([world.Post]).models
    assert drift.content_differs == 2 and drift.recommendation == "backfill"


def test_the_default_document_reads_many_to_one_paths_by_joins(
        world: World, os_client: Any) -> None:
    """``post.title`` and ``post.blog.title`` in a default document: read with outer
    joins (no ORM objects), nested as objects, rewritten when a row on the path changes,
    empty where the path has no row; the ORM-built document is the same."""
    with world.Session() as session:
        session.add_all([world.Note(id=1, text="on post 1", post_id=1),
                         world.Note(id=2, text="on nothing")])
        session.commit()
    assert doc(os_client, world, "notes", 1) == {
        "text": "on post 1", "post": {"title": "post 1", "blog": {"title": "the blog"}}}
    assert doc(os_client, world, "notes", 2) == {
        "text": "on nothing", "post": {"title": None, "blog": {"title": None}}}
    with world.Session() as session:
        session.get(world.Blog, 1).title = "renamed blog"  # two hops away
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
    assert doc(os_client, world, "notes", 1)["post"]["blog"] == {"title": "renamed blog"}
    with world.Session() as session:
        for note in session.scalars(select(world.Note)):
            assert doc(os_client, world, "notes", note.id) == note.search_document()
    report = scrypath_sa.backfill(world.Note)  # the paged reader builds them alike
    assert report.indexed == 2
    assert doc(os_client, world, "notes", 1)["post"]["blog"] == {"title": "renamed blog"}
    (drift,) = scrypath_sa.reconcile([world.Note]).models
    assert drift.content_differs == 0 and drift.missing_from_index == 0


def test_a_default_document_cannot_read_a_list_of_related_rows(engine: Engine) -> None:
    class Base(DeclarativeBase):
        pass

    class Shelf(Base):
        __tablename__ = "r_shelves"
        id: Mapped[int] = mapped_column(primary_key=True)
        books: Mapped[list[Book]] = relationship(back_populates="shelf")

    class Book(Searchable, Base):
        __tablename__ = "r_books"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))
        shelf_id: Mapped[int] = mapped_column(ForeignKey("r_shelves.id"))
        shelf: Mapped[Shelf] = relationship(back_populates="books")

    class Label(Searchable, Base):
        __tablename__ = "r_labels"
        __search_fields__ = ("shelf.books.title",)
        id: Mapped[int] = mapped_column(primary_key=True)
        shelf_id: Mapped[int] = mapped_column(ForeignKey("r_shelves.id"))
        shelf: Mapped[Shelf] = relationship()

    try:
        with pytest.raises(ConfigurationError, match="many-to-one"):
            configure_mappers()
    finally:
        Base.registry.dispose()  # later tests configure their own mappers
        registry.unregister(Book)
