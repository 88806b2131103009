"""Request and response bodies of the HTTP API (with the examples OpenAPI shows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from editor_core.outcomes import Outcome


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class ChatTextPart(BaseModel):
    """A text part of a message's content (OpenAI's content-part form)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One turn of a conversation, in OpenAI's chat format."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ChatTextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            part.text for part in self.content)


class EditIn(_Strict):
    task: str = Field(min_length=1, max_length=64, examples=["counterfact"],
                      description="a task the editor knows (GET /tasks)")
    prompt: str | None = Field(None, min_length=1, max_length=4000,
                               examples=["Plyndti Brynta is a citizen of"],
                               description="the fact's prompt as plain text (or messages)")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=64, description="instead of prompt: the fact as a "
        "conversation ending with the user's question, written as the model's chat template "
        "writes it (the record's prompt), so the edit holds when a chat user asks it")
    target: str = Field(min_length=1, max_length=1000, examples=["Veiistan"])
    subject: str | None = Field(None, max_length=500, examples=["Plyndti Brynta"])
    aliases: list[str] = Field(
        default_factory=list, max_length=16, examples=[["P. Brynta"]],
        description="other names of the subject: the edit memory fires the edit on them too")
    relation: str | None = Field(
        None, max_length=200, examples=["citizenship"],
        description="with subject, names the fact: a later edit of the same subject and "
        "relation (or of the same prompt) supersedes this one")
    description: str | None = Field(None, max_length=1000,
                                    description="replaces the task's instruction wording")
    sentiment: Literal["positive", "negative"] | None = Field(
        None, description="ConvSent's target opinion")
    rephrases: list[str] = Field(
        default_factory=list, max_length=16,
        examples=[["What country is Plyndti Brynta a citizen of?"]],
        description="other wordings of the prompt: the target is measured on them too, and "
        "the edit memory keeps each as a routing key of the edit")
    locality_prompts: list[str] = Field(
        default_factory=list, max_length=16, examples=[["Plyndti Brynta works in the field of"]],
        description="prompts whose answers should not change: checked before and after")
    metadata: dict[str, Any] = Field(default_factory=dict, examples=[{"ticket": "KB-142"}])
    check_earlier: int = Field(0, ge=0, le=64, description="also report how this edit "
                               "moved the targets of this many most recent active edits")
    accept_partial: bool = Field(
        False, description="keep the edit even if the model would still not answer its "
        "target after refinement (outcome did_not_hold); by default such an edit is refused "
        "with 422 edit_did_not_hold and nothing changes")

    @model_validator(mode="after")
    def _has_prompt(self) -> EditIn:
        if self.prompt is None and self.messages is None:
            raise ValueError("give the fact's prompt, or its messages")
        return self


class EditBatchIn(_Strict):
    edits: list[EditIn] = Field(min_length=1, description="applied in one editor pass, all "
                                "or none; each stored and rolled back on its own")


class Score(BaseModel):
    probability: float
    logprob: float
    token_accuracy: float


class BeforeAfter(BaseModel):
    before: Score
    after: Score


class RephraseQuality(BeforeAfter):
    prompt: str


class LocalityCheck(BaseModel):
    prompt: str
    before: str
    after: str
    unchanged: bool


class EarlierEdit(BeforeAfter):
    id: str
    prompt: str
    target: str


class EditQuality(BaseModel):
    prompt: BeforeAfter
    rephrases: list[RephraseQuality]
    locality: list[LocalityCheck]
    locality_unchanged: bool | None = Field(description="null when no locality prompts")
    earlier_edits: list[EarlierEdit] = Field(
        default_factory=list, description="the targets of earlier edits, before and after "
        "this one (with check_earlier)")


