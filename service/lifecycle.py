"""The live service's parts, built at startup and released at shutdown.

Startup order: load the base model and editor (the editor checks the model's fingerprint),
connect to Redis (embedded unless ``REDIS_URL`` or Sentinels are set), open the
fingerprint's edit store, bring the live weights up to its log, warm up (one generation, so
the first client does not pay for lazy initialisation), then serve — and keep following the
log, so edits posted to other replicas reach this one's weights too.

Readiness is more than being up: a replica is ready while Redis answers and its weights
hold every change in the log. Without Redis it still generates on the weights it has.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import (
    ROUTING_FILE,
    load_editor,
    load_routing,
    model_fingerprint,
    read_editor_config,
    save_routing,
)
from editor_core.combination import CombinationConfig
from editor_core.editor import Editor
from editor_core.generation import SamplingParams, TokenStream
from editor_core.gradient_editor import gradient_editor
from editor_core.ledger import WeightLedger
from editor_core.live_stack import build_live_stack
from editor_core.relation_forms import RelationForms
from editor_core.routing import MemoryRouting
from editor_core.routing_calibration import self_calibrated_routing
from editor_core.routing_config import RoutingConfig

from .batcher import GenerationBatcher
from .engine import EditEngine
from .follower import LogFollower
from .metrics import ServiceMetrics
from .redis_connection import StoreConnection
from .settings import ServiceSettings
from .store import EditStore


@dataclass
class LiveService:
    settings: ServiceSettings
    model: torch.nn.Module
    tokenizer: object
    editor: Editor
    ledger: WeightLedger
    routing: MemoryRouting | None  # the edit memory's routing (None: a merged combination)
    engine: EditEngine
    store: EditStore
    metrics: ServiceMetrics
    batcher: GenerationBatcher
    fingerprint: str
    pristine_digest: str
    redis: StoreConnection
    replayed: int = 0
    started: bool = False
    started_at: float = field(default_factory=time.time)
    following: asyncio.Task | None = None

    @classmethod
    async def start(cls, settings: ServiceSettings, metrics: ServiceMetrics) -> LiveService:
        model, tokenizer, editor, fingerprint = load_model_and_editor(settings)
        trained, combination = settings.trained_editor, editor.combination
        if settings.rolled_back_retention_s is not None and combination.kind == "ridge":
            raise ValueError("rolled_back_retention_s cannot be used with the ridge "
                             "combination: a replica that starts between two refresh "
                             "versions replays rolled-back edits' deltas")
        routing = None
        if combination.needs_routing:
            routing = (load_routing(settings.routing) if settings.routing is not None
                       else load_routing(settings.editor) if trained
                       else _own_routing(settings, editor, fingerprint))
        stack = build_live_stack(editor, routing, settings.refine,
                                 ridge_refresh_every=settings.ridge_refresh_every)
        ledger = stack.ledger
        redis = StoreConnection(settings)
        # Stored edits are only valid for this model, combination and basis.
        store = EditStore(redis.client, store_key(fingerprint, editor),
                          wait_replicas=settings.redis_wait_replicas,
                          wait_timeout_ms=settings.redis_wait_timeout_ms,
                          rolled_back_retention_s=settings.rolled_back_retention_s,
                          idempotency_ttl_s=settings.idempotency_ttl_s)
        engine = EditEngine(editor, ledger, store, metrics, settings.limits.max_queued_edits,
                            settings.snapshot_every, stack.judge, stack.routing)
        batcher = GenerationBatcher(model, ledger, settings.generation_batch_size,
                                    settings.generation_batch_window_ms)
        live = cls(settings, model, tokenizer, editor, ledger, stack.routing, engine, store,
                   metrics, batcher, fingerprint, ledger.live_digest(), redis)
        live.replayed = await engine.replay()
        await batcher.run(TokenStream(model, tokenizer, "Warm up",
                                      SamplingParams(max_new_tokens=2), stack.routing))
        live.following = asyncio.create_task(engine.follow(), name="follow-edit-log")
        live.started = True
        return live

    @property
    def follower(self) -> LogFollower:
        """What this replica has applied of the edit log."""
        return self.engine.follower

    def not_ready(self) -> tuple[str, str] | None:
        """Why this replica is not ready (a code and a message), or None when it is."""
        follower = self.follower
        if not self.started:
            return "not_ready", "the service is starting"
        if not follower.store_up:
            return "store_unavailable", "the edit store (Redis) does not answer"
        if follower.lag:
            return "catching_up", f"{follower.lag} changes in the edit log are not applied yet"
        return None

    async def stop(self) -> None:
        self.started = False
        if self.following is not None:
            self.following.cancel()
            await asyncio.gather(self.following, return_exceptions=True)
        await asyncio.to_thread(self.batcher.close)
        await self.redis.close()


def load_model_and_editor(settings: ServiceSettings
                          ) -> tuple[torch.nn.Module, object, Editor, str]:
    """The base model, its tokenizer, the editor the settings name (with its combination
    and basis), and the model's fingerprint, taken on the pristine weights."""
    dtype = getattr(torch, settings.dtype)
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).eval()
    model.to(settings.device)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    trained = settings.trained_editor
    combination = _combination(settings, read_editor_config(settings.editor)
                               if trained else {})
    if not trained and combination.kind != "memory":
        raise ValueError("without a trained editor every edit is fitted on the edit "
                         "memory: the combination must be 'memory'")
    basis = settings.edit_basis if settings.edit_basis != "auto" else (
        "pristine" if combination.kind in ("memory", "ridge") else "current")
    editor = (load_editor(settings.editor, model, tokenizer, basis=basis,
                          combination=combination) if trained
              else gradient_editor(model, tokenizer, basis=basis))
    if settings.relation_forms is not None:
        editor.relation_forms = RelationForms.load(settings.relation_forms)
    if not settings.relation_wordings:
        editor.relation_forms = RelationForms()
    if not settings.alias_search:
        editor.alias_finder = None
    return model, tokenizer, editor, model_fingerprint(model, editor.editable, tokenizer)



def _combination(settings: ServiceSettings, editor_config: dict) -> CombinationConfig:
    """The combination the settings ask for; an editor trained for ridge keeps its λ."""
    trained = CombinationConfig.from_json(editor_config.get("combination", {}))
    if settings.combination == "editor":
        return trained
    if settings.combination == "memory":
        return CombinationConfig("memory")
    if settings.combination == "ridge":
        return trained if trained.kind == "ridge" else CombinationConfig(
            "ridge", settings.ridge_lambda)
    return CombinationConfig("sum")


def _own_routing(settings: ServiceSettings, editor: Editor, fingerprint: str
                 ) -> RoutingConfig:
    """Without a trained editor (and its calibrated routing): the routing calibrated on
    the model's own text, made at the first start and kept in the data folder under the
    model's fingerprint."""
    folder = settings.data_dir / "routing" / fingerprint[:32]
    if (folder / ROUTING_FILE).exists():
        return load_routing(folder)
    routing = self_calibrated_routing(editor)
    folder.mkdir(parents=True, exist_ok=True)
    save_routing(folder, routing)
    return routing


def store_key(fingerprint: str, editor: Editor) -> str:
    """The store's key: stored edits replay as stored, exactly, on the same model (its
    fingerprint covers the editable weights), combination and basis, whichever editor made
    them, so a service switched between editors (or to and from none) keeps its edits."""
    state = json.dumps([fingerprint, editor.combination.to_json(), editor.basis],
                       sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()[:32]
