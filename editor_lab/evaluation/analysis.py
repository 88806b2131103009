"""Edit-region analysis: where each task's edits point in weight space.

The InstructEdit paper shows that instructions steer the hypernetwork's output into a region
per task, while MEND without instructions mixes them. Here every edit's weight change
(all editable weights, as one flattened vector) is scaled to unit norm and compared by
inner products. Those are computed from the low-rank factors —
``⟨AᵢᵀBᵢ, AⱼᵀBⱼ⟩_F = Σ (AᵢAⱼᵀ) ∘ (BᵢBⱼᵀ)`` — so no dense delta is ever built. From the
Gram matrix come an exact PCA of the edit directions (for the picture) and two numbers
that say the same without a picture: mean cosine within and between tasks, and how often
an edit's nearest task centroid (leave-one-out) is its own task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editor_core.data.records import EditCase
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor


def edit_gram(deltas: Sequence[EditDelta]) -> torch.Tensor:
    """Cosine similarities [N, N] between the edits' flattened weight changes (float64)."""
    n = len(deltas)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in deltas[0].factors:
        us = [d.factors[name].u.double() * d.factors[name].step for d in deltas]
        ds = [d.factors[name].d.double() for d in deltas]
        for i in range(n):
            for j in range(i, n):
                value = ((us[i] @ us[j].T) * (ds[i] @ ds[j].T)).sum()
                gram[i, j] += value
                if j != i:
                    gram[j, i] += value
    norms = gram.diagonal().clamp(min=1e-300).sqrt()
    return gram / norms[:, None] / norms[None, :]


def pca_from_gram(gram: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates [N, k] on the top principal components, and each one's variance share."""
    n = gram.shape[0]
    centre = torch.eye(n, dtype=gram.dtype) - 1.0 / n
    centred = centre @ gram @ centre
    values, vectors = torch.linalg.eigh(centred)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    coords = vectors[:, :k] * values[:k].sqrt()
    return coords, values[:k] / values.sum().clamp(min=1e-300)


def task_separation(gram: torch.Tensor, labels: Sequence[str]) -> dict[str, float]:
    """Mean cosine within and between tasks, and leave-one-out nearest-centroid accuracy."""
    tasks = sorted(set(labels))
    index = {t: torch.tensor([i for i, lab in enumerate(labels) if lab == t]) for t in tasks}
    same = torch.tensor([[a == b for b in labels] for a in labels])
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    within = gram[same & off_diag].mean().item()
    between = gram[~same].mean().item() if (~same).any() else float("nan")
    hits = 0
    for i, label in enumerate(labels):
        best, best_score = None, -float("inf")
        for t in tasks:
            members = index[t][index[t] != i]
            if len(members) == 0:
                continue
            # cos(x_i, centroid) for unit vectors x_j: mean_j G_ij / |mean_j x_j|
            norm = gram[members][:, members].mean().clamp(min=1e-300).sqrt()
            score = (gram[i, members].mean() / norm).item()
            if score > best_score:
                best, best_score = t, score
        hits += best == label
    return {"within_task_cosine": within, "between_task_cosine": between,
            "nearest_centroid_accuracy": hits / len(labels)}


def analyze_editor(editor: Editor, records: dict[str, list[EditCase]],
                   desc: str = "edits") -> dict:
    """Every record's delta under ``editor``: PCA coordinates and separation figures."""
    deltas, labels = [], []
    flat = [(task, r) for task, recs in records.items() for r in recs]
    for task, record in tqdm(flat, desc=desc, leave=False):
        deltas.append(editor.compute(EditRequest.from_record(record)))
        labels.append(task)
    gram = edit_gram(deltas)
    coords, share = pca_from_gram(gram)
    return {"labels": labels, "coords": coords.tolist(), "variance_share": share.tolist(),
            "separation": task_separation(gram, labels)}


def plot_edit_regions(analyses: dict[str, dict], png_path: str | Path) -> None:
    """One PCA panel per editor, points coloured by task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(analyses), figsize=(5.2 * len(analyses), 4.6), squeeze=False)
    for ax, (name, result) in zip(axes[0], analyses.items()):
        coords = torch.tensor(result["coords"])
        for task in dict.fromkeys(result["labels"]):
            mask = torch.tensor([lab == task for lab in result["labels"]])
            ax.scatter(coords[mask, 0], coords[mask, 1], s=12, alpha=0.75, label=task)
        sep = result["separation"]
        share = result["variance_share"]
        ax.set_title(f"{name}\nnearest-centroid acc. {sep['nearest_centroid_accuracy']:.2f}, "
                     f"cos within {sep['within_task_cosine']:.2f} / "
                     f"between {sep['between_task_cosine']:.2f}", fontsize=9)
        ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({share[1]:.0%})")
        ax.legend(fontsize=8)
    fig.suptitle("Edit directions (unit-norm weight changes) per task", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
