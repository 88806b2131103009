"""The weight ledger's exactness, editor checkpoints, fingerprints, and EasyEdit import."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from editor_core.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    FingerprintMismatch,
    load_editor,
    model_fingerprint,
    read_editor_config,
    save_editor,
)
from editor_core.delta import ActiveEdit, EditDelta, WeightFactors
from editor_core.easyedit import ArchiveError, convert_state_dict, import_easyedit
from editor_core.editor import EditRequest
from editor_core.ledger import LedgerError, WeightLedger
from editor_core.specs import resolve_editable

from .test_editing import REQ, REQ2, make_editor
from .tiny_models import small_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


def random_delta(editable, seed: int, rows: int = 6, scale: float = 1e-2) -> EditDelta:
    g = torch.Generator().manual_seed(seed)
    return EditDelta({w.name: WeightFactors(torch.randn(rows, w.d_in, generator=g),
                                            torch.randn(rows, w.d_out, generator=g) * scale,
                                            0.5, ((0, rows),))
                      for w in editable})


def snapshot(model, editable) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {w.name: params[w.name].detach().clone() for w in editable}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_removing_every_edit_restores_the_weights_bit_for_bit(family: str, tok) -> None:
    model = tiny_model(family, len(tok))
    editable = resolve_editable(model)
    original = snapshot(model, editable)
    ledger = WeightLedger(model, editable)
    digest = ledger.live_digest()
    for i in range(30):
        ledger.apply(f"e{i}", random_delta(editable, i))
    assert ledger.live_digest() != digest
    order = list(range(30))
    random.Random(0).shuffle(order)
    for i in order:
        ledger.remove(f"e{i}")
    now = snapshot(model, editable)
    assert all(torch.equal(now[n], original[n]) for n in original)
    assert ledger.live_digest() == digest and len(ledger) == 0


def test_removing_one_of_many_equals_recomputing_without_it(tok) -> None:
    """Bit for bit a ledger that never saw the removed edits (the sum is exact); within
    1e-6 of the float64 sum of the stored deltas (each is rounded once onto the grid)."""
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    original = snapshot(model, editable)
    ledger = WeightLedger(model, editable)
    deltas = {f"e{i}": random_delta(editable, i) for i in range(100)}
    for edit_id, delta in deltas.items():
        ledger.apply(edit_id, delta)
    for gone in ("e3", "e50", "e99", "e0"):
        ledger.remove(gone)
        del deltas[gone]
    live = snapshot(model, editable)
    for w in editable:
        expected = original[w.name].double() - sum(
            w.to_stored(d.factors[w.name].dense()) for d in deltas.values())
        err = (live[w.name].double() - expected).norm() / expected.norm()
        assert err <= 1e-6, (w.name, err.item())
    # A ledger that applies only the rest, in another order, gets the same weights...
    other = tiny_model("gpt2", len(tok))
    fresh = WeightLedger(other, resolve_editable(other))
    for edit_id in reversed(list(deltas)):
        fresh.apply(edit_id, deltas[edit_id])
    rebuilt = snapshot(other, editable)
    assert all(torch.equal(live[n], rebuilt[n]) for n in live)
    # ...and so does a replica loading the same set from scratch.
    ledger.load([ActiveEdit(i, int(i[1:]) + 1, d) for i, d in deltas.items()], ledger.version)
    assert all(torch.equal(live[n], snapshot(model, editable)[n]) for n in live)


def test_versions_remove_after_and_errors(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    original = snapshot(model, editable)
    ledger = WeightLedger(model, editable)
    versions = [ledger.apply(f"e{i}", random_delta(editable, i)) for i in range(5)]
    assert versions == [1, 2, 3, 4, 5] and ledger.version == 5
    two = snapshot(model, editable)
    ledger.remove("e2")
    assert ledger.version == 6  # a removal is a change of the weights: a new version
    gone = ledger.remove_after(2)
    assert [e.edit_id for e in gone] == ["e4", "e3"] and ledger.version == 7
    assert [e.edit_id for e in ledger.active] == ["e0", "e1"]
    assert ledger.remove_after(2) == [] and ledger.version == 7  # nothing changed
    with pytest.raises(LedgerError, match="not newer"):
        ledger.remove("e1", version=7)
    assert [e.edit_id for e in ledger.active] == ["e0", "e1"]  # the refused removal kept it
    kept = snapshot(model, editable)
    with pytest.raises(LedgerError, match="not active"):  # one unknown id: nothing removed
        ledger.remove_many(["e0", "e9"], version=20)
    assert ledger.version == 7 and len(ledger) == 2
    assert all(torch.equal(snapshot(model, editable)[n], kept[n]) for n in kept)
    with pytest.raises(LedgerError, match="not active"):
        ledger.remove("e3")
    with pytest.raises(LedgerError, match="already active"):
        ledger.apply("e0", random_delta(editable, 0))
    with pytest.raises(LedgerError, match="not newer"):
        ledger.apply("old", random_delta(editable, 9), version=7)
    wrong = EditDelta({editable[0].name: random_delta(editable, 1).factors[editable[0].name]})
    with pytest.raises(LedgerError, match="manages"):
        ledger.apply("partial", wrong)
    assert ledger.apply("e9", random_delta(editable, 9), version=42) == 42
    ledger.reset()
    assert all(torch.equal(snapshot(model, editable)[n], original[n]) for n in original)
    assert two  # the intermediate state existed and differed
    assert any(not torch.equal(two[n], original[n]) for n in original)


def test_editor_checkpoint_round_trip_gives_the_same_edit(tok, tmp_path: Path) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    editor.hypernetwork.train()
    editor.transform(editor.capture(editor.encode([REQ, REQ2])))  # statistics worth saving
    with torch.no_grad():
        for block in editor.hypernetwork.nets.values():
            block.blocks[0].U.normal_()  # no longer the identity
    fp = model_fingerprint(model, editor.editable, tok)
    save_editor(tmp_path, editor, base_fingerprint=fp, training={"steps": 3})
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE}
    config = read_editor_config(tmp_path)
    assert config["base_model_fingerprint"] == fp and config["training"] == {"steps": 3}
    assert [e["name"] for e in config["editable"]] == [w.name for w in editor.editable]
    assert config["instructions"][0]["name"] == "counterfact"
    loaded = load_editor(tmp_path, model, tok)
    a, b = editor.compute(REQ), loaded.compute(REQ)
    for name in a.factors:
        torch.testing.assert_close(a.factors[name].dense(), b.factors[name].dense())


def test_loading_against_another_model_names_both_fingerprints(tok, tmp_path: Path) -> None:
    model = tiny_model("gpt2", len(tok), seed=0)
    editor = make_editor(model, tok)
    fp = model_fingerprint(model, editor.editable, tok)
    save_editor(tmp_path, editor, base_fingerprint=fp)
    other = tiny_model("gpt2", len(tok), seed=1)
    found = model_fingerprint(other, editor.editable, tok)
    with pytest.raises(FingerprintMismatch) as err:
        load_editor(tmp_path, other, tok)
    assert fp[:16] in str(err.value) and found[:16] in str(err.value)
    # Same editable weights but a different embedding is another model too.
    lower = tiny_model("gpt2", len(tok), seed=0)
    with torch.no_grad():
        lower.transformer.wte.weight[0, 0] += 1.0
    with pytest.raises(FingerprintMismatch):
        load_editor(tmp_path, lower, tok)
    # An editor weights file swapped for another editor's is caught as well.
    other_editor = make_editor(model, tok, step=0.123)
    save_editor(tmp_path / "b", other_editor, base_fingerprint=fp)
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / "b" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(FingerprintMismatch, match="different editors"):
        load_editor(tmp_path, model, tok)


def test_a_failed_apply_changes_nothing(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    ledger = WeightLedger(model, editable)
    ledger.apply("ok", random_delta(editable, 1))
    before, version = snapshot(model, editable), ledger.version
    last = editable[-1].name
    bad_shape = random_delta(editable, 2)
    f = bad_shape.factors[last]
    bad_shape.factors[last] = WeightFactors(f.u, f.d[:, :-1], f.step, f.spans)
    nan = random_delta(editable, 3)
    nan.factors[last].u[0, 0] = float("nan")
    for bad, message in ((bad_shape, "expected"), (nan, "not finite")):
        with pytest.raises(LedgerError, match=message):
            ledger.apply("bad", bad)
    assert "bad" not in ledger and ledger.version == version
    assert all(torch.equal(snapshot(model, editable)[n], before[n]) for n in before)
    ledger.remove("ok")
    assert len(ledger) == 0


def test_readers_never_see_half_an_edit(tok) -> None:
    import threading

    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    ledger = WeightLedger(model, editable)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (ledger.apply("e", random_delta(editable, 1)),
                                              done.set()))
    with ledger.reading():
        before = snapshot(model, editable)
        writer.start()
        assert not done.wait(0.3)  # the write waits for the reader
        assert all(torch.equal(snapshot(model, editable)[n], before[n]) for n in before)
    writer.join(5)
    assert done.is_set() and "e" in ledger


def test_fp32_replica_follows_the_ledger(tok) -> None:
    model = tiny_model("gpt2", len(tok)).to(torch.bfloat16)
    editor = make_editor(model, tok, step=0.5)
    assert editor.edit_model is not model
    ledger = WeightLedger.for_editor(editor)
    replica = dict(editor.edit_model.named_parameters())
    pristine = {w.name: replica[w.name].detach().clone() for w in editor.editable}
    delta = editor.compute(REQ)
    ledger.apply("e", delta)
    served = dict(model.named_parameters())
    for w in editor.editable:
        assert replica[w.name].dtype == torch.float32
        assert torch.equal(replica[w.name].to(torch.bfloat16), served[w.name])
    # The next edit is computed on the edited weights, in fp32.
    second = editor.compute(REQ)
    assert any(not torch.equal(second.factors[n].d, delta.factors[n].d) for n in delta.factors)
    ledger.remove("e")
    assert all(torch.equal(replica[w.name], pristine[w.name]) for w in editor.editable)


# -- EasyEdit archives -------------------------------------------------------------------

def _easyedit_archive(editable, rank: int, seed: int) -> dict:
    """An archive in EasyEdit's layout, with random (trained-looking) values."""
    g = torch.Generator().manual_seed(seed)
    state: dict = {"edit_lrs": torch.rand(len(editable), generator=g) * 1e-2}
    shapes: dict[tuple[int, int], int] = {}
    for w in editable:
        shapes[(w.d_in, w.d_out)] = shapes.get((w.d_in, w.d_out), 0) + 1
    for (d_in, d_out), modes in shapes.items():
        p = f"mend.{(d_in, d_out)}."
        dim = d_in + d_out
        for side, n in (("u", d_in), ("v", d_out)):
            state[p + f"{side}_mean"] = torch.randn(n, generator=g)
            state[p + f"{side}_std"] = torch.rand(n, generator=g) + 0.5
            state[p + f"{side}_s"] = torch.zeros(n)
        state[p + "k"] = torch.tensor([500.0])
        for i in range(2):
            q = p + f"mlp.layers.{i}."
            state[q + "u"] = torch.randn(dim, rank, generator=g) * 0.1
            state[q + "v"] = torch.randn(rank, dim, generator=g)
            state[q + "bias"] = torch.randn(dim, generator=g) * 0.1
            state[q + "mode_scale.weight"] = torch.rand(modes, dim, generator=g) + 0.5
            state[q + "mode_shift.weight"] = torch.randn(modes, dim, generator=g) * 0.1
    state["model_config"] = {"not": "a tensor"}
    return {"model": state, "opt": None, "lr_opt": None, "val_stats": {}, "step": 10}


