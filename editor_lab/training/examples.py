"""Meta-training examples: an edit request, what the edit must achieve, what it must keep.

For a fact edit, the edited model must give the new target on the plain prompt and on its
paraphrases (training templates only: evaluation templates never reach training), and keep
its answers on the record's locality prompts (same subject's other relations, neighbours,
unrelated questions). For ConvSent, it must answer its topic's questions with answers of
the new sentiment, and keep other topics' answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from editor_core.data.knowedit import load_edit_records
from editor_core.data.records import EditCase, Probe
from editor_core.editor import EditRequest


@dataclass(frozen=True)
class TrainingExample:
    request: EditRequest
    edit_probes: tuple[Probe, ...]
    locality_probes: tuple[Probe, ...]
    record: EditCase


def make_example(record: EditCase, rng: random.Random, max_paraphrases: int,
                 max_locality: int) -> TrainingExample:
    rephrases = list(record.rephrases)
    rng.shuffle(rephrases)
    prompts = [record.prompt, *rephrases[:max_paraphrases]]
    if record.task == "convsent" and record.answers:
        edit = tuple(Probe(p, rng.choice(record.answers)) for p in prompts)
    else:
        edit = tuple(Probe(p, record.target_new) for p in prompts)
    locality = [p for probes in record.locality.values() for p in probes]
    rng.shuffle(locality)
    return TrainingExample(EditRequest.from_record(record), edit,
                           tuple(locality[:max_locality]), record)


class TaskSampler:
    """Draws records task by task with fixed proportions, however large each file is."""

    def __init__(self, records: dict[str, list[EditCase]], mix: dict[str, float],
                 rng: random.Random) -> None:
        empty = [t for t in mix if not records.get(t)]
        if empty:
            raise ValueError(f"no training records for task(s) {empty}")
        self.records = records
        self.tasks = list(mix)
        self.weights = [mix[t] for t in self.tasks]
        self.rng = rng

    def sample(self) -> EditCase:
        task = self.rng.choices(self.tasks, self.weights)[0]
        return self.rng.choice(self.records[task])


def load_task_records(data_dir: str | Path, tasks: list[str], split: str
                      ) -> dict[str, list[EditCase]]:
    """``{task}_{split}.json`` of each task from a folder (the demo world's or KnowEdit's)."""
    folder = Path(data_dir)
    out = {}
    for task in tasks:
        path = folder / f"{task}_{split}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; build it with `instructedit "
                                    "build-world` or point data_dir at KnowEdit files")
        out[task] = load_edit_records(path, task)
    return out