class EditRecord(EditIn):
    """An edit as the service keeps it: the request, the instruction the editor read, who
    sent it and when, and how judging went. Built once from the request; the engine stores
    it and the store reads it back (older records lack the newer fields: they default)."""

    model_config = ConfigDict(extra="ignore")

    instruction: str = Field(description="the editor's input: the prompt in its instruction")
    created_at: str
    created_by: str
    outcome: Outcome | None = Field(
        None, description="one_shot: the editor's delta made the model answer the target "
        "greedily on the prompt and rephrases; refined: it did after refinement; fitted: "
        "it did, made without a trained editor (the gradient step, its size searched, then "
        "refined); did_not_hold: it did not, kept because the request accepted a partial "
        "edit (null: not judged, under a merged combination)")
    derived_rephrases: list[str] = Field(
        default_factory=list, description="other wordings of the fact the service derived "
        "from the relation's known forms (the editor's relations.json): routing keys and "
        "fitted beside the prompt, never a reason to refuse the edit")
    derived_aliases: list[str] = Field(
        default_factory=list, description="other names of the subject the model itself "
        "knows, found at edit time (its answers about each agree with those about the "
        "subject): the edit fires on them too, and the prompt and the relation's first "
        "question with each name are among derived_rephrases")
    refine_steps: int | None = Field(None, description="refinement steps taken (0: one-shot)")
    refine_ms: float | None = Field(None, description="time judging and refining took")
    refine_time_capped: bool = Field(
        False, description="refinement stopped at the time guard (refine.max_ms) before its "
        "step budget: the outcome then depended on the machine's speed")


class EditReport(BaseModel):
    """What was measured once an edit was applied (attached to the stored edit then)."""

    timings_ms: dict[str, float] | None = Field(
        None, description="compute, judge, persist, apply, measure (null if the service "
        "stopped between storing and measuring the edit)")
    batch_size: int | None = None
    quality: EditQuality | None = None
    superseded: list[str] = Field(default_factory=list,
                                  description="active edits of the same fact this one replaced")


class Edit(EditReport, EditRecord):
    """One stored edit, as the API answers it: its record, its report, and its state."""

    id: str
    version: int = Field(description="the version of the live weights this edit made")
    status: Literal["active", "rolled_back"]
    rolled_back_by: str | None = None
    rolled_back_at: str | None = None
    rolled_back_version: int | None = None
    superseded_by: str | None = Field(None, description="the edit that replaced this one")


class EditBatchOut(BaseModel):
    edits: list[Edit]


class EditPageOut(BaseModel):
    edits: list[Edit]
    next_cursor: int | None = Field(description="pass as ?before= for the next page")


class RollbackToIn(_Strict):
    to_version: int = Field(ge=0, examples=[3],
                            description="every active edit newer than this is rolled back")


class RollbackToOut(BaseModel):
    rolled_back: list[Edit]
    version: int = Field(description="the version of the live weights now")


class GenerateIn(_Strict):
    prompt: str = Field(min_length=1, max_length=8000, examples=["Plyndti Brynta is a citizen of"])
    max_new_tokens: int = Field(32, ge=1, examples=[16])
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 (or below 1e-5): greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="makes sampling repeatable")
    stop: list[str] = Field(default_factory=list, max_length=8, examples=[["\n"]])
    stream: bool = Field(False, description="server-sent events: token events, then done")
    ignore_eos: bool = Field(False, description="never stop at the end token: generate "
                             "exactly max_new_tokens (unless a stop string comes first)")
    compare_pristine: bool = Field(
        False, description="also answer with the pristine model (no edit acting), decoded "
        "with the same parameters and seed, beside the live answer (response field "
        "pristine). Only under the edit memory, whose weights stay pristine; other "
        "combinations answer 422 pristine_unavailable. Not with stream")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class PristineOut(BaseModel):
    """The pristine model's answer to the same request: what the model said before any
    edit."""

    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


