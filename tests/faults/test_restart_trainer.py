"""Auto-restart and checkpoint integrity with the real trainer (tiny Bloom, MindSpore on CPU).

th0 and th1 x 1 rank, 60 steps, a checkpoint every 10 steps (the last 2 kept). Slow (~3 min):

1. an uninterrupted run: the reference final loss (the session's `reference_run`, shared
   with test_graceful_stop: the same job but for its checkpoint cadence);
2. the same job with `--max-restarts 2`, rank 1 SIGKILLed at step ~32: the job ends SUCCEEDED
   after 2 attempts, the second resumed from step 30 (the newest step complete on every rank),
   and its final loss matches the reference;
3. (d) the newest checkpoint truncated on one rank before a resume: the ranks agree on the
   previous step, never on the truncated one.

The numbers are printed (run with -s) for the report: attempts, resumed step, final losses.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.helpers import (
    REAL_SETS,
    REAL_STEPS,
    Reference,
    assert_nothing_left,
    assert_record_matches_nodes,
    logged_step,
    orch,
    orch_bg,
    rank_pid,
    record,
    records,
    status_json,
    wait_for,
)
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def _final_loss(state: Path, job_id: str) -> float:
    rank0 = status_json(state, job_id)["nodes"][0]["ranks"][0]
    assert rank0["rank"] == 0 and rank0["step"] == REAL_STEPS, rank0
    return float(rank0["loss"])



def test_killed_rank_restarts_from_last_complete_checkpoint(
        testhosts: TestHosts, one_rank_each: Path, seed_json: Path, reference_run: Reference,
        state: Path) -> None:
    common = ("-i", str(one_rank_each), "--stop-grace", "2", *REAL_SETS,
              "--set", "train.save_steps=10", "--set", f"data.path={seed_json}")
    # 1. Reference: uninterrupted (the session's).
    ref_id, ref_loss = reference_run.job_id, reference_run.loss

    # 2. Same job, rank 1 killed at step ~32, restarts allowed.
    waiter = orch_bg(state, "up", *common, "--wait", "--max-restarts", "2")
    try:
        wait_for(lambda: (recs := records(state)) and recs[-1]["job_id"] != ref_id
                 and recs[-1]["status"] == "RUNNING", timeout=120)
        job = record(state)
        job_dir = job["nodes"][0]["job_dir"]
        wait_for(lambda: logged_step(testhosts, job_dir) >= 32, timeout=180, interval=0.2)
        killed_at = logged_step(testhosts, job_dir)
        node, pid = rank_pid(state, "1")
        assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
        out, err = waiter.communicate(timeout=400)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, out + err
    job = record(state, job["job_id"])
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
    first, second = job["history"]
    assert first["status"] == "FAILED" and first["cause"] == "rank 1 on th1 exited 137"
    assert second["status"] == "SUCCEEDED" and second["resumed_step"] == 30, second
    loss = _final_loss(state, job["job_id"])
    print(f"\nrestart: killed rank 1 at step {killed_at}; attempts {job['attempts']}; "
          f"resumed from step {second['resumed_step']}; final loss {loss:.4f} vs "
          f"uninterrupted {ref_loss:.4f} (diff {abs(loss - ref_loss):.2e}); attempt times "
          f"{first['ended_at'] - first['started_at']:.0f} s + "
          f"{second['ended_at'] - second['started_at']:.0f} s")
    assert abs(loss - ref_loss) <= 0.02 * ref_loss + 1e-3
    assert_nothing_left(testhosts, job["job_id"])
    assert_record_matches_nodes(state, job["job_id"])

    # 3. (d) Truncate rank 1's newest checkpoint (step 60), resume by hand on the nodes:
    # the ranks must agree on step 50, the newest step complete on every rank.
    dirs = {n["name"]: n["job_dir"] for n in job["nodes"]}
    ckpt = f"{dirs['th1']}/output/checkpoint/rank_1/bloom_rank_1-60.ckpt"
    trunc = testhosts.ssh("th1", f"chmod u+w {ckpt} && truncate -s 1000 {ckpt} && stat -c %s "
                                 f"{ckpt}")
    assert trunc.stdout.strip() == "1000", trunc.stderr
    for name, d in dirs.items():
        res = testhosts.ssh(name, f"bash {d}/launch.sh start resume")
        assert res.returncode == 0, res.stderr
    wait_for(lambda: all(testhosts.ssh(n, f"test -f {d}/node_done && echo y").stdout.strip()
                         == "y" for n, d in dirs.items()), timeout=180, interval=1.0)
    log0 = testhosts.ssh("th0", f"cat {dirs['th0']}/ranks/0/stdout.log").stdout
    log0 = log0.split("== orchestrate attempt 3 ==")[1]  # this attempt's lines
    assert "resumed from step 50" in log0 and "resumed from step 60" not in log0
    assert "step=51 " in log0 and "step=60 " in log0
    for name, d in dirs.items():
        assert testhosts.ssh(name, f"cat {d}/node_done").stdout.strip() == "ok"
    time.sleep(0.5)
    assert_nothing_left(testhosts, job["job_id"])

    # 4. (d) A corrupted shard (same size, flipped bytes) of rank 0's newest step: collect-ckpt
    # must take step 50, the newest step still complete on every rank, and say nothing of 60.
    ckpt0 = f"{dirs['th0']}/output/checkpoint/rank_0/bloom_rank_0-60.ckpt"
    flip = testhosts.ssh("th0", f"chmod u+w {ckpt0} && printf 'XXXXXXXX' | dd of={ckpt0} "
                                "bs=1 seek=200 conv=notrunc status=none && echo flipped")
    assert "flipped" in flip.stdout, flip.stderr
    dest = state.parent / "collected"
    res = orch(state, "collect-ckpt", job["job_id"], "-o", str(dest), timeout=600)
    merged = sorted(p.name for p in (dest / "merged").glob("*.ckpt"))
    assert merged == ["bloom_tiny_step50.ckpt"], (merged, res.stdout, res.stderr)
