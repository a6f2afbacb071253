"""Pure-logic checks: model options, documents, ids, redaction. No services."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any, ClassVar

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scrypath_sa import Searchable, documents, registry
from scrypath_sa.errors import ConfigurationError, MissingExtraError
from scrypath_sa.redaction import redact


def define(name: str, **attrs: Any) -> type:
    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": name,
        "__annotations__": {"id": Mapped[int]},
        "id": mapped_column(primary_key=True),
        **attrs,
    }
    return type(name.title(), (Searchable, Base), namespace)


def test_index_defaults_to_the_table_name() -> None:
    cls = define("opt_default")
    assert registry.info_for(cls).index == "opt_default"


@pytest.mark.parametrize("bad", ["Upper", "_hidden", "has space", "a" * 201, ""])
def test_bad_index_name_names_model_and_option(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Opt_Bad_Index\.__search_index__"):
        define("opt_bad_index", __search_index__=bad)


@pytest.mark.parametrize(("contract", "match"), [
    ([1, 2], "must be a dict"),
    ({"mapping": {}}, r"unknown keys \['mapping'\]"),
    ({"settings": "fast"}, r"\['settings'\] must be a dict"),
    ({"mappings": {"x": object()}}, "JSON-serialisable"),
])
def test_bad_contract_names_model_and_option(contract: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Opt_Bad_Contract\.__search_contract__") as err:
        define("opt_bad_contract", __search_contract__=contract)
    assert err.match(match)


def test_search_document_must_be_a_method() -> None:
    with pytest.raises(ConfigurationError, match=r"Opt_Not_Callable\.search_document"):
        define("opt_not_callable", search_document={"a": 1})


def test_two_models_cannot_share_an_index() -> None:
    define("opt_shared_a", __search_index__="opt_shared")
    with pytest.raises(ConfigurationError, match="already used by"):
        define("opt_shared_b", __search_index__="opt_shared")


def test_abstract_and_unmapped_mixins_are_not_registered() -> None:
    class Base(DeclarativeBase):
        pass

    class Abstract(Searchable, Base):
        __abstract__ = True

    class Mixin(Searchable):
        pass

    assert registry.info_for(Abstract) is None
    assert registry.info_for(Mixin) is None


def test_contract_hash_is_stable_and_changes_with_the_contract() -> None:
    a = registry.Contract({"properties": {"t": {"type": "text"}}}, {"number_of_shards": 1})
    b = registry.Contract({"properties": {"t": {"type": "text"}}}, {"number_of_shards": 1})
    c = registry.Contract({"properties": {"t": {"type": "keyword"}}}, {"number_of_shards": 1})
    assert a.hash == b.hash != c.hash


class Flavour(enum.Enum):
    SWEET = "sweet"


def test_json_safe_values() -> None:
    u = uuid.uuid4()
    assert documents.json_safe({
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "price": decimal.Decimal("1.25"),
        "id": u,
        "flavour": Flavour.SWEET,
        "tags": ("a", "b"),
        "raw": b"\x00\x01",
    }) == {
        "when": "2026-01-02T03:04:05+00:00", "day": "2026-01-02", "price": 1.25,
        "id": str(u), "flavour": "sweet", "tags": ["a", "b"], "raw": "AAE=",
    }


def test_composite_document_ids_are_unambiguous() -> None:
    assert documents.pk_document_id([7]) == "7"
    assert documents.pk_document_id([7, "en"]) == "7:en"
    assert documents.pk_document_id(["a:b", "c"]) != documents.pk_document_id(["a", "b:c"])
    assert documents.pk_document_id(["a:b", "c"]) == "a%3Ab:c"


@pytest.mark.parametrize("text", [
    "connect to https://admin:hunter2@search.example:9200 failed",
    "postgresql+psycopg://app:hunter2@db/prod",
    "{'Authorization': 'Basic hunter2'}",
    "headers={'authorization': 'Bearer hunter2'}",
    "password=hunter2&user=x",
    "http_auth=('admin', 'hunter2')",
])
def test_redaction_removes_secrets(text: str) -> None:
    cleaned = redact(text)
    assert "hunter2" not in cleaned
    assert "***" in cleaned


def test_redaction_keeps_ordinary_text_and_cuts_long_text() -> None:
    assert redact("mapper_parsing_exception: failed to parse field [views]") == \
        "mapper_parsing_exception: failed to parse field [views]"
    assert len(redact("x" * 5000)) <= 2000


def test_missing_extra_names_the_extra() -> None:
    err = MissingExtraError("opensearch", "opensearch-py")
    assert "pip install 'scrypath-sa[opensearch]'" in str(err)


def test_importing_the_package_loads_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, scrypath_sa, scrypath_sa.backends; "
            "print(sorted(m for m in ('dramatiq', 'opensearchpy', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"



def test_a_model_registers_however_it_is_mapped() -> None:
    """A declared_attr table name, __table__, imperative mapping; subclasses (single-
    and joined-table) share their parent's index and cannot name another."""
    from sqlalchemy import Column, ForeignKey, Integer, String, Table
    from sqlalchemy.orm import declared_attr
    from sqlalchemy.orm import registry as mapper_registry

    class Base(DeclarativeBase):
        pass

    class Named:
        @declared_attr.directive
        def __tablename__(cls) -> str:
            return f"reg_{cls.__name__.lower()}"

    class Thing(Named, Searchable, Base):
        id: Mapped[int] = mapped_column(primary_key=True)

    class Post(Searchable, Base):
        __tablename__ = "reg_posts"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(20))
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_on": "kind",
                                                     "polymorphic_identity": "post"}

    class Video(Post):
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "video"}

    class Joined(Post):
        __tablename__ = "reg_joined"
        id: Mapped[int] = mapped_column(ForeignKey("reg_posts.id"), primary_key=True)
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "joined"}

    class Tabled(Searchable, Base):
        __table__ = Table("reg_tabled", Base.metadata, Column("id", Integer, primary_key=True))

    class Imperative(Searchable):
        pass

    imperative = mapper_registry()
    imperative.map_imperatively(Imperative, Table("reg_imperative", imperative.metadata,
                                                  Column("id", Integer, primary_key=True)))
    indices = {cls: registry.info_for(cls).index
               for cls in (Thing, Post, Video, Joined, Tabled, Imperative)}
    assert indices == {Thing: "reg_thing", Post: "reg_posts", Video: "reg_posts",
                       Joined: "reg_posts", Tabled: "reg_tabled",
                       Imperative: "reg_imperative"}
    with pytest.raises(ConfigurationError, match="a subclass cannot have an index of its own"):
        type("Other", (Post,), {"__search_index__": "other",
                                "__mapper_args__": {"polymorphic_identity": "other"}})