def _easyedit_update(state: dict, editable, name: str, u: torch.Tensor, v: torch.Tensor):
    """EasyEdit's update for one weight, written from its formula: W_new = W + lr · g.

    g is ``einsum("bi,bj->ij")`` for GPT-2's Conv1D (in, out) and ``"bi,bj->ji"`` for
    Linear weights (out, in).
    """
    w = next(x for x in editable if x.name == name)
    same = [x.name for x in editable if (x.d_in, x.d_out) == (w.d_in, w.d_out)]
    mode = same.index(name)
    p = f"mend.{(w.d_in, w.d_out)}."
    u_in = (u - state[p + "u_mean"]) / (state[p + "u_std"] + 1e-7)
    v_in = (v - state[p + "v_mean"]) / (state[p + "v_std"] + 1e-7)
    x = torch.cat([u_in, v_in], -1)
    for i in range(2):
        q = p + f"mlp.layers.{i}."
        pre = (state[q + "u"] @ (state[q + "v"] @ x.T)).T + state[q + "bias"]
        pre = pre * state[q + "mode_scale.weight"][mode] + state[q + "mode_shift.weight"][mode]
        x = pre.clamp(min=0) + x
    u_t, v_t = x[:, : w.d_in], x[:, w.d_in:]
    g = torch.einsum("bi,bj->ji" if w.transposed else "bi,bj->ij", u_t, v_t)
    lr = state["edit_lrs"][[x.name for x in editable].index(name)]
    return lr * g


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_easyedit_import_reproduces_easyedits_delta(family: str, tok, tmp_path: Path) -> None:
    model = tiny_model(family, len(tok))
    editable = resolve_editable(model)
    archive = _easyedit_archive(editable, rank=6, seed=3)
    path = tmp_path / "mend.pt"
    torch.save(archive, path)
    out = import_easyedit(path, model, tok, tmp_path / "editor")
    editor = load_editor(out, model, tok)
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    for w in editable:
        u, v = torch.randn(7, w.d_in, generator=g), torch.randn(7, w.d_out, generator=g)
        u_t, d_t = editor.hypernetwork.transform(w.name, u, v)
        ours = params[w.name].detach() - editor.hypernetwork.step_size(w.name).item() * (
            w.to_stored(u_t.T @ d_t))
        theirs = params[w.name].detach() + _easyedit_update(archive["model"], editable,
                                                            w.name, u, v)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_easyedit_import_refuses_mismatched_archives(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    state = _easyedit_archive(editable, rank=6, seed=3)["model"]
    with pytest.raises(ArchiveError, match="step sizes"):
        convert_state_dict(state, model, [editable[0].name])
    bad = {k: v for k, v in state.items() if not k.startswith("mend.(32, 128)")}
    with pytest.raises(ArchiveError, match="no network for weight shape"):
        convert_state_dict(bad, model)
    with pytest.raises(ArchiveError, match="edit_lrs"):
        convert_state_dict({"mend.x": torch.zeros(1)}, model)


def test_edit_request_is_usable_after_import_through_the_cli(tok, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from instructedit_cli import app

    model = tiny_model("gpt2", len(tok))
    model_dir = tmp_path / "lm"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    editable = resolve_editable(model)
    torch.save(_easyedit_archive(editable, rank=6, seed=4), tmp_path / "a.pt")
    result = CliRunner().invoke(app, ["import-easyedit", str(tmp_path / "a.pt"), "--model",
                                      str(model_dir), "--out", str(tmp_path / "ed")])
    assert result.exit_code == 0, result.output
    assert "unpickles" in result.output
    editor = load_editor(tmp_path / "ed", model, tok)
    delta = editor.compute(EditRequest("counterfact", "The capital of Foxland is", "Mandan"))
    assert all(torch.isfinite(f.u).all() for f in delta.factors.values())


def test_the_combining_rule_is_pluggable(tok) -> None:
    from editor_core.ledger import SumCombiner

    class HalfSum(SumCombiner):
        """A stand-in rule: half of the summed deltas."""

        def total(self, name):
            t = super().total(name)
            return None if t is None else t / 2

    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    original = snapshot(model, editable)
    ledger = WeightLedger(model, editable, combiner=HalfSum(editable))
    delta = random_delta(editable, 1)
    ledger.apply("e", delta)
    for w in editable:
        expected = original[w.name].double() - w.to_stored(delta.factors[w.name].dense()) / 2
        torch.testing.assert_close(snapshot(model, editable)[w.name].double(), expected,
                                   rtol=1e-6, atol=1e-6)
    ledger.remove("e")
    assert all(torch.equal(snapshot(model, editable)[n], original[n]) for n in original)
