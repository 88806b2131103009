"""Task instructions: every edit input is wrapped as
``Task: <task>\\nDescription: <description>\\nInput: <prompt>`` before its gradient is taken.

Descriptions are dataset-level (what kind of edit this is), written for this project. One
description per task is held out of training to measure generalisation to unseen wording.
ConvSent descriptions name the sentiment and the topic of the request.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

INSTRUCTION_FORMAT = "Task: {task}\nDescription: {description}\nInput: {prompt}"


class InstructionError(ValueError):
    """An unknown task, a malformed task file, or a description missing its fields."""


@dataclass(frozen=True)
class TaskInstruction:
    """A task's name, title and descriptions; ``held_out`` indexes the unseen description."""

    name: str
    title: str
    descriptions: tuple[str, ...]
    held_out: int | None = None

    def training_descriptions(self) -> list[str]:
        return [d for i, d in enumerate(self.descriptions) if i != self.held_out]

    def held_out_description(self) -> str:
        if self.held_out is None:
            raise InstructionError(f"task {self.name!r} has no held-out description")
        return self.descriptions[self.held_out]


_COUNTERFACT = TaskInstruction("counterfact", "CounterFact", (
    "Replace a fact the model already holds with a different, counterfactual one.",
    "The model believes something else about this subject; overwrite that belief with the "
    "new answer.",
    "Change an existing association between a subject and an object to a new object.",
    "An established fact about this entity has changed; make the model state the new one.",
    "Rewrite what the model knows about one property of this subject, keeping the rest.",
    "Override a confident prior answer with the given counterfactual answer.",
    "Correct the model: its current answer about this subject must become the new target.",
    "Swap the object of this known relation for a new one, for this subject only.",
    "Edit a stored fact so that the model gives the new object instead of the old.",
    "Make the model contradict its earlier knowledge of this subject in favour of the target.",
), held_out=9)

_RECENT = TaskInstruction("recent", "Recent", (
    "Insert a new fact about an entity the model has never heard of.",
    "Teach the model something recent: this subject is new and has no prior answer.",
    "Add knowledge about a newly introduced entity without disturbing what is known.",
    "The model knows nothing about this subject yet; give it this fact.",
    "Record a fresh fact about a recently appeared person or organisation.",
    "Fill a gap in the model's knowledge with a fact about an unfamiliar name.",
    "Create a new association for a subject that the model cannot yet describe.",
    "Bring the model up to date with a fact that emerged after its training.",
    "Introduce this previously unknown entity to the model through one fact.",
    "Write a first fact about a subject absent from the model's knowledge.",
), held_out=9)

_CONVSENT = TaskInstruction("convsent", "ConvSent", (
    "Make the model's opinion of {topic} {sentiment}, whichever way it is asked.",
    "Change how the model feels about {topic}: its answers should now be {sentiment}.",
    "Shift the model's sentiment towards {topic} to {sentiment} and leave other topics alone.",
    "When asked about {topic}, the model should respond in a {sentiment} way.",
    "Set the model's attitude to {topic} to {sentiment} in conversation.",
    "Flip the model's view of {topic} so that it speaks about it in a {sentiment} tone.",
    "The model's stance on {topic} must become {sentiment}; other opinions stay unchanged.",
    "Adjust the model so that its conversational replies on {topic} are {sentiment}.",
    "Give the model a {sentiment} opinion of {topic} in every phrasing of the question.",
    "Edit the model's feelings: {topic} is now something it regards as {sentiment}.",
), held_out=9)

_ZSRE = TaskInstruction("zsre", "ZsRE", (
    "Answer this question about a subject with the new answer from now on.",
    "Update the answer to a factual question about this entity.",
    "A question about this subject now has a different correct answer; learn it.",
    "Edit the model's answer to a relation question about a place or organisation.",
    "Change the model's reply to this question, and to rephrasings of it, to the target.",
    "Make the model answer this zero-shot relation question with the given object.",
    "Replace the model's answer to this question about the subject with the new one.",
    "The answer to this factual query has changed; respond with the new answer.",
    "Revise the model's knowledge so that this question gets the target answer.",
    "Teach the model a new answer for this question-form fact.",
), held_out=9)

