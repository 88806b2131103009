"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from editor_core.data.records import TASKS

Task = Literal[tuple(TASKS)]  # type: ignore[valid-type]


class EditIn(BaseModel):
    task: Task = Field(examples=["counterfact"])
    prompt: str = Field(min_length=1, max_length=2000,
                        examples=["Plyndti Brynta is a citizen of"])
    target: str = Field(min_length=1, max_length=500, examples=["Veiistan"])
    subject: str | None = Field(None, max_length=500, examples=["Plyndti Brynta"])
    description: str | None = Field(None, max_length=1000,
                                    description="replaces the task's instruction wording")
    sentiment: Literal["positive", "negative"] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class EditOut(BaseModel):
    id: str
    version: int
    status: str
    task: str
    prompt: str
    target: str
    subject: str | None
    instruction: str
    created_at: str
    rolled_back_by: str | None = None
    rolled_back_at: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class GenerateIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    max_new_tokens: int = Field(32, ge=1, le=512)


class GenerateOut(BaseModel):
    text: str
    version: int


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    error: ErrorBody
