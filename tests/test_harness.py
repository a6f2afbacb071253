"""Proof that the harness runs the real engines, not stand-ins."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import servicekit
from opensearchpy import OpenSearch, helpers
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select

ROOT = Path(__file__).resolve().parent.parent


def test_opensearch_is_the_real_engine(opensearch_url: str) -> None:
    info = OpenSearch(opensearch_url).info()
    assert info["version"]["distribution"] == "opensearch"
    line = "3." if os.environ.get("SCRYPATH_TEST_OPENSEARCH_LINE") == "3" else "2.19."
    assert info["version"]["number"].startswith(line)


def test_english_analyzer_stems(opensearch_url: str) -> None:
    result = OpenSearch(opensearch_url).indices.analyze(
        body={"analyzer": "english", "text": "running foxes jumped"}
    )
    assert [t["token"] for t in result["tokens"]] == ["run", "fox", "jump"]


def test_index_bulk_search_and_alias_swap(opensearch_url: str, index_prefix: str) -> None:
    client = OpenSearch(opensearch_url)
    alias, first, second = index_prefix, f"{index_prefix}_1", f"{index_prefix}_2"
    mappings = {"properties": {"title": {"type": "text", "analyzer": "english"}}}
    client.indices.create(index=first, body={"mappings": mappings})
    client.indices.create(index=second, body={"mappings": mappings})
    client.indices.put_alias(index=first, name=alias)

    docs = [{"_index": first, "_id": str(i), "title": f"running fox number {i}"} for i in range(50)]
    ok, errors = helpers.bulk(client, docs, refresh="wait_for")
    assert (ok, errors) == (50, [])
    client.index(index=second, id="only", body={"title": "jumping cats"}, refresh="wait_for")

    hits = client.search(index=alias, body={"query": {"match": {"title": "runs"}}})
    assert hits["hits"]["total"]["value"] == 50

    client.indices.update_aliases(body={"actions": [
        {"remove": {"index": first, "alias": alias}},
        {"add": {"index": second, "alias": alias}},
    ]})
    assert list(client.indices.get_alias(name=alias)) == [second]
    hits = client.search(index=alias, body={"query": {"match": {"title": "jump"}}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == ["only"]


def test_sqlalchemy_round_trip(engine: Engine) -> None:
    metadata = MetaData()
    things = Table("things", metadata, Column("id", Integer, primary_key=True),
                   Column("name", String(50)))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(things.insert(), [{"id": 1, "name": "ä one"}, {"id": 2, "name": "two"}])
    with engine.connect() as conn:
        rows = conn.execute(select(things.c.name).order_by(things.c.id)).scalars().all()
    assert rows == ["ä one", "two"]


def test_postgres_is_a_real_server(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(postgres_url)
    with eng.connect() as conn:
        assert conn.execute(text("select version()")).scalar_one().startswith("PostgreSQL")
    eng.dispose()


def test_dramatiq_message_handled_by_a_real_worker(redis_url: str) -> None:
    reply_to = f"harness-reply-{uuid.uuid4().hex}"
    env = {**os.environ, "SCRYPATH_TEST_REDIS_URL": redis_url,
           "PYTHONPATH": str(ROOT / "tests")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "harness_actors", "--processes", "1",
         "--threads", "1", "--queues", "harness"],
        env=env, cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        os.environ["SCRYPATH_TEST_REDIS_URL"] = redis_url
        import harness_actors

        harness_actors.echo.send("tok", reply_to)
        reply = redis.Redis.from_url(redis_url).blpop([reply_to], timeout=60)
        assert reply is not None, "the worker did not handle the message within 60s"
        token, pid = reply[1].decode().split(":")[1:]
        assert token == "tok"
        assert int(pid) != os.getpid()  # handled in the worker process, not here
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_missing_binary_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(servicekit.shutil, "which", lambda name: None)
    with pytest.raises(servicekit.MissingTool, match="apt-get install -y redis-server"):
        servicekit.start_redis(tmp_path)
    monkeypatch.setattr(servicekit.glob, "glob", lambda pattern: [])
    with pytest.raises(servicekit.MissingTool, match="apt-get install -y postgresql"):
        servicekit.start_postgres(tmp_path)
