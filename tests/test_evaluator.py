"""The evaluator: same code for every method, model restored after every edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editor_core.data import load_edit_records
from editor_core.specs import resolve_editable
from editor_lab.evaluation.evaluator import Evaluator, markdown_table, summarize
from editor_lab.evaluation.methods import FineTuneMethod, HypernetworkMethod, NoEditMethod

from .test_editing import make_editor


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def records(exported: Path):
    return {"counterfact": load_edit_records(exported / "counterfact_test.json")[:3],
            "convsent": load_edit_records(exported / "convsent_test.json")[:2]}


def test_summary_statistics() -> None:
    s = summarize([1.0, 0.0, 1.0, 0.0])
    assert s["mean"] == 0.5 and s["n"] == 4 and s["se"] == pytest.approx((1 / 12) ** 0.5)
    assert summarize([0.7])["se"] == 0.0


def test_fine_tuning_edits_and_everything_is_restored(demo_lm, records) -> None:
    model, tok = demo_lm
    before = _snapshot(model)
    evaluator = Evaluator(model, tok)
    cf = {"counterfact": records["counterfact"]}
    unedited = evaluator.evaluate(NoEditMethod(), cf, progress=False)
    ftl = FineTuneMethod(model, tok, resolve_editable(model), steps=10, lr=1e-3)
    tuned = evaluator.evaluate(ftl, cf, progress=False)
    after = _snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    plain_u, plain_t = unedited["counterfact"]["plain"], tuned["counterfact"]["plain"]
    assert plain_u["reliability_em"]["mean"] == 0.0  # the LM knows the old fact
    assert plain_t["reliability_tf"]["mean"] > plain_u["reliability_tf"]["mean"]
    assert plain_u["locality/Unrelated"]["mean"] == 1.0
    for protocol in ("plain", "instruction"):
        metrics = tuned["counterfact"][protocol]
        assert {"reliability_tf", "reliability_em", "generalization_tf",
                "generalization_em", "locality/Neighborhood",
                "locality/Relation_Specificity", "portability/Subject_Aliasing_tf"} <= set(metrics)
        assert metrics["reliability_tf"]["n"] == 3


def test_hypernetwork_method_and_convsent_sentiment(demo_lm, records) -> None:
    model, tok = demo_lm
    before = _snapshot(model)
    editor = make_editor(model, tok, step=1e-3, rank=16)
    method = HypernetworkMethod("fresh", editor, held_out_instruction=True)
    result = Evaluator(model, tok).evaluate(method, records, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    sentiment = result["convsent"]["plain"]["reliability_sentiment"]
    assert 0.0 <= sentiment["mean"] <= 1.0 and sentiment["n"] == 2
    table = markdown_table({"fresh": result})
    assert "| fresh | convsent | instruction |" in table and "reliability_tf" in table


def test_eval_command_writes_json_and_table(exported: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from instructedit_cli import app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "--data-dir", str(exported), "--tasks",
                                      "counterfact,zsre", "--limit", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"unedited", "FT-L"}
    assert set(data["results"]["FT-L"]) == {"counterfact", "zsre"}
    zsre = data["results"]["FT-L"]["zsre"]["plain"]
    assert zsre["reliability_tf"]["n"] == 2 and "locality/NQ" in zsre
    assert "| FT-L | zsre | plain |" in result.output and data["lifelong"] == {}


def test_eval_sequential_runs_the_lifelong_protocol(exported: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from instructedit_cli import app

    out = tmp_path / "lifelong.json"
    result = CliRunner().invoke(app, [
        "eval", "--data-dir", str(exported), "--no-single", "--editor",
        "demo=checkpoints/demo-editor", "--sequential", "3,6", "--removal-at", "6",
        "--baseline-limit", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lifelong = json.loads(out.read_text())["lifelong"]
    ridge, sequential = lifelong["demo, ridge, pristine basis"], lifelong[
        "demo, sequential (sum, current basis)"]
    assert set(ridge["checkpoints"]) == {"3", "6"} and set(sequential["checkpoints"]) == {"3"}
    assert ridge["removal"]["removed"] == 1 and ridge["removal"]["same_answers"]
    # ridge between refresh versions: rank updates, equal to a fresh build to rounding
    assert 0 <= ridge["removal"]["max_relative_weight_error"] <= 1e-6
    assert "| demo, ridge, pristine basis | 6 |" in result.output


def test_per_task_method_routes_by_task_and_restores(demo_lm, records) -> None:
    from editor_lab.evaluation.methods import PerTaskMethod

    model, tok = demo_lm
    before = _snapshot(model)
    cf_editor = HypernetworkMethod("cf", make_editor(model, tok, step=1e-3, rank=16))
    cs_editor = HypernetworkMethod("cs", make_editor(model, tok, step=2e-3, rank=16))
    method = PerTaskMethod("single-task", {"counterfact": cf_editor, "convsent": cs_editor})
    assert method.covers("convsent") and not method.covers("zsre")
    for record, used, unused in ((records["counterfact"][0], cf_editor, cs_editor),
                                 (records["convsent"][0], cs_editor, cf_editor)):
        method.apply(record)
        assert len(used.ledger.active) == 1 and not unused.ledger.active
        assert not all(torch.equal(before[n], p) for n, p in model.named_parameters())
        method.restore()
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        assert not used.ledger.active


def test_eval_command_names_editors_and_evaluates_single_task_ones(
        demo_lm, exported: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from editor_core.checkpoint import model_fingerprint, save_editor
    from instructedit_cli import app

    model, tok = demo_lm
    editor = make_editor(model, tok, step=1e-3, rank=16)
    fp = model_fingerprint(model, editor.editable, tok)
    save_editor(tmp_path / "runs" / "mine" / "best", editor, base_fingerprint=fp)
    save_editor(tmp_path / "cf", editor, base_fingerprint=fp)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", "--data-dir", str(exported), "--tasks", "counterfact,zsre", "--limit", "1",
        "--editor", str(tmp_path / "runs" / "mine" / "best"), "--editor",
        f"Named={tmp_path / 'cf'}", "--single-task", f"counterfact={tmp_path / 'cf'}",
        "--held-out-instruction", "--no-ftl", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())["results"]
    assert set(data) == {"unedited", "mine", "mine (held-out instruction)", "Named",
                         "Named (held-out instruction)", "MEND single-task"}
    assert set(data["MEND single-task"]) == {"counterfact"}
    assert set(data["Named"]) == {"counterfact", "zsre"}
