"""collect-ckpt and `logs --fetch` against hostile or interrupted nodes (issue #9, gap 3).

A real job (th0, th1 x 2 ranks, trivial rank command) leaves its job folders; the test then
places data-parallel checkpoints with manifests there, as the trainer leaves them, and
plants what a hostile node could: symlinks to /etc/passwd in a rank folder, a symlinked
strategy file and rank log, names with `..`. Each case asserts (a) a clear message,
(b) nothing of the job left running, (c) the record untouched, (d) only complete, verified
checkpoints taken, and that nothing is written outside the destination folder.

    python -m pytest tests/faults/test_collect_faults.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults.helpers import (
    assert_nothing_left,
    no_traceback,
    orch,
    orch_bg,
    record,
    wait_for,
)
from tests.faults.test_faults import UP
from tests.integration.conftest import TestHosts, set_tag

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SMALL = {"vocab_size": 64, "hidden_size": 16, "n_layer": 2, "n_head": 2, "seq_length": 8}
# ~26 MiB per checkpoint with Adam state: a few seconds over a 16 Mbit/s link.
BIG = {"vocab_size": 4096, "hidden_size": 256, "n_layer": 2, "n_head": 4, "seq_length": 8}
DP = {"data_parallel": 4, "model_parallel": 1, "pipeline_stage": 1}


def _host_job_dir(hosts: TestHosts, job: dict, node: int) -> Path:
    """The job folder of node `node` as this machine sees it (the host's private workdir)."""
    remote = Path(job["nodes"][node]["job_dir"])
    return hosts.state / "hosts" / f"th{node}" / "work" / remote.relative_to(hosts.state / "work")


def _manifest(path: Path, rank: int, step: int, model: dict, data: bytes | None = None) -> None:
    data = path.read_bytes() if data is None else data
    doc = {"step": step, "rank": rank, "file": path.name, "size": len(data),
           "sha256": hashlib.sha256(data).hexdigest(), "layout": DP, "model": model,
           "job_id": "j"}
    path.with_suffix(".json").write_text(json.dumps(doc))


def _place_dp(hosts: TestHosts, job: dict, model: dict, steps: tuple[int, ...]) -> None:
    """Every rank holds the same replica (DP=4) for each step, with manifest and strategy."""
    import mindspore as ms
    from orchestrate_bloom.ckpt.tools import model_shapes

    rng = np.random.default_rng(7)
    full = {n: rng.standard_normal(s).astype(np.float32) for n, s in model_shapes(model).items()}
    src = hosts.state / f"ckpt-src-{job['job_id']}"
    src.mkdir(exist_ok=True)
    for step in steps:
        items = [{"name": n, "data": ms.Tensor(a + step)} for n, a in full.items()]
        items += [{"name": f"adam_m.{n}", "data": ms.Tensor(a)} for n, a in full.items()]
        items.append({"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))})
        ms.save_checkpoint(items, str(src / f"{step}.ckpt"))
    for node in (0, 1):
        out = _host_job_dir(hosts, job, node) / "output"
        for rank in range(2 * node, 2 * node + 2):
            folder = out / "checkpoint" / f"rank_{rank}"
            folder.mkdir(parents=True, exist_ok=True)
            for step in steps:
                path = folder / f"bloom_rank_{rank}-{step}.ckpt"
                shutil.copy(src / f"{step}.ckpt", path)
                _manifest(path, rank, step, model)
            (out / "strategy").mkdir(exist_ok=True)
            (out / "strategy" / f"ckpt_strategy_rank_{rank}.ckpt").write_bytes(
                os.urandom(2048))
    shutil.rmtree(src)


def _ended_job(state: Path, two_hosts: Path) -> dict:
    orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint",
         'echo "step=1 loss=1.0"')
    job = record(state)
    assert job["status"] == "SUCCEEDED"
    return job


def _stray(root: Path, allowed: tuple[Path, ...]) -> list[str]:
    """Symlinks anywhere under `root`, and files under it outside the `allowed` folders."""
    return [str(p) for p in root.rglob("*") if p.is_symlink() or (
        p.is_file() and p.name != "sentinel" and not any(a in p.parents for a in allowed))]


def test_symlinks_and_dotdot_in_remote_listings_stay_inside_dest(
        testhosts: TestHosts, two_hosts: Path, state: Path, tmp_path: Path) -> None:
    job = _ended_job(state, two_hosts)
    _place_dp(testhosts, job, SMALL, (10, 20))
    th0 = _host_job_dir(testhosts, job, 0)
    rank0 = th0 / "output" / "checkpoint" / "rank_0"
    passwd = Path("/etc/passwd").read_bytes()
    # Step 30 on every rank, but rank 0's file is a symlink to /etc/passwd whose manifest
    # matches the target: it must never be taken as a checkpoint (d).
    for rank in range(4):
        folder = _host_job_dir(testhosts, job, rank // 2) / "output" / "checkpoint" / \
            f"rank_{rank}"
        path = folder / f"bloom_rank_{rank}-30.ckpt"
        if rank == 0:
            path.symlink_to("/etc/passwd")
            _manifest(path, rank, 30, SMALL, passwd)
        else:
            shutil.copy(folder / f"bloom_rank_{rank}-20.ckpt", path)
            _manifest(path, rank, 30, SMALL)
    (rank0 / "..bloom_rank_0-40.ckpt").write_bytes(b"dots")  # names with `..`
    (rank0 / "bloom_rank_0-..-40.ckpt").write_bytes(b"dots")
    (rank0 / "etc").symlink_to("/etc")
    strategy = th0 / "output" / "strategy" / "ckpt_strategy_rank_1.ckpt"
    strategy.unlink()
    strategy.symlink_to("/etc/passwd")
    log = th0 / "ranks" / "0" / "stdout.log"
    log.unlink()
    log.symlink_to("/etc/passwd")
    (th0 / "ranks" / "1" / "stdout.log").unlink()
    (th0 / "ranks" / "1" / "stdout.log").symlink_to("../../../../../../../../tmp")

    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "sentinel").write_text("x")
    dest = outer / "dest"
    res = orch(state, "collect-ckpt", job["job_id"], "-o", str(dest), check=False)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bloom_tiny_step20.ckpt" in res.stdout  # step 30 refused on rank 0 (symlink)
    # Asked for step 30, collect names the rank, the node and the refused symlink (a).
    step30 = orch(state, "collect-ckpt", job["job_id"], "-o", str(dest),
                  "--step", "30", check=False)
    no_traceback(step30)
    assert step30.returncode == 1
    assert "rank 0" in step30.stderr and "symlink" in step30.stderr, step30.stderr
    fetched = [p for p in dest.rglob("*") if p.is_file()]
    assert fetched and all(p.read_bytes() != passwd for p in fetched)
    assert not (dest / "strategy" / "ckpt_strategy_rank_1.ckpt").exists()

    logs_dest = outer / "logs"
    fetch = orch(state, "logs", job["job_id"], "--fetch", str(logs_dest), check=False)
    no_traceback(fetch)
    assert fetch.returncode == 0, fetch.stdout + fetch.stderr
    assert "symlink" in fetch.stderr and "th0" in fetch.stderr, fetch.stderr
    assert not (logs_dest / "th0" / "rank_0.log").exists()  # a symlinked log is not read
    assert (logs_dest / "th1" / "rank_2.log").read_text().strip().endswith("step=1 loss=1.0")
    assert _stray(outer, (dest, logs_dest)) == []
    assert sorted(p.name for p in outer.iterdir()) == ["dest", "logs", "sentinel"]
    assert_nothing_left(testhosts, job["job_id"])
    assert record(state, job["job_id"])["status"] == "SUCCEEDED"


def _throttle(hosts: TestHosts, node: int, on: bool) -> None:
    """Limit what the host sends (its eth0 egress) to 16 Mbit/s, or lift the limit."""
    ns = f"oth-{set_tag(hosts.state)}-{node}"
    cmd = ["ip", "netns", "exec", ns, "tc", "qdisc"]
    if on:
        subprocess.run([*cmd, "replace", "dev", "eth0", "root", "tbf", "rate", "16mbit",
                        "burst", "64kb", "latency", "400ms"], check=True, timeout=30)
    else:
        subprocess.run([*cmd, "del", "dev", "eth0", "root"], check=False, timeout=30,
                       capture_output=True)


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs `tc` (iproute2) to slow the link")
def test_sigint_during_collect_then_rerun_resumes_without_refetching(
        netns_hosts: TestHosts, two_hosts: Path, state: Path, tmp_path: Path) -> None:
    job = _ended_job(state, two_hosts)
    _place_dp(netns_hosts, job, BIG, (10,))
    dest = tmp_path / "dest"
    _throttle(netns_hosts, 0, True)
    try:
        proc = orch_bg(state, "collect-ckpt", job["job_id"], "-o", str(dest),
                       "--no-load-check")
        try:
            part = dest / "rank_0" / "bloom_rank_0-10.ckpt.part"
            wait_for(lambda: part.is_file() and part.stat().st_size > (1 << 20), timeout=60,
                     interval=0.05, what="rank 0 half downloaded")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        _throttle(netns_hosts, 0, False)
    assert "Traceback" not in out + err, err
    assert proc.returncode != 0 and "Aborted" in err, (proc.returncode, out + err)
    assert part.is_file() and 0 < part.stat().st_size  # kept to resume
    assert not (dest / "merged").exists()  # nothing merged from a partial download (d)
    verified = json.loads((dest / ".verified.json").read_text())
    assert sorted(verified) == [f"strategy/ckpt_strategy_rank_{r}.ckpt" for r in range(4)]
    before = {k: v["mtime_ns"] for k, v in verified.items()}
    time.sleep(0.05)
    again = orch(state, "collect-ckpt", job["job_id"], "-o", str(dest),
                 "--no-load-check")
    text = again.stdout + again.stderr
    assert "rank 0: resumed" in text, text
    after = json.loads((dest / ".verified.json").read_text())
    assert all(after[k]["mtime_ns"] == before[k] for k in before)  # not fetched again
    assert all((dest / k).stat().st_mtime_ns == before[k] for k in before)
    assert "rank_0/bloom_rank_0-10.ckpt" in after  # the resumed file verified
    assert not part.exists() and (dest / "rank_0" / "bloom_rank_0-10.ckpt").is_file()
    assert again.stdout.strip().endswith("bloom_tiny_step10.ckpt")
    assert_nothing_left(netns_hosts, job["job_id"])
