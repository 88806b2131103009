"""Measuring edits: per-probe metrics shared by every method (the evaluator builds on them)."""
