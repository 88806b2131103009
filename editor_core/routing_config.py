"""How the edit memory routes: the gate module, the thresholds, and the key space.

Calibrated per base model (``routing_calibration``) and saved beside the editor
(``checkpoint.save_routing``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RoutingConfig", "key_space"]


@dataclass(frozen=True)
class RoutingConfig:
    """``gate``: the module whose input is the routing key (the first edited module, so
    routing never sees an edit's effect). ``threshold`` applies to entries with a subject;
    ``subjectless_threshold`` to entries without one (they are eligible everywhere, so they
    must match more closely). ``mean`` is the average gate input over background text,
    subtracted before the cosine (raw activations are anisotropic). ``projection`` ([d, d])
    maps centred gate inputs into a key space learned so that rephrasings of one question
    lie close and other questions about the same subject lie apart; without it the cosine
    is taken on the centred inputs."""

    gate: str
    threshold: float = 0.8
    subjectless_threshold: float = 0.95
    mean: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    def key_space(self, x: torch.Tensor) -> torch.Tensor:
        """Gate inputs ([..., d]) as unit vectors of the key space the cosines are taken in."""
        return key_space(x, self.mean, self.projection)


def key_space(x: torch.Tensor, mean: torch.Tensor | None,
              projection: torch.Tensor | None) -> torch.Tensor:
    """Gate inputs ([..., d]), centred on ``mean`` and mapped by ``projection`` ([d, d]),
    as unit vectors: the space routing cosines are taken in."""
    x = x.float()
    if mean is not None:
        x = x - mean
    if projection is not None:
        x = x @ projection
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
