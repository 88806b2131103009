"""A smoke run of every benchmark at small sizes: the code runs, writes its report, and the
figures are real measurements (positive, consistent with each other)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import TARGETS
from bench.runner import run


def test_quick_benchmarks_write_their_report(tmp_path: Path) -> None:
    results = run(tmp_path, quick=True, threads=2)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["headline"] == results["headline"]
    headline = results["headline"]
    assert set(TARGETS) <= set(headline) and set(headline["met"]) == set(TARGETS)
    assert set(headline["met"].values()) == {None}  # a smoke run is not held to the targets
    assert "not judged (quick run)" in (tmp_path / "RESULTS.md").read_text()
    differences = {"post_edits_p50_added_by_edits_ms"}  # may be below zero
    assert all(headline[name] > 0 for name in set(TARGETS) - differences)
    compute = results["edit_compute"]
    assert [row["batch"] for row in compute] == [1, 8]
    assert compute[1]["edit_ms_per_edit"] < compute[0]["edit_ms"]  # a batch shares work
    serving = results["serving"]
    assert serving["active_edits"] == 40  # 4 posted one by one, a batch of 32, 4 more
    for posted in (serving["post_edits"], serving["post_edits_with_edits"]):
        assert 0 < posted["p50"] <= posted["p99"]
    one_shot = [(p["one_shot"] or p)["p50"] for p in (serving["post_edits"],
                                                       serving["post_edits_with_edits"])]
    assert headline["post_edits_p50_added_by_edits_ms"] == pytest.approx(
        one_shot[1] - one_shot[0], abs=1e-3)
    unfamiliar = serving["post_unfamiliar_edits"]
    assert sum(unfamiliar["outcomes"].values()) == unfamiliar["edits"] == 4
    assert unfamiliar["outcomes"].get("refined") and unfamiliar["refined"]["p50"] > 0
    stored = results["storage"]["stored"]
    assert stored["stored_bytes"] <= stored["stored_bytes_max"] < stored["dense_bytes"]
    stores = results["storage"]["stores"]
    assert stores[0]["redis_bytes_per_edit"] > results["storage"]["stored"]["stored_bytes"] / 2
    report = (tmp_path / "RESULTS.md").read_text()
    for section in ("## Targets", "## Edit computation", "## Rollback", "## Generation",
                    "## Storage", results["machine"]["torch"]):
        assert section in report
