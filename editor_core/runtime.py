"""Process-wide torch settings shared by every entry point (CLI, service, tests, benchmarks)."""

from __future__ import annotations

import os

# OpenMP's default spin-waiting makes 2-thread CPU work several times slower than 1 thread
# on small shared machines; passive waiting fixes that. It only works if set before torch
# is imported, so entry points import this module first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def configure_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
