"""One low-rank change applied to a linear module's output.

An edit's ΔW for one weight is stored as factors ``u`` ([r, d_in]), ``d`` ([r, d_out]) and a
step size; its effect on inputs ``x`` is ``step · (x uᵀ) d`` — never a dense [d_in, d_out]
matrix. The edit memory applies it while serving and the refiner while fitting the factors:
both call this, so an edit is judged under exactly the arithmetic it is served with.
"""

from __future__ import annotations

import torch

__all__ = ["low_rank_change"]


def low_rank_change(x: torch.Tensor, u: torch.Tensor, d: torch.Tensor, step: float
                    ) -> torch.Tensor:
    """``step · (x uᵀ) d`` in ``x``'s dtype and device (the factors may live elsewhere,
    e.g. on the CPU in the stored dtype); the module's output minus this is the edited
    output. Differentiable in ``u`` and ``d``."""
    return step * ((x @ u.to(x).T) @ d.to(x))
