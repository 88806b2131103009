"""``POST /edits`` on two versions of the code in one run: is a change slower, or the machine?

    python -m bench.ab_post_edits --before 2c334b8 [--edits 240] [--no-relation] [--out F]

Starts one service on the working tree and one on ``--before`` (a git worktree in a
temporary folder, each with its own embedded Redis and its own shipped editor), then posts
the same edits to both, alternating which goes first, and prints each side's one-shot p50,
the median of each phase the edits report and the outcomes as JSON, with ``now``'s p50
over ``before``'s (``--out`` also writes them to a file, with the command and revision).
Timings on a shared machine drift between runs; alternating in one
run cancels that drift, so only the difference between the two versions is left.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from .services import REPO, alternating_posts, running
from .workload import edit_bodies


def compare(before: str, n: int, seed: int = 7, relation: bool = True) -> dict:
    bodies = [{**r, "accept_partial": True} for r in edit_bodies(n + 1, seed=seed)]
    if not relation:  # no relation: no derived wordings, no contrast
        bodies = [{k: v for k, v in b.items() if k != "relation"} for b in bodies]
    times: dict[str, list[float]] = {"before": [], "now": []}
    outcomes: dict[str, dict[str, int]] = {name: {} for name in times}
    phases: dict[str, dict[str, list[float]]] = {name: {} for name in times}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old),
                        before], check=True)
        try:
            with running({"before": (old, ()), "now": (REPO, ())}, Path(tmp), 18600) as bases, \
                    httpx.Client(timeout=60) as client:
                for i, name, took, made in alternating_posts(client, bases, bodies):
                    outcome = made.get("outcome")
                    outcomes[name][outcome] = outcomes[name].get(outcome, 0) + 1
                    if i and outcome == "one_shot":  # the first is a warm-up
                        times[name].append(took)
                        for phase, ms in (made.get("timings_ms") or {}).items():
                            phases[name].setdefault(phase, []).append(ms)
                # both made the same changes: the same version and active edits
                state = {name: {k: client.get(base + "/info").json()[k]
                                for k in ("edit_version", "active_edits")}
                         for name, base in bases.items()}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           check=False)
    out: dict = {name: {"one_shot_p50_ms": round(statistics.median(t), 1),
                        "one_shot": len(t), "outcomes": outcomes[name], **state[name],
                        "phase_p50_ms": {p: round(statistics.median(v), 1)
                                         for p, v in phases[name].items()}}
                 for name, t in times.items()}
    out["p50_ratio_now_over_before"] = round(
        out["now"]["one_shot_p50_ms"] / out["before"]["one_shot_p50_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--edits", type=int, default=240)
    parser.add_argument("--no-relation", action="store_true",
                        help="post the edits without their relation")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    figures = compare(args.before, args.edits, relation=not args.no_relation)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        args.out.write_text(json.dumps({"command": " ".join(["python -m bench.ab_post_edits",
                                                             *sys.argv[1:]]),
                                        "before": args.before, "now": head,
                                        **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
