"""The pool that runs an edit's independent parts side by side."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from editor_core.workers import run_all


def test_results_come_back_in_call_order() -> None:
    def slow(i: int):
        return lambda: (time.sleep(0.01 * (5 - i)), i)[1]

    assert run_all([slow(i) for i in range(5)]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("grad", [True, False])
def test_each_part_runs_with_the_callers_grad_mode(grad: bool) -> None:
    with torch.set_grad_enabled(grad):
        seen = run_all([torch.is_grad_enabled for _ in range(4)])
    assert seen == [grad] * 4


def test_parts_run_on_other_threads_and_nested_calls_do_not_wait_on_the_pool() -> None:
    def nested() -> list[str]:
        return run_all([lambda: threading.current_thread().name for _ in range(6)])

    outer = run_all([nested for _ in range(6)])  # more parts than workers, each nesting
    for names in outer:
        assert len(set(names)) == 1  # a worker's own parts run in that worker, in order
        assert names[0] != threading.current_thread().name


def test_a_failing_part_raises_after_every_part_finished() -> None:
    finished = []

    def fails():
        raise ValueError("bad part")

    def slow():
        time.sleep(0.05)
        finished.append(True)

    with pytest.raises(ValueError, match="bad part"):
        run_all([fails, slow, slow])
    assert finished == [True, True]


def test_parts_too_small_to_hand_off_run_in_the_calling_thread() -> None:
    here = threading.current_thread().name
    names = run_all([lambda: threading.current_thread().name for _ in range(3)],
                    parallel=False)
    assert names == [here] * 3
