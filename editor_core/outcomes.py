"""How a judged edit turned out: the one vocabulary of the method (``refine``), the service's
API and its metrics, and the evaluations."""

from __future__ import annotations

from typing import Literal, get_args

# one_shot: the editor's delta held as it was; refined: it held after refinement; fitted:
# an edit made without a trained editor (its step searched, then fitted) that holds;
# did_not_hold: it did not hold.
Outcome = Literal["one_shot", "refined", "fitted", "did_not_hold"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
