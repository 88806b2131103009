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
import time
from pathlib import Path

import httpx

from .ab_post_edits import REPO, _serve, _wait_ready
from .workload import edit_bodies

MODES = {"trained editor": (), "none": ("--editor", "none")}


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1]


def compare(n: int, seed: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for i, (name, options) in enumerate(MODES.items()):
                port = 18650 + i
                servers[name] = (_serve(REPO, Path(tmp) / f"data-{i}", port, *options),
                                 f"http://127.0.0.1:{port}")
            for _, base in servers.values():
                _wait_ready(base)
            times: dict[str, list[float]] = {name: [] for name in servers}
            outcomes: dict[str, dict[str, int]] = {name: {} for name in servers}
            with httpx.Client(timeout=60) as client:
                for i, body in enumerate(edit_bodies(n + 1, seed=seed)):
                    order = list(servers) if i % 2 == 0 else list(reversed(servers))
                    for name in order:
                        start = time.perf_counter()
                        reply = client.post(servers[name][1] + "/edits", json=body).json()
                        took = (time.perf_counter() - start) * 1e3
                        outcome = reply.get("outcome") or reply["error"]["code"]
                        outcomes[name][outcome] = outcomes[name].get(outcome, 0) + 1
                        if i:  # the first is a warm-up
                            times[name].append(took)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
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
