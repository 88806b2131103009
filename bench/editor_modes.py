"""``POST /edits`` with the trained editor against ``--editor none``, in one run.

    python -m bench.editor_modes [--edits 120] [--json bench/editor-modes.json]

Starts two services on the working tree, one with the shipped editor and one with no
trained editor (each with its own embedded Redis), posts the same edits to both,
alternating which goes first so that machine drift cancels, and prints each side's
latency (p50, p95 over every edit after a warm-up) and outcomes as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import httpx

from .services import REPO, alternating_posts, running
from .workload import edit_bodies

MODES = {"trained editor": (), "none": ("--editor", "none")}


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1]


def compare(n: int, seed: int = 7) -> dict:
    sides = {name: (REPO, options) for name, options in MODES.items()}
    times: dict[str, list[float]] = {name: [] for name in MODES}
    outcomes: dict[str, dict[str, int]] = {name: {} for name in MODES}
    with tempfile.TemporaryDirectory() as tmp, running(sides, Path(tmp), 18650) as bases, \
            httpx.Client(timeout=60) as client:
        for i, name, took, reply in alternating_posts(client, bases,
                                                      edit_bodies(n + 1, seed=seed)):
            outcome = reply.get("outcome") or reply["error"]["code"]
            outcomes[name][outcome] = outcomes[name].get(outcome, 0) + 1
            if i:  # the first is a warm-up
                times[name].append(took)
    return {name: {"p50_ms": round(statistics.median(t), 1), "p95_ms": round(_p95(t), 1),
                   "edits": len(t), "outcomes": outcomes[name]}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=120)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = compare(args.edits)
    text = json.dumps(figures, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
