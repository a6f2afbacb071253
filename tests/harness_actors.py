"""A Dramatiq actor used by the harness test: it echoes a token into a Redis list."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

REDIS_URL = os.environ["SCRYPATH_TEST_REDIS_URL"]
broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="harness", max_retries=0)
def echo(token: str, reply_to: str) -> None:
    redis.Redis.from_url(REDIS_URL).rpush(reply_to, f"handled:{token}:{os.getpid()}")
