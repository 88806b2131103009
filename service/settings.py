"""Typed configuration, read from the environment (``INSTRUCTEDIT_*``) and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_LM_PATH = REPO_ROOT / "checkpoints" / "demo-lm"
DEMO_EDITOR_PATH = REPO_ROOT / "checkpoints" / "demo-editor"


class RuntimeSettings(BaseSettings):
    """Settings every command shares."""

    model_config = SettingsConfigDict(env_prefix="INSTRUCTEDIT_")

    threads: int = Field(2, ge=0, description="torch intra-op threads (0: torch's default)")
    model: Path = Field(DEMO_LM_PATH, description="base model: local path in HF format")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class ServiceSettings(RuntimeSettings):
    """What the service loads and where it keeps its edits."""

    editor: Path = Field(DEMO_EDITOR_PATH, description="trained editor checkpoint folder")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the served model's dtype (edits are computed in fp32)")
    data_dir: Path = Field(REPO_ROOT / "data" / "service",
                           description="where the embedded Redis keeps its files")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "INSTRUCTEDIT_REDIS_URL"),
        description="an external Redis (redis://, rediss:// or unix://); unset: embedded")