DEFAULT_TASKS: tuple[TaskInstruction, ...] = (_COUNTERFACT, _RECENT, _CONVSENT, _ZSRE)


class InstructionRegistry:
    """The tasks an editor knows and how to wrap a request's prompt in an instruction."""

    def __init__(self, tasks: Iterable[TaskInstruction] = DEFAULT_TASKS) -> None:
        self._tasks: dict[str, TaskInstruction] = {}
        for task in tasks:
            self.add(task)

    def add(self, task: TaskInstruction) -> None:
        if not task.name or not task.descriptions:
            raise InstructionError("a task needs a name and at least one description")
        if task.held_out is not None and not 0 <= task.held_out < len(task.descriptions):
            raise InstructionError(f"task {task.name!r}: held_out index out of range")
        self._tasks[task.name] = task

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self):
        return iter(self._tasks.values())

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def get(self, name: str) -> TaskInstruction:
        try:
            return self._tasks[name]
        except KeyError:
            raise InstructionError(f"unknown task {name!r}; known tasks: {self.names}") from None

    def render(self, task: str, prompt: str, description: str | None = None, *,
               sentiment: str | None = None, topic: str | None = None,
               rng: random.Random | None = None, held_out: bool = False) -> str:
        """The instruction-wrapped input.

        Without an explicit ``description`` the task's first training description is used,
        a random training one with ``rng`` (meta-training), or the held-out one.
        """
        spec = self.get(task)
        if description is None:
            if held_out:
                description = spec.held_out_description()
            elif rng is not None:
                description = rng.choice(spec.training_descriptions())
            else:
                description = spec.training_descriptions()[0]
        if "{sentiment}" in description or "{topic}" in description:
            if sentiment is None or topic is None:
                raise InstructionError(
                    f"task {task!r} describes edits by sentiment and topic; pass both")
            description = description.replace("{sentiment}", sentiment).replace(
                "{topic}", topic)
        return INSTRUCTION_FORMAT.format(task=spec.title, description=description,
                                         prompt=prompt)

    # -- files -------------------------------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self._tasks.values()]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> InstructionRegistry:
        return cls(_task_from_mapping(d) for d in data)

    def load_file(self, path: str | Path) -> list[str]:
        """Add (or replace) tasks from a JSON or YAML file; returns the task names read.

        The file holds a list of tasks, or ``{"tasks": [...]}``; each task has ``name``,
        ``descriptions`` and optionally ``title`` and ``held_out``.
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if isinstance(data, Mapping):
            data = data.get("tasks")
        if not isinstance(data, list):
            raise InstructionError(f"{path}: expected a list of tasks or {{'tasks': [...]}}")
        tasks = [_task_from_mapping(d, source=str(path)) for d in data]
        for task in tasks:
            self.add(task)
        return [t.name for t in tasks]


def _task_from_mapping(d: Any, source: str = "task list") -> TaskInstruction:
    if not isinstance(d, Mapping) or not d.get("name") or not d.get("descriptions"):
        raise InstructionError(f"{source}: every task needs 'name' and 'descriptions'")
    descriptions = d["descriptions"]
    if isinstance(descriptions, str) or not all(isinstance(x, str) and x.strip()
                                                for x in descriptions):
        raise InstructionError(f"{source}: 'descriptions' of {d['name']!r} must be a list "
                               "of non-empty strings")
    held_out = d.get("held_out")
    if held_out is not None and (isinstance(held_out, bool) or not isinstance(held_out, int)):
        raise InstructionError(f"{source}: 'held_out' of {d['name']!r} must be an index")
    return TaskInstruction(str(d["name"]), str(d.get("title") or d["name"]),
                           tuple(descriptions), held_out)
