"""What the benchmarks run on: the demo LM and editor as the service loads them (the routed
edit memory, edits computed on the pristine weights), and edit requests about people."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from editor_core.checkpoint import load_editor, load_routing
from editor_core.combination import CombinationConfig
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor
from editor_core.live_stack import LiveStack, build_live_stack
from editor_core.refine import RefineConfig
from editor_core.relation_forms import RelationForms
from editor_core.routing_config import RoutingConfig
from editor_lab.world import WorldConfig, build_world
from editor_lab.world.stream import new_person_names, unfamiliar_stream
from editor_lab.world.templates import RELATIONS

REPO = Path(__file__).resolve().parent.parent
DEMO_LM = REPO / "checkpoints" / "demo-lm"
DEMO_EDITOR = REPO / "checkpoints" / "demo-editor"


def edit_requests(n: int, seed: int = 0) -> list[EditRequest]:
    """``n`` edits as the service builds them from ``edit_bodies`` (the demo editor's
    relation catalogue derives each one's other wordings and contrast keys)."""
    forms = RelationForms.load(DEMO_EDITOR)
    return [EditRequest(b["task"], b["prompt"], b["target"], subject=b["subject"],
                        derived=forms.derive(b["relation"], b["subject"], [b["prompt"]]),
                        contrast=forms.contrast(b["relation"], b["subject"]),
                        relation=b["relation"])
            for b in edit_bodies(n, seed)]


def edit_bodies(n: int, seed: int = 0) -> list[dict]:
    """``n`` ``POST /edits`` bodies, no fact twice: known people's facts (citizenship, then
    birthplace, employer, profession) changed to another object, then the same relations
    set for new people named from the world's name parts; each names its relation."""
    world = build_world(WorldConfig())
    rng = random.Random(seed)
    people = [p.name for p in world.of_kind("person", seen=True)]
    rng.shuffle(people)
    relations = [r for r in RELATIONS if r.subject_kind == "person"]
    if n > len(people) * len(relations):
        names = new_person_names(world, -(-(n - len(people) * len(relations))
                                          // len(relations)), rng)
        people += [" ".join(name) for name in names]
    facts = [(p, r) for r in relations for p in people[:300]] + [
        (p, r) for p in people[300:] for r in relations]
    out = []
    for person, relation in facts[:n]:
        objects = [world.entities[o].name if o in world.entities else o
                   for o in world.objects_of_kind(relation.object_kind)]
        out.append({"task": "counterfact", "prompt": relation.templates[0].prompt(person),
                    "target": rng.choice(objects), "subject": person,
                    "relation": relation.name})
    return out


def unfamiliar_bodies(n: int, seed: int = 0) -> list[dict]:
    """``n`` ``POST /edits`` bodies inserting facts about people named with syllables the
    world never uses: edits the one-shot delta often misses, so the service refines many."""
    return [{"task": r.task, "prompt": r.prompt, "target": r.target_new,
             "subject": r.subject, "relation": r.meta["relation"]}
            for r in unfamiliar_stream(build_world(WorldConfig()), n, seed)]


def generation_prompts(n: int) -> list[str]:
    """``n`` prompts about companies, cities and countries: facts no benchmark edit (all
    about people) touches, so answers keep their length however many edits are active."""
    world = build_world(WorldConfig())
    subjects = {kind: world.of_kind(kind, seen=True) for kind in ("company", "city", "country")}
    prompts = [r.templates[0].prompt(e.name) for r in RELATIONS if r.subject_kind != "person"
               for e in subjects[r.subject_kind][:n]]
    return random.Random(0).sample(prompts, n)


@dataclass
class Workload:
    """The demo LM with the demo editor, combining edits as the service does by default
    (the routed edit memory, edits computed on the pristine weights), on ``device``."""

    device: str = "cpu"
    model: PreTrainedModel = field(init=False)
    tokenizer: object = field(init=False)
    editor: Editor = field(init=False)
    routing: RoutingConfig = field(init=False)
    _stack: LiveStack | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(DEMO_LM).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(DEMO_LM)
        self.editor = load_editor(DEMO_EDITOR, self.model, self.tokenizer, basis="pristine",
                                  combination=CombinationConfig("memory"))
        self.routing = load_routing(DEMO_EDITOR)

    def stack(self, refine: RefineConfig | None = None) -> LiveStack:
        """A fresh live stack over an empty edit memory, as a service starts with (the
        previous one's routing taken off the model); ``refine``: edits are judged."""
        if self._stack is not None:
            self._stack.close()
        self._stack = build_live_stack(self.editor, self.routing, refine)
        return self._stack

    def deltas(self, n: int) -> list[EditDelta]:
        """``n`` stored edits (distinct computations up to 64, then reused under new ids:
        what a ledger or store does with an edit does not depend on its content)."""
        distinct = [self.editor.compute(r).compressed() for r in edit_requests(min(n, 64))]
        return [distinct[i % len(distinct)] for i in range(n)]

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
