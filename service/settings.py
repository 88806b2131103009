"""Typed configuration, read from the environment (``INSTRUCTEDIT_*``) and CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_LM_PATH = REPO_ROOT / "checkpoints" / "demo-lm"


class RuntimeSettings(BaseSettings):
    """Settings every command shares."""

    model_config = SettingsConfigDict(env_prefix="INSTRUCTEDIT_")

    threads: int = Field(2, ge=0, description="torch intra-op threads (0: torch's default)")
    model: Path = Field(DEMO_LM_PATH, description="base model: local path in HF format")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
