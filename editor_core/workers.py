"""Independent parts of one edit run side by side on a small pool of threads.

The service runs torch with one intra-op thread (waking a second OpenMP thread for an edit's
small products costs more than it gives), so on its own an edit would use one core. Its
parts that do not depend on each other — the keys pass beside the editing pass, each shape
network of the hypernetwork, each weight's compression and ridge update — run here on the
other cores instead.
Torch releases the GIL inside its kernels, so threads suffice. Each part is computed by the
same operations whichever thread runs it, so results are bit-identical to a serial run.

A part that itself calls ``run_all`` runs its pieces in its own thread, in order, so a
pool thread never waits on the pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import torch

T = TypeVar("T")

_WORKERS = max(1, min(4, os.cpu_count() or 1))
_PREFIX = "edit-worker"
# One pool for the process, like its OpenMP threads: created once, never replaced; a worker
# knows itself by its thread's name, so no per-thread flag is kept.
_POOL = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix=_PREFIX)
# Parts over fewer rows in all than this (a short edit input) run in turn: handing them to
# workers costs more than it saves.
MIN_PARALLEL_ROWS = 64


def run_all(calls: Sequence[Callable[[], T]], parallel: bool = True) -> list[T]:
    """Every call's result, in order, computed on the pool with the caller's grad mode —
    or in the calling thread, in order, when there is one call, the caller is a worker, or
    ``parallel`` is false (parts too small to be worth a hand-off: about a millisecond)."""
    if not parallel or len(calls) <= 1 or threading.current_thread().name.startswith(_PREFIX):
        return [call() for call in calls]
    grad = torch.is_grad_enabled()

    def run(call: Callable[[], T]) -> T:
        with torch.set_grad_enabled(grad):
            return call()

    futures = [_POOL.submit(run, call) for call in calls]
    wait(futures)  # every part finishes, even when one failed
    return [f.result() for f in futures]
