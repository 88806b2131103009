"""The benchmark suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import Threads, app, setup


@app.command("bench")
def bench_cmd(
    out: Annotated[Path, typer.Option(help="where results.json and RESULTS.md go")] = Path(
        "bench"),
    quick: Annotated[bool, typer.Option(help="every benchmark at small sizes (a smoke run "
                                        "of a few minutes)")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Threads = None,
) -> None:
    """Benchmark edits, rollback, generation and storage on the demo LM; ratios against
    baselines measured in the same run. The last line printed is the headline JSON."""
    from bench.runner import run

    settings = setup(threads)
    n_threads = settings.threads if threads is None else threads
    results = run(out, quick=quick, device=device, threads=n_threads)
    typer.echo((out / "RESULTS.md").read_text())
    typer.echo(json.dumps(results["headline"]))
