"""Service settings from the environment, and the embedded Redis's persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from service.redis_server import EmbeddedRedis
from service.settings import DEMO_EDITOR_PATH, ServiceSettings


def test_service_settings_defaults_and_environment(monkeypatch) -> None:
    for name in ("REDIS_URL", "INSTRUCTEDIT_REDIS_URL", "INSTRUCTEDIT_DTYPE"):
        monkeypatch.delenv(name, raising=False)
    default = ServiceSettings()
    assert default.redis_url is None and default.editor == DEMO_EDITOR_PATH
    assert (default.device, default.dtype, default.port) == ("cpu", "float32", 8000)
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("INSTRUCTEDIT_DTYPE", "bfloat16")
    configured = ServiceSettings()
    assert configured.redis_url == "redis://cache:6379/0" and configured.dtype == "bfloat16"
    monkeypatch.setenv("INSTRUCTEDIT_DTYPE", "float8")
    with pytest.raises(ValidationError, match="dtype"):
        ServiceSettings()


def test_embedded_redis_keeps_data_across_restarts(tmp_path: Path) -> None:
    async def write(url: str) -> None:
        client = aioredis.from_url(url)
        await client.set("instructedit:probe", b"kept")
        await client.aclose()

    async def read(url: str) -> bytes | None:
        client = aioredis.from_url(url)
        try:
            return await client.get("instructedit:probe")
        finally:
            await client.aclose()

    server = EmbeddedRedis(tmp_path / "data")
    assert server.url.startswith("unix://")
    asyncio.run(write(server.url))
    server.close()
    assert any(p.name.endswith(".aof") or "appendonly" in p.name
               for p in (tmp_path / "data").rglob("*"))
    again = EmbeddedRedis(tmp_path / "data")
    try:
        assert asyncio.run(read(again.url)) == b"kept"
    finally:
        again.close()
