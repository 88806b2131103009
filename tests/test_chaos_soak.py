"""The chaos soak, short: Redis primaries and service replicas killed while clients edit,
roll back, generate and read; nothing acknowledged is lost, doubled or half-applied, and
the replicas end bit-identical (``python -m bench.chaos_soak`` runs the long one)."""

from __future__ import annotations

import pytest

from bench.chaos_soak import passed, soak


@pytest.mark.slow
def test_a_short_chaos_soak_loses_nothing() -> None:
    report = soak(minutes=2.5, clients=4, primary_kills=1, replica_kills=1)
    assert passed(report), report
    assert len(report["failover_s"]) == 1 and len(report["replica_restart_s"]) == 1
    assert report["acknowledged"] > 10 and report["rolled_back"] > 0
