"""The live service's parts, built at startup and released at shutdown.

Startup order: load the base model and editor (the editor checks the model's fingerprint),
connect to Redis (embedded unless ``REDIS_URL`` is set), open the fingerprint's edit store,
replay its active edits into the live weights, warm up (one generation, so the first
client does not pay for lazy initialisation), then report ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import (editor_fingerprint, load_editor, model_fingerprint,
                                    read_editor_config)
from editor_core.combination import CombinationConfig
from editor_core.editor import Editor
from editor_core.generation import SamplingParams, TokenStream
from editor_core.ledger import WeightLedger

from .engine import EditEngine
from .metrics import ServiceMetrics
from .redis_server import EmbeddedRedis
from .settings import ServiceSettings
from .store import EditStore


@dataclass
class LiveService:
    settings: ServiceSettings
    model: torch.nn.Module
    tokenizer: object
    editor: Editor
    ledger: WeightLedger
    engine: EditEngine
    fingerprint: str
    pristine_digest: str
    client: aioredis.Redis
    embedded: EmbeddedRedis | None
    replayed: int = 0
    ready: bool = False

    @classmethod
    async def start(cls, settings: ServiceSettings, metrics: ServiceMetrics) -> LiveService:
        dtype = getattr(torch, settings.dtype)
        model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).eval()
        model.to(settings.device)
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        combination = _combination(settings, read_editor_config(settings.editor))
        basis = settings.edit_basis if settings.edit_basis != "auto" else (
            "pristine" if combination.kind == "ridge" else "current")
        editor = load_editor(settings.editor, model, tokenizer, basis=basis)
        editor.combination = combination
        fingerprint = model_fingerprint(model, editor.editable, tokenizer)
        ledger = WeightLedger.for_editor(editor)
        embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir)
        client = aioredis.from_url(settings.redis_url or embedded.url)
        # Stored edits are only valid for this model, editor, combination and basis.
        store = EditStore(client, _state_key(fingerprint, editor)[:32])
        engine = EditEngine(editor, ledger, store, metrics, settings.limits.max_queued_edits)
        live = cls(settings, model, tokenizer, editor, ledger, engine, fingerprint,
                   ledger.live_digest(), client, embedded)
        live.replayed = await engine.replay()
        await asyncio.to_thread(TokenStream(model, tokenizer, "Warm up",
                                            SamplingParams(max_new_tokens=2)).run)
        live.ready = True
        return live

    async def stop(self) -> None:
        self.ready = False
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.close()


def _combination(settings: ServiceSettings, editor_config: dict) -> CombinationConfig:
    """The combination the settings ask for; an editor trained for ridge keeps its λ."""
    trained = CombinationConfig(**editor_config.get("combination", {"kind": "sum"}))
    if settings.combination == "editor":
        return trained
    if settings.combination == "ridge":
        return trained if trained.kind == "ridge" else CombinationConfig(
            "ridge", settings.ridge_lambda)
    return CombinationConfig("sum")


def _state_key(fingerprint: str, editor: Editor) -> str:
    state = json.dumps([fingerprint, editor_fingerprint(editor.hypernetwork),
                        editor.combination.to_json(), editor.basis], sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()
