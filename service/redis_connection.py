"""The edit store's Redis connection: one server by URL, the embedded one, or the primary
that a group of Redis Sentinels names, followed through failovers without a restart.

Every client fails fast while no server answers (a few quick retries, then an error the
API answers with 503 and ``Retry-After``) and checks idle connections before using them.
Through Sentinel, each new connection asks the sentinels for the current primary; a
connection to a primary that died, or was demoted to a replica (``READONLY``), is dropped,
so the next try reaches the new primary.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_server import EmbeddedRedis
from .settings import ServiceSettings

__all__ = ["StoreConnection", "connect"]

_SENTINEL_TIMEOUT_S = 1.0  # a sentinel that does not answer in this long is skipped


def _failing_fast() -> dict[str, Any]:
    return {"socket_connect_timeout": 1.0, "health_check_interval": 5,
            "retry": Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), 2),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError]}


def connect(url: str) -> aioredis.Redis:
    """A client of the one Redis at ``url``."""
    return aioredis.from_url(url, **_failing_fast())


class StoreConnection:
    """The Redis the settings name, and the embedded server when they name none."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.embedded: EmbeddedRedis | None = None
        self.sentinel: Sentinel | None = None
        if settings.redis_sentinels:
            self.sentinel = Sentinel(
                [_address(a) for a in settings.redis_sentinels],
                sentinel_kwargs={"socket_timeout": _SENTINEL_TIMEOUT_S,
                                 "socket_connect_timeout": _SENTINEL_TIMEOUT_S})
            self.client = self.sentinel.master_for(settings.redis_sentinel_master,
                                                   **_failing_fast())
        else:
            if not settings.redis_url:
                self.embedded = EmbeddedRedis(settings.data_dir)
            self.client = connect(settings.redis_url or self.embedded.url)

    async def close(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()
        if self.embedded is not None:
            self.embedded.close()


def _address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
