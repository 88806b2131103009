"""The lifelong protocol: edits accumulate through a ledger; removal matches a fresh build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editor_core.combination import CombinationConfig, RidgeCombiner, SumCombiner
from editor_lab.evaluation.lifelong import LifelongEvaluator, LifelongMethod
from editor_lab.training.examples import load_task_records

from .test_editing import make_editor
from .tiny_models import small_tokenizer, tiny_model


@pytest.mark.parametrize("basis, kind", [("pristine", "ridge"), ("current", "sum")])
def test_edits_accumulate_and_a_removed_share_matches_a_fresh_build(
        exported: Path, basis: str, kind: str) -> None:
    tok = small_tokenizer()
    model = tiny_model("gpt2", len(tok))
    params = dict(model.named_parameters())
    editor = make_editor(model, tok, basis=basis,
                         combination=CombinationConfig(kind, 1.0 if kind == "ridge" else None))
    before = {w.name: params[w.name].detach().clone() for w in editor.editable}
    records = load_task_records(exported, ["counterfact"], "test")["counterfact"][:10]
    combiner = ((lambda: RidgeCombiner(editor.editable, 1.0)) if kind == "ridge"
                else (lambda: SumCombiner(editor.editable)))
    method = LifelongMethod(f"{kind}/{basis}", editor, combiner, basis)
    result = LifelongEvaluator(records, retention_first=3).run(method, [5, 10],
                                                               removal_at=10)
    assert set(result["checkpoints"]) == {5, 10}
    ten = result["checkpoints"][10]
    assert ten["edits"] == 10 and 0 <= ten["reliability"] <= 1
    assert 0 <= ten["neighbour_locality"] <= 1 and 0 <= ten["retention_first"] <= 1
    assert set(ten["ms_per_edit"]) == {"compute", "apply"}
    removal = result["removal"]
    assert removal["active_before"] == 10 and removal["removed"] == 1
    assert removal["same_answers"]
    if kind == "sum":  # an exact sum: the weights are a function of the active set
        assert removal["max_relative_weight_error"] == 0.0
    else:  # rank updates between refresh versions depend on the path: equal to rounding
        assert removal["max_relative_weight_error"] <= 1e-6
    # The run leaves the model as it found it.
    assert all(torch.equal(params[n], w) for n, w in before.items())
    with pytest.raises(ValueError, match="weights, the method says"):
        LifelongEvaluator(records).run(
            LifelongMethod("wrong", editor, combiner,
                           "current" if basis == "pristine" else "pristine"), [2])
