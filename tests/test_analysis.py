"""Edit-region analysis: the Gram matrix of edit directions, its PCA and separation figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editor_core.delta import EditDelta, WeightFactors
from editor_lab.evaluation.analysis import edit_gram, pca_from_gram, task_separation


def _delta(gen: torch.Generator, rows: int, direction: torch.Tensor | None = None) -> EditDelta:
    weights = {}
    for name, (d_in, d_out) in {"a": (6, 5), "b": (4, 7)}.items():
        u = torch.randn(rows, d_in, generator=gen)
        d = torch.randn(rows, d_out, generator=gen)
        weights[name] = WeightFactors(u, d, step=0.3)
    return EditDelta(weights, 1)


def _dense(delta: EditDelta) -> torch.Tensor:
    flat = torch.cat([f.dense().flatten() for f in delta.factors.values()])
    return flat / flat.norm()


def test_gram_from_factors_equals_dense_cosines() -> None:
    gen = torch.Generator().manual_seed(0)
    deltas = [_delta(gen, rows) for rows in (1, 3, 2, 5)]
    dense = torch.stack([_dense(d) for d in deltas])
    torch.testing.assert_close(edit_gram(deltas), dense @ dense.T)


def test_pca_from_gram_matches_pca_of_the_vectors() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    coords, share = pca_from_gram(x @ x.T, k=2)
    centred = x - x.mean(0)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    # Principal axes are defined up to sign.
    torch.testing.assert_close(coords.abs(), expected.abs())
    torch.testing.assert_close(share, (s[:2] ** 2) / (s ** 2).sum())


def test_task_separation_tells_clusters_from_a_mixture() -> None:
    gen = torch.Generator().manual_seed(2)
    centres = torch.eye(8, dtype=torch.float64)[:2] * 5
    points = torch.cat([centres[i] + torch.randn(10, 8, generator=gen, dtype=torch.float64)
                        for i in (0, 1)])
    unit = points / points.norm(dim=1, keepdim=True)
    labels = ["x"] * 10 + ["y"] * 10
    separated = task_separation(unit @ unit.T, labels)
    assert separated["nearest_centroid_accuracy"] == 1.0
    assert separated["within_task_cosine"] > 0.8 > 0.2 > separated["between_task_cosine"]
    mixed = task_separation(unit @ unit.T, ["x", "y"] * 10)  # labels unrelated to position
    assert mixed["nearest_centroid_accuracy"] <= 0.7
    assert mixed["within_task_cosine"] == pytest.approx(mixed["between_task_cosine"], abs=0.15)


def test_analyze_command_draws_and_reports(demo_lm, exported: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from editor_core.checkpoint import model_fingerprint, save_editor
    from instructedit_cli import app

    from .test_editing import make_editor

    model, tok = demo_lm
    editor = make_editor(model, tok, step=1e-3, rank=16)
    save_editor(tmp_path / "ed", editor,
                base_fingerprint=model_fingerprint(model, editor.editable, tok))
    png, out = tmp_path / "regions.png", tmp_path / "regions.json"
    result = CliRunner().invoke(app, [
        "analyze", "--editor", f"fresh={tmp_path / 'ed'}", "--data-dir", str(exported),
        "--tasks", "counterfact,convsent", "--limit", "4", "--png", str(png),
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())["fresh"]
    assert data["labels"] == ["counterfact"] * 4 + ["convsent"] * 4
    assert len(data["coords"]) == 8 and len(data["coords"][0]) == 2
    assert 0.0 <= data["separation"]["nearest_centroid_accuracy"] <= 1.0
    assert "| fresh |" in result.output
