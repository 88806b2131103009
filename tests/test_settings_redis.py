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


def test_the_service_never_downloads_a_model(tmp_path) -> None:
    """An unknown model name fails at once with the hub offline, in a fresh process that
    imports the CLI as ``instructedit`` does."""
    import subprocess
    import sys

    code = ("import instructedit_cli, os, huggingface_hub.constants as c; "
            "print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE); "
            "from transformers import AutoConfig; AutoConfig.from_pretrained('nobody/no-model')")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.stdout.split() == ["1", "True"]
    assert run.returncode != 0 and "offline" in run.stderr.lower()
