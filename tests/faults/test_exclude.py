"""`resume --exclude-node`: relaunch a data-parallel job without a node that keeps failing
(issue #9, gap 4), on th0 + th1.

1. trivial ranks (fast): th1's ranks always fail; the relaunch (by hand, or by the restart
   loop with --exclude-after 2) runs on th0 alone with DP and the global batch stated, ranks
   renumbered, and nothing of the job left on either host;
2. the real trainer (slow): th1's rank killed at step ~12 of 50 (rank 0's log read over ssh
   every 0.2 s, so well before the end even on a loaded machine); the job resumes on th0 alone
   from the newest checkpoint complete on every remaining rank (10 or 20) with the global batch
   kept, and continues from there to step 50 (the numbers are printed with -s).

    python -m pytest tests/faults/test_exclude.py -s
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.faults.helpers import (
    assert_nothing_left,
    assert_record_matches_nodes,
    latest_status,
    logged_step,
    no_traceback,
    orch,
    orch_bg,
    rank_pid,
    record,
    records,
    status_json,
    wait_for,
)
from tests.faults.test_faults import UP
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# th1's ranks fail at once in every attempt; th0's wait to be stopped, unless resumed on th0
# alone (then they print the layout they were given and finish).
TH1_FAILS = ('if [ "$ORCHESTRATE_NODE" = th1 ]; then exit 3; fi; '
             'if [ -n "${ORCHESTRATE_RESUME:-}" ]; then echo "step=1 loss=1.0 '
             'rank=$MS_NODE_ID world=$MS_WORKER_NUM"; else trap "exit 143" TERM; '
             'sleep 60 & wait; fi')


def test_exclude_failing_node_relaunches_on_the_rest(testhosts: TestHosts, two_hosts: Path,
                                                     state: Path) -> None:
    first = orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", TH1_FAILS,
                 check=False)
    job_id = record(state)["job_id"]
    assert first.returncode == 1 and "on th1 exited 3" in record(state, job_id)["message"]
    plain = orch(state, "resume", job_id, "--wait", check=False)  # th1 fails again
    assert plain.returncode == 1 and record(state, job_id)["attempts"] == 2
    res = orch(state, "resume", job_id, "--exclude-node", "th1", "--wait", check=False)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "without th1: 4 -> 2 ranks on th0; data_parallel 4 -> 2" in out, out
    assert "global batch kept at 32 samples per step: parallel.micro_batch_num 1 -> 2" in out
    assert "checkpoint: none complete on every remaining rank" in out
    job = record(state, job_id)
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 3 and job["world_size"] == 2
    assert [n["name"] for n in job["nodes"]] == ["th0"] and job["excluded"] == ["th1"]
    assert "parallel.micro_batch_num=2" in job["overrides"]
    logs = orch(state, "logs", job_id).stdout
    assert "[th0/0] step=1 loss=1.0 rank=0 world=2" in logs
    assert "[th0/1] step=1 loss=1.0 rank=1 world=2" in logs
    job_yaml = testhosts.ssh("th0", f"cat {job['nodes'][0]['job_dir']}/job.yaml").stdout
    parallel = yaml.safe_load(job_yaml)["parallel"]
    assert parallel["micro_batch_num"] == 2 and parallel["data_parallel"] == 2
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)
    # `down` still knows the job; the excluded node has nothing of it.
    orch(state, "down", job_id, "--yes")
    assert_nothing_left(testhosts, job_id)


def test_restart_loop_leaves_out_a_node_that_failed_twice(testhosts: TestHosts,
                                                          two_hosts: Path, state: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--max-restarts", "3",
              "--exclude-after", "2", "--entrypoint", TH1_FAILS, check=False)
    no_traceback(up)
    job = record(state)
    assert up.returncode == 0 and job["status"] == "SUCCEEDED", up.stdout + up.stderr
    assert [(h["status"], h["node"]) for h in job["history"]] == [
        ("FAILED", "th1"), ("FAILED", "th1"), ("SUCCEEDED", None)]
    assert "th1 failed 2 attempt(s) in a row: leaving it out" in up.stdout
    assert "without th1: 4 -> 2 ranks on th0" in up.stdout
    assert job["excluded"] == ["th1"] and job["world_size"] == 2 and job["attempts"] == 3
    assert "[th0/1] step=1 loss=1.0 rank=1 world=2" in orch(state, "logs", job["job_id"]).stdout
    assert_nothing_left(testhosts, job["job_id"])
    assert_record_matches_nodes(state, job["job_id"])


def test_exclude_refuses_what_cannot_fit(testhosts: TestHosts, two_hosts: Path,
                                         state: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(two_hosts.read_text())
    doc["nodes"][0]["devices"] = 1  # th0 x 1 + th1 x 2: DP 3 -> 2 without th0
    inv = tmp_path / "three.yaml"
    inv.write_text(yaml.safe_dump(doc))
    orch(state, "up", "-i", str(inv), *UP, "--wait", "--entrypoint", TH1_FAILS,
         "--set", "parallel.micro_batch_size=3", check=False)
    job_id = record(state)["job_id"]
    both = orch(state, "resume", job_id, "--exclude-node", "th0", "--exclude-node", "th1",
                check=False)
    assert both.returncode == 1 and "leaves no node" in both.stderr
    batch = orch(state, "resume", job_id, "--exclude-node", "th0", check=False)
    no_traceback(batch)
    assert batch.returncode == 1 and len(batch.stderr.strip().splitlines()) == 1
    assert "global batch of 9 samples" in batch.stderr and "--global-batch scale" in batch.stderr
    assert record(state, job_id)["attempts"] == 1  # nothing was started
    assert_nothing_left(testhosts, job_id)


STEPS = 50
SETS = ("--set", f"train.steps={STEPS}", "--set", "train.save_steps=10",
        "--set", "train.log_steps=1")


@pytest.mark.slow
def test_real_trainer_resumes_without_the_failed_node(testhosts: TestHosts, one_rank_each: Path,
                                                      state: Path, tmp_path: Path) -> None:
    from tests.model.data_helpers import seed_records

    data = tmp_path / "seed.json"
    data.write_text(json.dumps(seed_records()))
    common = ("-i", str(one_rank_each), "-c", "tiny", "--no-check", "--stop-grace", "2", *SETS,
              "--set", f"data.path={data}")
    waiter = orch_bg(state, "up", *common, "--wait")
    try:
        wait_for(lambda: len(records(state)) == 1 and latest_status(state) == "RUNNING",
                 timeout=120)
        job_id = record(state)["job_id"]
        job_dir0 = record(state)["nodes"][0]["job_dir"]
        wait_for(lambda: logged_step(testhosts, job_dir0) >= 12, timeout=300, interval=0.2,
                 what="step 12")
        node, pid = rank_pid(state, "1")
        assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
        waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert record(state, job_id)["status"] == "FAILED"
    t0 = time.monotonic()
    res = orch(state, "resume", job_id, "--exclude-node", "th1", "--wait", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "data_parallel 2 -> 1" in res.stdout
    assert "global batch kept at 16 samples per step: parallel.micro_batch_num 1 -> 2" \
        in res.stdout
    m = re.search(r"checkpoint: step (\d+) \(complete on every remaining rank\)", res.stdout)
    assert m, res.stdout[:600]
    step = int(m.group(1))
    assert 10 <= step < STEPS and step % 10 == 0  # a save before the kill, not the end
    log = orch(state, "logs", job_id, "--rank", "0", "--tail", "400").stdout
    current = log.split("== orchestrate attempt 2 ==")[-1]
    assert f"resumed from step {step}" in current, current[-2000:]
    final = status_json(state, job_id)["nodes"][0]["ranks"][0]
    assert final["step"] == STEPS
    print(f"\nexclude-node: attempt 2 on th0 alone resumed from step {step}, "
          f"{time.monotonic() - t0:.0f} s; final loss {final['loss']:.4f}")
    steps = [int(x) for x in re.findall(r"^\[th0/0\] step=(\d+) ", current, re.M)]
    assert steps and steps[0] == step + 1 and steps[-1] == STEPS  # continued, not restarted
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)
