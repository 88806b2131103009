"""Edits without a trained editor (``--editor none``): the gradient step, its size searched,
fitted until the answer is the target; routing calibrated on the model's own text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from editor_core.answers import is_exact
from editor_core.checkpoint import load_editor
from editor_core.editor import EditRequest
from editor_core.generation import SamplingParams, TokenStream
from editor_core.gradient_editor import gradient_editor, is_gradient_editor
from editor_core.live_stack import build_live_stack
from editor_core.refine import STEP_GRID, RefineConfig
from editor_core.routing import MemoryRouting
from editor_core.routing_calibration import self_calibrated_routing
from editor_core.routing_config import RoutingConfig
from editor_lab.training.examples import load_task_records

from .conftest import DEMO_LM, REPO
from .server_process import ServiceProcess
from .tiny_models import small_tokenizer, tiny_model

PROMPT, TARGET, SUBJECT = "Plyndti Brynta is a citizen of", "Veiistan", "Plyndti Brynta"


def greedy(model, tokenizer, prompt: str, routing: MemoryRouting | None = None) -> str:
    stream = TokenStream(model, tokenizer, prompt,
                         SamplingParams(max_new_tokens=8, stop=("\n",)), routing)
    stream.run()
    return stream.text


def test_an_edit_without_a_trained_editor_is_fitted_until_it_holds(demo_lm) -> None:
    from transformers import AutoModelForCausalLM

    _, tokenizer = demo_lm
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM).eval()  # the memory attaches to it
    editor = gradient_editor(model, tokenizer)
    assert is_gradient_editor(editor) and not editor.use_instructions
    assert not is_gradient_editor(load_editor(REPO / "checkpoints" / "demo-editor", model,
                                              tokenizer))
    stack = build_live_stack(editor, self_calibrated_routing(editor), RefineConfig())
    ledger, judge = stack.ledger, stack.judge
    assert judge.search_step
    before = greedy(model, tokenizer, PROMPT, stack.routing)
    assert not is_exact(before, TARGET)
    request = EditRequest("counterfact", PROMPT, TARGET, subject=SUBJECT)
    delta = editor.compute(request)
    judged = judge.judge(request, delta)
    assert judged.outcome == "fitted" and judged.holds
    assert {f.step for f in judged.delta.factors.values()} <= set(STEP_GRID)
    ledger.apply("e1", judged.delta)
    assert is_exact(greedy(model, tokenizer, PROMPT, stack.routing), TARGET)
    ledger.remove("e1")
    assert greedy(model, tokenizer, PROMPT, stack.routing) == before


def test_the_models_own_text_gives_the_background_a_calibration_would(demo_lm,
                                                                     exported: Path) -> None:
    model, tokenizer = demo_lm
    editor = gradient_editor(model, tokenizer)
    routing = self_calibrated_routing(editor)
    assert routing.projection is None and routing.gate == editor.gate
    assert (routing.threshold, routing.subjectless_threshold) == (
        RoutingConfig.threshold, RoutingConfig.subjectless_threshold)
    assert torch.equal(self_calibrated_routing(editor).mean, routing.mean)  # deterministic
    from editor_core.routing_calibration import _gate_inputs

    records = load_task_records(exported, ["counterfact"], "train")["counterfact"]
    background = torch.cat(_gate_inputs(editor, [r.prompt for r in records[:300]])).mean(0)
    assert torch.nn.functional.cosine_similarity(routing.mean, background, 0) > 0.9


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model nothing was ever trained for: a tiny random Qwen2."""
    folder = tmp_path_factory.mktemp("qwen2")
    tokenizer = small_tokenizer()
    tiny_model("qwen2", len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def service(qwen2_folder: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path / "data", "--model", str(qwen2_folder),
                             "--editor", "none").start()
    try:
        yield process
    finally:
        process.stop()


def _answer(client, prompt: str = PROMPT) -> str:
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 8})
    assert response.status_code == 200, response.text
    return response.json()["text"]


