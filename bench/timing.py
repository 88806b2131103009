"""Timing helpers shared by the benchmarks, and a description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
import transformers


def ms(fn: Callable[[], object]) -> float:
    """Wall time of one call, in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
                ) -> dict[str, float]:
    """Median ms of each function, called in turn ``repeats`` times, so that drift of the
    machine's speed hits every one alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(ms(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def percentiles(values: list[float], *qs: int) -> dict[str, float]:
    """``p50``-style percentiles (nearest rank) of ``values``."""
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
            for q in qs}


def machine() -> dict[str, str | int]:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "processor": platform.processor() or "unknown",
            "cpu_count": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}