class GenerateOut(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    version: int = Field(description="the version of the live weights that generated it")
    edits_fired: list[str] = Field(
        default_factory=list, description="ids of the edits the edit memory applied to this "
        "generation, in order (one at each position; a better match takes over from an "
        "earlier one): why an answer differs from the pristine model's")
    pristine: PristineOut | None = Field(
        None, description="with compare_pristine: the pristine model's answer")


class ScoreIn(_Strict):
    prompt: str = Field(min_length=1, max_length=8000, examples=["Plyndti Brynta is a citizen of"])
    targets: list[str] = Field(min_length=1, max_length=32, examples=[["Veiistan", "Faemovia"]])


class TargetScoreOut(Score):
    target: str
    tokens: int


class ScoreOut(BaseModel):
    scores: list[TargetScoreOut]
    version: int


class TaskOut(BaseModel):
    name: str
    title: str
    template: str = Field(description="how the editor's input is built from the prompt")
    default_description: str = Field(description="used when an edit gives no description")
    descriptions: list[str] = Field(description="the wordings the editor was trained with")


class ReadyOut(BaseModel):
    status: Literal["ready"] = "ready"
    replayed: int = Field(description="edits applied from the store when this replica started")
    version: int = Field(description="the version of the live weights")


class LogOut(BaseModel):
    """Where this replica stands in the edit log it follows."""

    position: str = Field(description="stream id of the last log event applied")
    applied_version: int = Field(description="version of the live weights")
    store_version: int = Field(description="the log's newest version, as last seen")
    lag: int = Field(description="versions in the log not yet in the live weights")
    store_up: bool = Field(description="whether Redis answered the last round trip")


class InfoOut(BaseModel):
    model: str
    editor: str = Field(description="the trained editor's folder, or 'none'")
    trained_editor: bool = Field(description="false: served without a trained editor, "
                                 "each edit is the gradient step fitted until it holds "
                                 "(outcome 'fitted'; slower to make than a trained "
                                 "editor's edit)")
    editable: list[str]
    device: str
    dtype: str
    combination: dict[str, Any] = Field(description="how active edits combine (kind, λ)")
    edit_basis: str = Field(description="weights new edits are computed on")
    edit_version: int
    active_edits: int
    fingerprint: str
    live_digest: str
    pristine_digest: str
    log: LogOut


# OpenAI's completions API: the fields this service honours (unknown ones are ignored,
# as OpenAI's own API does).

class CompletionIn(BaseModel):
    """The fields of OpenAI's completion request that this service honours."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(examples=["demo-lm"])
    prompt: str | list[str] = Field(examples=["Plyndti Brynta is a citizen of"])
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    n: int | None = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    user: str | None = None


class _ChoiceFields(BaseModel):
    """What every OpenAI choice carries (logprobs are never computed)."""

    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None
    edits_fired: list[str] | None = None  # an extension: the edits the edit memory applied


class Choice(_ChoiceFields):
    text: str


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, used: Sequence[Usage]) -> CompletionUsage:
        """OpenAI's usage of one or more generations."""
        prompt = sum(u.prompt_tokens for u in used)
        completion = sum(u.completion_tokens for u in used)
        return cls(prompt_tokens=prompt, completion_tokens=completion,
                   total_tokens=prompt + completion)


class _CompletionHead(BaseModel):
    """What every OpenAI completion, chat completion and chunk begins with."""

    id: str
    created: int
    model: str
    system_fingerprint: str = Field(description="v{version}: the live weights' version")


class CompletionOut(_CompletionHead):
    object: Literal["text_completion"] = "text_completion"
    choices: list[Choice]
    usage: CompletionUsage | None = None


class ChatStreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="a last chunk, with no choices, carries "
                                "the usage")


class ChatCompletionIn(BaseModel):
    """The fields of OpenAI's chat completion request that this service honours."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(examples=["demo-lm"])
    messages: list[ChatMessage] = Field(min_length=1, max_length=64, examples=[[
        {"role": "user", "content": "Which country is Plyndti Brynta a citizen of?"}]])
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI in favour "
                                   "of max_completion_tokens; either is honoured")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    n: int | None = Field(1, ge=1)
    logprobs: bool | None = False
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    stream_options: ChatStreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_ChoiceFields):
    message: ChatMessageOut


class ChatCompletionOut(_CompletionHead):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None
    edits_fired: list[str] | None = None  # on the last chunk: the edits that acted


class ChatCompletionChunk(_CompletionHead):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None  # on the last chunk, with stream_options.include_usage


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "instructedit"


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ErrorBody(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    error: ErrorBody