def test_a_model_never_trained_for_is_edited_rolled_back_and_replayed(
        service: ServiceProcess) -> None:
    with service.client() as client:
        info = client.get("/info").json()
        assert info["editor"] == "none" and not info["trained_editor"]
        before = _answer(client)
        assert not is_exact(before, TARGET)
        created = client.post("/edits", json={"task": "counterfact", "prompt": PROMPT,
                                              "target": TARGET, "subject": SUBJECT})
        assert created.status_code == 201, created.text
        edit = created.json()
        assert edit["outcome"] == "fitted"
        after = _answer(client)
        assert is_exact(after, TARGET), after
        edited = client.get("/info").json()["live_digest"]
    routing = list((service.data_dir / "routing").iterdir())
    assert len(routing) == 1 and (routing[0] / "routing.safetensors").exists()
    service.stop()
    service.start()  # the stored edit replays; the routing made at the first start is reused
    with service.client() as client:
        assert client.get("/readyz").json()["replayed"] == 1
        assert client.get("/info").json()["live_digest"] == edited
        assert _answer(client) == after
        rolled = client.post(f"/edits/{edit['id']}/rollback")
        assert rolled.status_code == 200, rolled.text
        info = client.get("/info").json()
        assert info["live_digest"] == info["pristine_digest"]
        assert _answer(client) == before
    assert list((service.data_dir / "routing").iterdir()) == routing


def test_a_service_switched_to_a_trained_editor_keeps_its_edits(redis_socket: str,
                                                                tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    common = dict(redis_url=f"unix://{redis_socket}", data_dir=tmp_path, threads=1)
    with TestClient(create_app(ServiceSettings(editor="none", **common))) as client:
        created = client.post("/edits", json={"task": "counterfact", "prompt": PROMPT,
                                              "target": TARGET, "subject": SUBJECT})
        assert created.status_code == 201, created.text
        after = _answer(client)
        digest = client.get("/info").json()["live_digest"]
    with TestClient(create_app(ServiceSettings(**common))) as client:  # the trained editor
        assert client.get("/info").json()["trained_editor"]
        assert client.get("/readyz").json()["replayed"] == 1
        assert client.get(f"/edits/{created.json()['id']}").json()["outcome"] == "fitted"
        assert client.get("/info").json()["live_digest"] == digest
        assert _answer(client) == after and is_exact(after, TARGET)


def test_a_routing_calibrated_from_edit_data_wins(redis_socket: str, exported: Path,
                                                 tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from editor_core.checkpoint import load_routing
    from instructedit_cli.train import calibrate
    from service.app import create_app
    from service.settings import ServiceSettings

    folder = tmp_path / "calibrated"
    figures = calibrate(Path("none"), DEMO_LM, exported, ["counterfact"], 0, folder)
    calibrated = load_routing(folder)
    assert figures["key_space"] == "centred" and calibrated.threshold == figures["threshold"]
    common = dict(redis_url=f"unix://{redis_socket}", data_dir=tmp_path / "data", threads=1,
                  editor="none")
    with TestClient(create_app(ServiceSettings(routing=folder, **common))) as client:
        used = client.app.state.live.ledger.combiner.config
        assert used.threshold == calibrated.threshold
        assert torch.equal(used.mean, calibrated.mean)
    assert not (tmp_path / "data" / "routing").exists()  # nothing calibrated on its own text


def test_a_relation_catalogue_gives_edits_without_an_editor_contrast_keys_and_aliases(
        tmp_path) -> None:
    from service.lifecycle import load_model_and_editor
    from service.settings import DEMO_EDITOR_PATH, ServiceSettings

    with pytest.raises(ValueError, match="relations.json"):
        ServiceSettings(editor="none", relation_forms=tmp_path)
    _, _, bare, _ = load_model_and_editor(ServiceSettings(editor="none"))
    _, _, editor, _ = load_model_and_editor(ServiceSettings(editor="none",
                                                            relation_forms=DEMO_EDITOR_PATH))
    assert is_gradient_editor(editor) and not bare.relation_forms.forms
    assert editor.relation_forms.contrast("citizenship", SUBJECT)
    widened = editor.alias_finder.widen(EditRequest("counterfact", PROMPT, TARGET,
                                                    subject=SUBJECT, relation="citizenship"))
    assert widened.aliases == ("P. Brynta",)
    assert bare.alias_finder.widen(EditRequest("counterfact", PROMPT, TARGET, subject=SUBJECT,
                                               relation="citizenship")).aliases == ()
