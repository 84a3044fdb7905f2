"""When the ranks check the graceful-stop request (orchestrate_bloom.train.graceful.StopPoll):
after the first step, then about every CHECK_EVERY_S seconds of training, on a step every rank
learns from the same all-reduce; on one process after every step.

    python -m pytest tests/unit/test_stop_poll.py -q
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from orchestrate_bloom.train import graceful
from orchestrate_bloom.train.graceful import MAX_STEPS_APART, StopPoll, steps_apart


def run(tmp_path: Path, ranks: int, step_s: float, steps: int, stop_after: int | None,
        seen_by: set[int]) -> tuple[list[int | None], list[int]]:
    """Drive `ranks` polls in lockstep; a request file that only ranks in `seen_by` can read
    appears after step `stop_after`. Returns each rank's stop step and the check steps."""
    now = [0.0]
    dirs = [tmp_path / f"r{r}" for r in range(ranks)]
    for d in dirs:
        d.mkdir()
    stopped: list[int | None] = [None] * ranks
    checks: list[int] = []
    polls = []
    for r in range(ranks):
        def reduce(values: Sequence[float]) -> np.ndarray:
            sent.append(list(values))
            return np.asarray(expected[0])
        polls.append(StopPoll(graceful.request_path(dirs[r]), reduce, r == 0, 0,
                              clock=lambda: now[0]))
    expected: list[np.ndarray] = [np.zeros(2)]
    sent: list[list[float]] = []
    for step in range(1, steps + 1):
        now[0] += step_s
        if stop_after is not None and step == stop_after + 1:
            for r in seen_by:
                graceful.request(dirs[r])
        # what each rank would send, summed first: the fake all-reduce returns the true sum
        due = [step >= p.next_check for p in polls]
        assert len(set(due)) == 1, f"ranks disagree on whether step {step} is a check"
        if due[0]:
            checks.append(step)
            local = [1.0 if graceful.requested(p.path) else 0.0 for p in polls]
            pick = steps_apart(now[0] - polls[0].last[1], step - polls[0].last[0])
            expected[0] = np.asarray([sum(local), float(pick)])
        sent.clear()
        for r, p in enumerate(polls):
            if stopped[r] is None and p(step):
                stopped[r] = step
        if sent:  # what the ranks sent sums to what the fake all-reduce answered
            assert len(sent) == ranks and np.allclose(np.sum(sent, axis=0), expected[0])
        if all(s is not None for s in stopped):
            break
    return stopped, checks


def test_steps_apart_follows_the_step_time() -> None:
    assert steps_apart(0.05 * 10, 10) == 20  # 50 ms steps: every 20 steps ~ 1 s
    assert steps_apart(3.0, 1) == 1  # slow steps: every step
    assert steps_apart(0.001 * 100, 100) == MAX_STEPS_APART  # bounded
    assert steps_apart(0.0, 0) == 1


def test_several_ranks_check_after_step_one_then_about_every_second(tmp_path: Path) -> None:
    stopped, checks = run(tmp_path, 4, step_s=0.1, steps=40, stop_after=None, seen_by=set())
    assert stopped == [None] * 4
    assert checks[:3] == [1, 11, 21]  # step 1, then 10 steps of 0.1 s apart


def test_every_rank_stops_at_the_same_check_when_only_one_saw_the_file(tmp_path: Path) -> None:
    stopped, checks = run(tmp_path, 4, step_s=0.1, steps=40, stop_after=3, seen_by={2})
    assert stopped == [11, 11, 11, 11]  # the next check after the request appeared
    (tmp_path / "first").mkdir()
    request_at_start, _ = run(tmp_path / "first", 2, 0.1, 40, stop_after=0, seen_by={1})
    assert request_at_start == [1, 1]  # a request there before the start: the first step


def test_one_process_reads_the_file_after_every_step(tmp_path: Path) -> None:
    poll = StopPoll(graceful.request_path(tmp_path), None, True, 5)
    assert not poll(6)
    graceful.request(tmp_path)
    assert poll(7)
