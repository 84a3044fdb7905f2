"""`orchestrate down --save` on a real 2-host job (th0, th1 x 1 CPU rank, tiny Bloom):

1. an uninterrupted run of 60 steps: the reference final loss (full precision, from the
   step's checkpoint manifest; the session's `reference_run`, shared with
   test_restart_trainer; two ranks on one node agreeing on the stop step:
   tests/model/test_train_graceful.py);
2. the same job stopped with `down --save` once it logged step 4: every rank saved the same
   step N (its only checkpoint: save_steps is larger than the run), every rank exited 0, the
   record says CANCELLED with saved_step N, nothing is left on the hosts;
3. `resume --wait` continues from N to step 24 with the reference's final loss (<= 1e-6).

    python -m pytest tests/faults/test_graceful_stop.py -q -s     # prints N and the losses
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.helpers import (
    REAL_SETS,
    REAL_STEPS,
    Reference,
    assert_nothing_left,
    logged_step,
    orch,
    record,
    wait_for,
)
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]
STEPS = REAL_STEPS  # 60, room: under load the request may land ~16 steps after it was sent


def _ranks(job: dict) -> list[tuple[str, str, int]]:
    return [(n["name"], n["job_dir"], r) for n in job["nodes"]
            for r in range(n["rank_start"], n["rank_end"])]


def _steps(hosts: TestHosts, node: str, job_dir: str, rank: int) -> list[int]:
    res = hosts.ssh(node, f"ls {job_dir}/output/checkpoint/rank_{rank}")
    return sorted(int(name[:-5].rsplit("-", 1)[1]) for name in res.stdout.split()
                  if name.endswith(".ckpt"))


def _manifest_loss(hosts: TestHosts, job: dict, step: int) -> float:
    node = job["nodes"][0]
    res = hosts.ssh(node["name"], f"cat {node['job_dir']}/output/checkpoint/rank_0/"
                                  f"bloom_rank_0-{step}.json")
    assert res.returncode == 0, res.stderr
    return float(json.loads(res.stdout)["loss"])



def test_down_save_then_resume_matches_uninterrupted(
        testhosts: TestHosts, one_rank_each: Path, seed_json: Path, reference_run: Reference,
        state: Path) -> None:
    ref_loss = reference_run.loss  # SUCCEEDED (the fixture checks), its step-60 manifest
    orch(state, "up", "-i", str(one_rank_each), *REAL_SETS, "--set", f"data.path={seed_json}",
         "--set", "train.save_steps=1000")  # the stop's save is each rank's only checkpoint
    job = record(state)
    assert job["job_id"] != reference_run.job_id
    job_dir0 = job["nodes"][0]["job_dir"]
    wait_for(lambda: logged_step(testhosts, job_dir0) >= 4, timeout=300, interval=0.2)
    down = orch(state, "down", job["job_id"], "--save", "--yes", "--save-timeout", "120")
    job = record(state, job["job_id"])
    saved = job["saved_step"]
    assert job["status"] == "CANCELLED" and isinstance(saved, int), (job, down.stdout)
    assert job["message"] == f"stopped by down --save: step {saved} saved on every rank"
    assert 4 <= saved < STEPS
    per_rank = {r: _steps(testhosts, node, d, r) for node, d, r in _ranks(job)}
    assert per_rank == {r: [saved] for r in per_rank}, per_rank  # the same step everywhere
    for node, d, r in _ranks(job):  # exited 0 by themselves, not killed by the stop
        code = testhosts.ssh(node, f"cat {d}/ranks/{r}/exit_code").stdout.strip()
        assert code == "0", (node, r, code)
    assert_nothing_left(testhosts, job["job_id"])

    orch(state, "resume", job["job_id"], "--wait")
    job = record(state, job["job_id"])
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
    log0 = testhosts.ssh("th0", f"cat {job_dir0}/ranks/0/stdout.log").stdout
    assert f"resumed from step {saved} " in log0.split("== orchestrate attempt 2 ==")[1]
    loss = _manifest_loss(testhosts, job, STEPS)
    print(f"\ndown --save: every rank saved step {saved}; resumed to step {STEPS}: final loss "
          f"{loss!r} vs uninterrupted {ref_loss!r} (diff {abs(loss - ref_loss):.1e})")
    assert abs(loss - ref_loss) <= 1e-6
    assert_nothing_left(testhosts, job["job_id"])
