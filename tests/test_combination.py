"""The joint (ridge) combination of active edits: exact removal, order independence, keys."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from editor_core.checkpoint import load_editor, model_fingerprint, save_editor
from editor_core.combination import (
    ActiveEdit,
    CombinationConfig,
    ExactSum,
    GridProducts,
    RidgeCombiner,
    SumCombiner,
    keys_and_values,
    on_grid,
)
from editor_core.delta import EditDelta, WeightFactors, merge
from editor_core.ledger import LedgerError, WeightLedger
from editor_core.specs import resolve_editable

from .test_editing import REQ, REQ2, make_editor
from .tiny_models import small_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


def keyed_delta(editable, seed: int, rows: int = 4, tokens: int = 5) -> EditDelta:
    g = torch.Generator().manual_seed(seed)
    factors = {w.name: WeightFactors(torch.randn(rows, w.d_in, generator=g),
                                     torch.randn(rows, w.d_out, generator=g) * 1e-2, 0.5,
                                     ((0, rows),)) for w in editable}
    keys = {w.name: (torch.randn(tokens, w.d_in, generator=g),) for w in editable}
    return EditDelta(factors, 1, keys)


def totals(combiner: RidgeCombiner, editable) -> dict[str, torch.Tensor | None]:
    return {w.name: combiner.total(w.name) for w in editable}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_removing_any_subset_equals_building_with_the_rest(tok) -> None:
    """Between refreshes the rank updates match a fresh build to rounding (they depend on
    the path); at a refresh version both solve from the exact sums: bit for bit."""
    editable = resolve_editable(tiny_model("gpt2", len(tok)))
    edits = [ActiveEdit(f"e{i}", i + 1, keyed_delta(editable, i)) for i in range(40)]
    live = RidgeCombiner(editable, ridge_lambda=0.5)
    for e in edits:
        live.add(e)
    gone = set(random.Random(0).sample(range(40), 13))
    for i in sorted(gone, reverse=True):
        live.remove(edits[i])
    fresh = RidgeCombiner(editable, ridge_lambda=0.5)
    kept = [e for i, e in enumerate(edits) if i not in gone]
    for e in reversed(kept):  # another order: the result depends on the set only
        fresh.add(e)
    for name, total in totals(live, editable).items():
        assert rel_err(total, fresh.total(name)) <= 1e-6  # rank-updated: to rounding
    for combiner in (live, fresh):
        combiner.settle(combiner.refresh_every)  # a refresh version: the exact solve
    for name, total in totals(live, editable).items():
        assert torch.equal(total, fresh.total(name))
    for e in kept:
        live.remove(e)
    assert all(t is None for t in totals(live, editable).values())  # exactly zero


def test_one_edit_keeps_its_own_effect_on_its_keys(tok) -> None:
    editable = resolve_editable(tiny_model("gpt2", len(tok)))
    delta = keyed_delta(editable, 1)
    combiner = RidgeCombiner(editable, ridge_lambda=1e-3)
    combiner.add(ActiveEdit("a", 1, delta))
    for w in editable:
        keys, values = keys_and_values(delta, w.name)
        joint = w.as_in_out(combiner.total(w.name))  # back to the (d_in, d_out) view
        assert rel_err(keys @ joint, values) <= 1e-3  # keys and values rounded to grids
        keys = on_grid(keys, RidgeCombiner.KEY_BITS) / 2.0 ** RidgeCombiner.KEY_BITS
        values = on_grid(values, RidgeCombiner.VALUE_BITS) / 2.0 ** RidgeCombiner.VALUE_BITS
        assert rel_err(keys @ joint, values) <= 1e-4
        # ...and, unlike the edit's own ΔW, does nothing orthogonal to its keys.
        q, _ = torch.linalg.qr(keys.T, mode="complete")
        outside = q[:, keys.shape[0]:].T
        assert (outside @ joint).norm() <= 1e-6 * joint.norm()


def test_the_ledger_combines_by_keys_and_restores_bit_for_bit(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    params = dict(model.named_parameters())
    original = {w.name: params[w.name].detach().clone() for w in editable}
    ledger = WeightLedger(model, editable, RidgeCombiner(editable, ridge_lambda=1.0))
    for i in range(10):
        ledger.apply(f"e{i}", keyed_delta(editable, i))
    without_keys = EditDelta(keyed_delta(editable, 99).factors)
    with pytest.raises(LedgerError, match="keys"):
        ledger.apply("bare", without_keys)
    assert len(ledger) == 10
    for i in random.Random(1).sample(range(10), 10):
        ledger.remove(f"e{i}")
    assert all(torch.equal(params[n], original[n]) for n in original)


def test_keys_travel_with_the_delta(tok) -> None:
    editable = resolve_editable(tiny_model("gpt2", len(tok)))
    a, b = keyed_delta(editable, 1), keyed_delta(editable, 2, tokens=7)
    batch = merge([a, b])
    parts = batch.split()
    name = editable[0].name
    assert torch.equal(parts[1].ridge_input_matrix(name), b.ridge_input_matrix(name))
    stored = parts[1].compressed()
    again = EditDelta.from_bytes(stored.to_bytes())
    assert torch.equal(again.ridge_input_matrix(name), stored.ridge_input_matrix(name))
    assert again.ridge_input_matrix(name).shape == (7, editable[0].d_in)
    with pytest.raises(ValueError):
        merge([a, EditDelta(b.factors)])


def test_an_editor_trained_for_ridge_computes_keys_and_says_so(tok, tmp_path: Path) -> None:
    model = tiny_model("gpt2", len(tok))
    ridge_lambda = {w.name: 2.0 for w in resolve_editable(model)}
    editor = make_editor(model, tok, combination=CombinationConfig("ridge", ridge_lambda))
    delta = editor.compute([REQ, REQ2])
    for w in editor.editable:
        keys = delta.ridge_inputs[w.name]
        assert len(keys) == 2 and all(k.shape[1] == w.d_in for k in keys)
        n = len(tok(REQ.prompt + " " + REQ.target)["input_ids"])
        assert keys[0].shape[0] >= n - 1  # every token of the plain prompt and target
    save_editor(tmp_path, editor, base_fingerprint=model_fingerprint(model, editor.editable,
                                                                      tok))
    loaded = load_editor(tmp_path, model, tok)
    assert loaded.combination == CombinationConfig("ridge", ridge_lambda={w.name: 2.0
                                                                 for w in editor.editable})
    ledger = WeightLedger.for_editor(loaded)
    assert isinstance(ledger.combiner, RidgeCombiner)
    for i, part in enumerate(delta.compressed().split()):
        ledger.apply(f"e{i}", part)
    assert len(ledger) == 2


def test_a_failed_rank_update_falls_back_to_the_exact_solve(tok, monkeypatch) -> None:
    editable = resolve_editable(tiny_model("gpt2", len(tok)))
    edits = [ActiveEdit(f"e{i}", i + 1, keyed_delta(editable, i)) for i in range(4)]
    live = RidgeCombiner(editable, ridge_lambda=0.5)
    for e in edits[:3]:
        live.add(e)
    real_solve = torch.linalg.solve
    calls = []

    def singular_on_the_second_weight(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first weight already updated in place
            raise torch.linalg.LinAlgError("singular")
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "solve", singular_on_the_second_weight)
    live.add(edits[3])
    monkeypatch.setattr(torch.linalg, "solve", real_solve)
    fresh = RidgeCombiner(editable, ridge_lambda=0.5)
    fresh.recompute(edits)
    for name, total in totals(live, editable).items():  # the exact solve, as a rebuild's
        assert torch.equal(total, fresh.total(name))


def test_an_exact_sum_depends_on_its_terms_not_their_order() -> None:
    g = torch.Generator().manual_seed(0)
    terms = [torch.randn(6, 5, generator=g, dtype=torch.float64) * 10 ** i for i in range(-3, 4)]
    a, b = ExactSum((6, 5), 36), ExactSum((6, 5), 36)
    for t in terms:  # add() may scale its term in place: hand it copies
        a.add(t.clone())
    a.add(terms[2].clone(), -1.0)
    for t in reversed(terms):
        if t is not terms[2]:
            b.add(t.clone())
    assert torch.equal(a.value(), b.value())
    for t in terms:
        if t is not terms[2]:
            a.add(t.clone(), -1.0)
    assert torch.equal(a.value(), torch.zeros(6, 5, dtype=torch.float64))
    with pytest.raises(OverflowError):
        a.add(torch.full((6, 5), 2.0 ** 40, dtype=torch.float64))
    with pytest.raises(OverflowError):
        a.add(torch.full((6, 5), float("nan"), dtype=torch.float64))
    assert torch.equal(a.value(), torch.zeros(6, 5, dtype=torch.float64))  # refused: no change


def test_grid_products_are_exact_in_any_grouping_and_refuse_overflow() -> None:
    g = torch.Generator().manual_seed(1)
    terms = [(on_grid(torch.randn(7, 5, generator=g, dtype=torch.float64) * 30, 12),
              on_grid(torch.randn(7, 3, generator=g, dtype=torch.float64) * 1e-2, 24))
             for _ in range(20)]
    one_by_one, at_once = GridProducts((5, 3), 12, 24), GridProducts((5, 3), 12, 24)
    for a, b in reversed(terms):
        one_by_one.add(a, b)
    at_once.add(torch.cat([a for a, _ in terms]), torch.cat([b for _, b in terms]))
    assert torch.equal(one_by_one.value(), at_once.value())
    for a, b in terms:
        one_by_one.add(a, b, -1.0)
    assert torch.equal(one_by_one.value(), torch.zeros(5, 3, dtype=torch.float64))
    before = at_once.value()
    huge = torch.full((1, 5), 2.0 ** 40, dtype=torch.float64)
    with pytest.raises(OverflowError):
        at_once.add(huge, torch.full((1, 3), 2.0 ** 20, dtype=torch.float64))
    assert torch.equal(at_once.value(), before)  # refused: unchanged


def replay_history(ledger: WeightLedger, deltas: list[EditDelta], ops: list[tuple]) -> None:
    """ops: ("add", i, version) or ("remove", [i, ...], version)."""
    for op, what, version in ops:
        if op == "add":
            ledger.apply(f"e{what}", deltas[what], version)
        else:
            ledger.remove_many([f"e{i}" for i in what], version)


@pytest.mark.parametrize("kind", ["sum", "ridge"])
def test_a_replica_loaded_at_a_refresh_version_then_following_the_log_is_bit_identical(
        tok, kind) -> None:
    """The weights are a function of the log: one replica sees every change, another
    starts from the active set at a refresh version and follows the rest."""
    model_a, model_b = tiny_model("gpt2", len(tok)), tiny_model("gpt2", len(tok))
    editable = resolve_editable(model_a)
    deltas = [keyed_delta(editable, i) for i in range(30)]

    def combiner():
        return RidgeCombiner(editable, 0.5, refresh_every=8) if kind == "ridge" \
            else SumCombiner(editable)

    rng = random.Random(3)
    ops, active, version = [], [], 0
    for i in range(30):
        version += 1
        ops.append(("add", i, version))
        active.append((i, version))
        if i % 4 == 3:  # a rollback of one or of a range
            version += 1
            gone = rng.sample(active, 2 if i % 8 == 3 else 1)
            ops.append(("remove", [g for g, _ in gone], version))
            active = [a for a in active if a not in gone]
    refresh = (version // 8) * 8
    assert refresh < version  # some changes after the refresh version
    a = WeightLedger(model_a, editable, combiner())
    replay_history(a, deltas, [op for op in ops if op[2] <= refresh])
    state = a.combiner.exact_state()  # what a replica persists at a refresh version
    replay_history(a, deltas, [op for op in ops if op[2] > refresh])

    snapshot = {}
    for op, what, v in ops:
        if v > refresh:
            break
        if op == "add":
            snapshot[what] = v
        else:
            for i in what:
                del snapshot[i]
    b = WeightLedger(model_b, editable, combiner())
    b.load([ActiveEdit(f"e{i}", v, deltas[i]) for i, v in snapshot.items()], refresh)
    replay_history(b, deltas, [op for op in ops if op[2] > refresh])
    assert b.version == a.version == version
    assert [e.edit_id for e in b.active] == [e.edit_id for e in a.active]
    assert a.live_digest() == b.live_digest()
    # ...and one that restores the persisted sums instead of rebuilding them from the edits.
    c = WeightLedger(tiny_model("gpt2", len(tok)), editable, combiner())
    c.load([ActiveEdit(f"e{i}", v, deltas[i]) for i, v in snapshot.items()], refresh,
           state)
    replay_history(c, deltas, [op for op in ops if op[2] > refresh])
    assert c.live_digest() == a.live_digest()


# Store keys computed before CombinationConfig's λ was renamed (lam → ridge_lambda): the
# stores of running services are keyed by them, so they must never change.
@pytest.mark.parametrize(("kind", "lam", "basis", "key"), [
    ("memory", None, "pristine", "043136db843942a33035cd21e39d9012"),
    ("sum", None, "current", "ec5aca53da48f2d76849d7ae27bcaf9c"),
    ("ridge", 3.0, "pristine", "c12df0b5c1fa7abd2974f5eff2a41e8a"),
    ("ridge", {"a.weight": 2.0, "b.weight": 0.5}, "current", "0f523bbc0fdd53c406626b2b6726286d"),
])
def test_the_store_key_of_a_configuration_never_changes(kind, lam, basis, key) -> None:
    from types import SimpleNamespace

    from service.lifecycle import store_key

    editor = SimpleNamespace(combination=CombinationConfig(kind, lam), basis=basis)
    assert store_key("f" * 64, editor) == key


def test_lambda_is_saved_under_its_first_name_and_read_under_either() -> None:
    """Checkpoints and store keys hold λ as ``lam``; a saved combination reads back either way."""
    ridge = CombinationConfig("ridge", ridge_lambda={"a.weight": 2.0})
    assert ridge.to_json() == {"kind": "ridge", "lam": {"a.weight": 2.0}}
    assert CombinationConfig.from_json(ridge.to_json()) == ridge
    assert CombinationConfig.from_json({"kind": "ridge", "ridge_lambda": 3.0}).ridge_lambda == 3.0
    assert CombinationConfig.from_json({}) == CombinationConfig("sum")
