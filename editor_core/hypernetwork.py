"""The editor network (MEND's gradient transform), one per editable-weight shape.

For each token t of an edit input, the editing gradient of a weight is the outer product of
the layer input u_t and the gradient δ_t at the layer output. The network maps the
normalised pair [u_t; δ_t] to a new pair (ũ_t, δ̃_t) through residual low-rank blocks
``h = z + relu(s_l ⊙ (U V z + b) + o_l)``; U starts at zero, so a fresh network is the
identity and a fresh editor takes a plain (normalised) gradient step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from .specs import EditableWeight
from .workers import MIN_PARALLEL_ROWS, run_all


@dataclass(frozen=True)
class HypernetworkConfig:
    """Shape of the editor network; saved with every checkpoint."""

    rank: int = 256
    n_blocks: int = 2
    init_step_size: float = 1e-4
    norm_eps: float = 1e-7
    # "per_edit": scale each edit's δ rows (per weight) to unit Frobenius norm before the
    # running normalisation, so tasks whose editing gradients differ in scale by orders of
    # magnitude (a counterfactual object vs. one sentiment word) share statistics fairly;
    # the learned step sizes restore the magnitude. "none" is MEND's behaviour.
    delta_scaling: str = "none"

    def __post_init__(self) -> None:
        if self.delta_scaling not in ("none", "per_edit"):
            raise ValueError(f"delta_scaling must be 'none' or 'per_edit', "
                             f"not {self.delta_scaling!r}")

    def to_json(self) -> dict:
        return asdict(self)


class RunningNorm(nn.Module):
    """Per-dimension mean/variance gathered with Welford's method while training.

    In eval mode the statistics are frozen. Until two rows have been seen it is the
    identity, so an untrained editor still sees the raw gradient.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch of rows (Chan et al.'s parallel form of Welford's update)."""
        x = x.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta ** 2 * (self.count * n / total)
        self.count.fill_(total)

    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1).clamp(min=1)).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        if self.count < 2:
            return x
        mean = self.mean.to(x.dtype)
        std = self.std().to(x.dtype)
        return (x - mean) / (std + self.eps)


class LowRankResidualBlock(nn.Module):
    """``h = z + relu(scale[l] ⊙ (U V z + b) + shift[l])`` with a per-layer scale and shift.

    ``layer`` is one layer index for all rows, or a tensor of one index per row, so the rows
    of several weights sharing the block go through it in one pass.
    """

    def __init__(self, dim: int, rank: int, n_layers: int) -> None:
        super().__init__()
        self.U = nn.Parameter(torch.zeros(dim, rank))
        self.V = nn.Parameter(torch.randn(rank, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_layers, dim))
        self.shift = nn.Parameter(torch.zeros(n_layers, dim))

    def forward(self, z: torch.Tensor, layer: int | torch.Tensor) -> torch.Tensor:
        inner = (z @ self.V.T) @ self.U.T + self.bias
        return z + torch.relu(self.scale[layer] * inner + self.shift[layer])


class ShapeEditorNet(nn.Module):
    """The transform shared by all editable weights of one ``(d_in, d_out)`` shape."""

    def __init__(self, d_in: int, d_out: int, n_layers: int, cfg: HypernetworkConfig) -> None:
        super().__init__()
        self.d_in = d_in
        rank = min(cfg.rank, d_in + d_out)
        self.norm_u = RunningNorm(d_in, cfg.norm_eps)
        self.norm_delta = RunningNorm(d_out, cfg.norm_eps)
        self.blocks = nn.ModuleList(
            LowRankResidualBlock(d_in + d_out, rank, n_layers) for _ in range(cfg.n_blocks))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, layer: int | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([self.norm_u(u), self.norm_delta(delta)], dim=-1)
        for block in self.blocks:
            z = block(z, layer)
        return z[:, : self.d_in], z[:, self.d_in:]


class Hypernetwork(nn.Module):
    """All shape networks plus one learned step size per editable weight.

    ``slot(name)`` tells which shape network and which per-layer scale/shift a weight uses:
    layers are numbered in the order the editable weights are listed.
    """

    def __init__(self, editable: list[EditableWeight], cfg: HypernetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.editable = list(editable)
        self._slots: dict[str, tuple[str, int]] = {}
        counts: dict[str, int] = {}
        for w in self.editable:
            self._slots[w.name] = (w.shape_key, counts.get(w.shape_key, 0))
            counts[w.shape_key] = counts.get(w.shape_key, 0) + 1
        dims = {w.shape_key: (w.d_in, w.d_out) for w in self.editable}
        self.nets = nn.ModuleDict({
            key: ShapeEditorNet(d_in, d_out, counts[key], cfg)
            for key, (d_in, d_out) in dims.items()
        })
        self.step_sizes = nn.Parameter(torch.full((len(self.editable),), cfg.init_step_size))
        self._index = {w.name: i for i, w in enumerate(self.editable)}

    def slot(self, name: str) -> tuple[str, int]:
        return self._slots[name]

    def step_size(self, name: str) -> torch.Tensor:
        return self.step_sizes[self._index[name]]

    def transform(self, name: str, u: torch.Tensor, delta: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ũ, δ̃) for rows of one weight's layer inputs and output gradients."""
        return self.transform_many({name: (u, delta)})[name]

    def transform_many(self, rows: dict[str, tuple[torch.Tensor, torch.Tensor]]
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(ũ, δ̃) per weight; the weights sharing a shape network go through it as one
        batch of rows (a few large products instead of many small ones, the same result)."""
        groups: dict[str, list[str]] = {}
        for name in rows:
            groups.setdefault(self._slots[name][0], []).append(name)

        def run(key: str, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
            sizes = [rows[n][0].shape[0] for n in names]
            u = torch.cat([rows[n][0] for n in names])
            delta = torch.cat([rows[n][1] for n in names])
            layers = torch.cat([torch.full((size,), self._slots[n][1], dtype=torch.long,
                                           device=u.device) for n, size in zip(names, sizes)])
            u_t, d_t = self.nets[key](u, delta, layers)
            return dict(zip(names, zip(u_t.split(sizes), d_t.split(sizes))))

        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        parallel = sum(u.shape[0] for u, _ in rows.values()) >= MIN_PARALLEL_ROWS
        for part in run_all([partial(run, key, names) for key, names in groups.items()],
                            parallel):
            out.update(part)  # each shape network on its own worker
        return out
