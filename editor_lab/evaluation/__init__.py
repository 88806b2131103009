"""Measuring edits: per-probe metrics shared by every method (the evaluator builds on them)."""

from pathlib import Path

# Evaluation sets written for the project (real-world facts), shipped with the package.
SETS_DIR = Path(__file__).parent / "sets"
