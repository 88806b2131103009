"""Process-wide settings shared by every entry point (CLI, service, tests, benchmarks)."""

from __future__ import annotations

import os

# OpenMP's default spin-waiting makes 2-thread CPU work several times slower than 1 thread
# on small shared machines; passive waiting fixes that. It only works if set before torch
# is imported, so entry points import this module first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Models, tokenizers and data are read from local folders (or the local cache) only: a name
# that is not there must fail at once, never start a download. Read when the Hugging Face
# libraries are imported, so it too is set first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def configure_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
