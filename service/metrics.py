"""Prometheus metrics of the service (``instructedit_*``), in one registry per app.

A registry per app (not prometheus-client's global one) lets several apps live in one
process, as tests do, without colliding. HTTP request metrics come from
prometheus-fastapi-instrumentator on the same registry. Edit buckets start at a millisecond:
an edit of the demo model takes tens of milliseconds, one of a large model seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from editor_core.outcomes import OUTCOMES

# instructedit_edit_outcomes' label, besides the judge's outcomes, for an edit refused
# because it did not hold (422 edit_did_not_hold)
REFUSED = "refused"

_MS_TO_MIN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
              30.0, 60.0)
_PER_TOKEN = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_PROBABILITY = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class ServiceMetrics:
    """Every metric the service records; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.edit_seconds = Histogram(
            "instructedit_edit_duration_seconds",
            "Edit time by phase: compute (editor), judge (trial and refinement), persist "
            "(Redis), apply (weights), measure (quality before/after)", ["phase"],
            buckets=_MS_TO_MIN, registry=r)
        self.lock_wait_seconds = Histogram(
            "instructedit_edit_lock_wait_seconds",
            "Time an edit or rollback waited for the one-at-a-time edit lock",
            buckets=_MS_TO_MIN, registry=r)
        self.generation_seconds = Histogram(
            "instructedit_generation_duration_seconds", "Time to generate one answer",
            buckets=_MS_TO_MIN, registry=r)
        self.time_per_token_seconds = Histogram(
            "instructedit_time_per_output_token_seconds",
            "Generation time divided by the tokens it produced", buckets=_PER_TOKEN,
            registry=r)
        self.post_edit_probability = Histogram(
            "instructedit_post_edit_target_probability",
            "Probability of the edit's target given its prompt, right after the edit",
            ["task"], buckets=_PROBABILITY, registry=r)
        self.edits = Counter("instructedit_edits", "Edits requested, by task and outcome",
                             ["task", "outcome"], registry=r)
        self.edit_outcomes = Counter(
            "instructedit_edit_outcomes", "Judged edits by task and outcome: "
            f"{', '.join(OUTCOMES)} (kept: accept_partial) or {REFUSED}",
            ["task", "outcome"], registry=r)
        self.rollbacks = Counter("instructedit_rollbacks", "Edits rolled back", registry=r)
        self.generated_tokens = Counter("instructedit_generated_tokens",
                                        "Tokens generated", registry=r)
        self.errors = Counter("instructedit_errors", "Error responses, by code", ["code"],
                              registry=r)
        self.active_edits = Gauge("instructedit_active_edits", "Edits in the live weights",
                                  registry=r)
        self.edit_version = Gauge("instructedit_edit_version",
                                  "Version of the live weights (every edit and rollback is "
                                  "a new version)", registry=r)
        self.store_up = Gauge("instructedit_store_up",
                              "1 while the edit store (Redis) answers, 0 while it does not",
                              registry=r)
        self.log_lag = Gauge("instructedit_log_lag_versions",
                             "Versions in the edit log not yet in this replica's weights",
                             registry=r)
        self.log_events = Counter("instructedit_log_events_applied",
                                  "Edit-log events applied to the live weights (from any "
                                  "replica), by event", ["event"], registry=r)
