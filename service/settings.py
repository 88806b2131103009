"""Typed configuration, read from the environment (``INSTRUCTEDIT_*``) and CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from editor_core.combination import RIDGE_LAMBDA, RIDGE_REFRESH_EVERY
from editor_core.refine import RefineConfig
from editor_core.relation_forms import RELATION_FORMS_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_LM_PATH = REPO_ROOT / "checkpoints" / "demo-lm"
DEMO_EDITOR_PATH = REPO_ROOT / "checkpoints" / "demo-editor"
DEMO_CHAT_LM_PATH = REPO_ROOT / "checkpoints" / "demo-chat-lm"
DEMO_CHAT_EDITOR_PATH = REPO_ROOT / "checkpoints" / "demo-chat-editor"


def default(model: type[BaseModel], name: str) -> Any:
    """A setting's default, for a class that takes the setting as a parameter: the default is
    written once, on the setting."""
    return model.model_fields[name].get_default(call_default_factory=True)


class RuntimeSettings(BaseSettings):
    """Settings every command shares."""

    model_config = SettingsConfigDict(env_prefix="INSTRUCTEDIT_")

    # One intra-op thread per request: edits and decoding steps are small, so waking a
    # second OpenMP thread costs more than it gives (measured on 2 vCPUs: generation 1.3x
    # and edits 1.2x faster with 1 thread); concurrent requests use the other cores.
    threads: int = Field(1, ge=0, description="torch intra-op threads (0: torch's default)")
    model: str = Field(str(DEMO_LM_PATH), description="base model: a local folder in HF "
                       "format, or a hub id already in the local cache (nothing is downloaded)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class ApiKey(BaseModel):
    """A client's key: ``read`` may generate, score, list and inspect; ``edit`` may also
    create and roll back edits. ``name`` is what the audit trail records (never the key)."""

    name: str = Field(min_length=1)
    key: SecretStr = Field(min_length=16)
    scope: Literal["read", "edit"]


class Limits(BaseModel):
    """What one request may ask for; beyond these it is refused with a 4xx."""

    max_body_bytes: int = Field(1_000_000, ge=1024, description="request body (413)")
    max_prompt_tokens: int = Field(192, ge=1, description="prompt of an edit, a generation "
                                   "or a score (422)")
    max_target_tokens: int = Field(48, ge=1, description="target of an edit or score (422)")
    max_new_tokens: int = Field(256, ge=1, description="tokens one generation may ask for")
    max_batch_edits: int = Field(32, ge=1, description="edits in one batch (413)")
    max_queued_edits: int = Field(16, ge=0, description="edits and rollbacks waiting for "
                                  "their turn; more are refused (429)")
    max_concurrent_generations: int = Field(16, ge=1, description="generations and scores "
                                            "running at once; more are refused (429)")


class ServiceSettings(RuntimeSettings):
    """What the service loads, where it keeps its edits, who may call it, and its limits.

    Nested values come from JSON in the environment, e.g.
    ``INSTRUCTEDIT_API_KEYS='[{"name": "ci", "key": "...", "scope": "edit"}]'`` and
    ``INSTRUCTEDIT_LIMITS='{"max_batch_edits": 8}'``
    (or ``INSTRUCTEDIT_LIMITS__MAX_BATCH_EDITS=8``).
    """

    model_config = SettingsConfigDict(env_prefix="INSTRUCTEDIT_", env_nested_delimiter="__")

    served_model_name: str | None = Field(
        None, description="the model's name in the OpenAI-compatible API (default: the "
        "model folder's name)")
    editor: Literal["none"] | Path = Field(
        DEMO_EDITOR_PATH, description="trained editor checkpoint folder, or 'none': edit any "
        "model without a trained editor (each edit's gradient step, its size searched, "
        "fitted until the answer is the target; routing calibrated on the model's own text)")
    routing: Path | None = Field(
        None, description="a folder whose routing.safetensors the edit memory routes by "
        "(instructedit calibrate-routing --out), calibrated from edit data; unset: the "
        "trained editor's, or without one the routing calibrated on the model's own text")
    relation_forms: Path | None = Field(
        None, description="a folder whose relations.json catalogues relations (each one's "
        "wordings and kind of subject), used instead of the trained editor's: edits naming "
        "a catalogued relation are keyed and fitted on its other wordings, with contrast "
        "keys and alias search, also without a trained editor")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the served model's dtype (edits are computed in fp32)")
    data_dir: Path = Field(REPO_ROOT / "data" / "service",
                           description="where the embedded Redis keeps its files")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "INSTRUCTEDIT_REDIS_URL"),
        description="an external Redis (redis://, rediss:// or unix://); unset: embedded")
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Redis Sentinels (host:port, comma-separated): "
        "the store is the primary they name for redis_sentinel_master, followed through "
        "failovers without a restart; instead of redis_url")
    redis_sentinel_master: str = Field(
        "instructedit", min_length=1, description="the master group the sentinels watch")
    redis_wait_replicas: int = Field(
        0, ge=0, description="Redis replicas that must hold each change before it is "
        "acknowledged (Redis WAIT; 503 store_unconfirmed when fewer do in time): as many "
        "as there are, and an edit answered 201 survives a failover to any; 0: the "
        "primary's word alone")
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, description="how long a change waits for redis_wait_replicas")
    combination: Literal["memory", "editor", "sum", "ridge"] = Field(
        "memory", description="how active edits act: 'memory' (kept unmerged, each routed "
        "to the sequences about its subject; holds up as edits accumulate), 'ridge' (joint "
        "least squares over every active edit's keys, merged into the weights), 'sum', or "
        "'editor' (as the editor checkpoint says)")
    ridge_lambda: float = Field(RIDGE_LAMBDA, gt=0, description="λ of the ridge "
                                "combination, unless the editor was trained with its own")
    ridge_refresh_every: int = Field(
        RIDGE_REFRESH_EVERY, ge=1, description="the ridge combination is solved exactly at "
        "every version divisible by this (between them: rank updates); replicas must agree "
        "on it")
    snapshot_every: int = Field(
        RIDGE_REFRESH_EVERY, ge=1, description="a merged combination's (ridge's, sum's) "
        "exact sums are saved at every version divisible by this, for starting replicas to "
        "solve from instead of rebuilding from every edit (with ridge, only at its refresh "
        "versions: keep it a multiple of ridge_refresh_every); the edit memory saves none")
    edit_basis: Literal["auto", "current", "pristine"] = Field(
        "auto", description="which weights a new edit is computed on: 'pristine' (edits "
        "independent, rollback as if never made), 'current' (the live weights), or 'auto' "
        "(pristine for memory and ridge, current for sum)")
    relation_wordings: bool = Field(
        True, description="an edit naming its subject and a relation of the editor's "
        "catalogue (relations.json) is also keyed and fitted on the relation's other "
        "wordings, with the subject's other relations as contrast keys (false: the "
        "prompt and the request's rephrases only)")
    alias_search: bool = Field(
        True, description="at edit time, ask the model for the other names it knows for "
        "the subject (an edit naming its subject and a catalogued relation); names whose "
        "facts agree with the subject's become aliases of the edit (false: only the "
        "aliases the request lists)")
    refine: RefineConfig = Field(
        default_factory=RefineConfig, description="how an edit that does not hold at once "
        "is refined (editor_core.refine.RefineConfig; one variable a field, e.g. "
        "INSTRUCTEDIT_REFINE__MAX_STEPS=0: judge only, never refine)")
    generation_batch_size: int = Field(
        16, ge=1, description="generations decoded together at most (1: one at a time)")
    generation_batch_window_ms: float = Field(
        2.0, ge=0, description="how long a new generation waits for others to join it")
    # Day-two operations (docs/deploy.md#day-two-operations).
    rolled_back_retention_s: float | None = Field(
        None, gt=0, description="a rolled-back edit's delta is deleted (its Redis key "
        "expires) this long after its rollback; its record stays for history, and a "
        "replica that still needed the delta rebuilds from the active edits instead "
        "(not with the ridge combination); unset: kept forever")
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="how long an Idempotency-Key is remembered after the "
        "request that first used it (a retry after that makes a new edit)")
    api_keys: list[ApiKey] = Field(default_factory=list,
                                   description="no keys: every endpoint is open")
    limits: Limits = Field(default_factory=Limits)
    json_logs: bool = Field(True, description="one JSON object per log line")

    @field_validator("editor", mode="before")
    @classmethod
    def _no_editor(cls, value: object) -> object:
        """'none' however it arrives (a path named none from the command line)."""
        return "none" if str(value) == "none" else value

    @field_validator("refine", mode="before")
    @classmethod
    def _json_lists(cls, value: object) -> object:
        """A list inside a nested setting arrives as text (INSTRUCTEDIT_REFINE__SCALES='[2, 3]')."""
        if isinstance(value, dict):
            return {k: json.loads(v) if isinstance(v, str) and v.lstrip().startswith("[")
                    else v for k, v in value.items()}
        return value

    @field_validator("relation_forms")
    @classmethod
    def _catalogue_exists(cls, folder: Path | None) -> Path | None:
        if folder is not None and not (folder / RELATION_FORMS_FILE).is_file():
            raise ValueError(f"{folder} has no {RELATION_FORMS_FILE}")
        return folder

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [a.strip() for a in value.split(",") if a.strip()] if isinstance(
            value, str) else value

    @field_validator("redis_sentinels")
    @classmethod
    def _host_and_port(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a sentinel is host:port, not {address!r}")
        return addresses

    @model_validator(mode="after")
    def _one_redis(self) -> ServiceSettings:
        if self.redis_url and self.redis_sentinels:
            raise ValueError("name the store by redis_url or by redis_sentinels, not both")
        return self

    @property
    def trained_editor(self) -> bool:
        return self.editor != "none"
