"""`python -m orchestrate_bloom.train` on CPU: real MindSpore processes, tiny Bloom, the seed tasks.

Single process (loss drops), refusal of MP/PP on CPU, resume after a kill with a truncated
newest checkpoint, and a 2-worker dynamic cluster (scheduler + workers on 127.0.0.1) against a
single process fed the same global batches.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.data.prepare import prepare
from orchestrate_bloom.train.shm_step import HOST_UPDATE_NOTE, TURNS_NOTE
from orchestrate_bloom.train.worker_exit import UNREGISTERED_NOTE

from orchestrator.job.render import cluster_retry_env
from tests.model.data_helpers import REPO, seed_records, tokenizer_file

LINE = re.compile(r"^step=(\d+) loss=(\d+\.\d{4}) lr=(\d\.\de[-+]\d\d) "
                  r"tokens_per_s=(\d+\.\d) elapsed_s=(\d+\.\d{3})$")
VOCAB = 1000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    src = root / "seed.json"
    src.write_text(json.dumps(seed_records()))
    prepare(src, root / "mr", seq_length=96, tokenizer_path=tokenizer_file(root), shards=2)
    return root / "mr"


def write_job(folder: Path, data: Path, **train: object) -> Path:
    """A tiny CPU job file like the orchestrator renders (only non-default values)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "job": {"id": folder.name},
        "model": {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4,
                  "seq_length": 96, "compute_dtype": "float32"},
        "parallel": {"micro_batch_size": 8, "optimizer_shard": False},
        "train": {"device_target": "CPU", "mode": "pretrain", "steps": 60, "lr": 3.0e-3,
                  "min_lr": 3.0e-4, "warmup_steps": 5, "weight_decay": 0.0, "log_steps": 1,
                  "save_steps": 20, **train},
        "data": {"path": str(data)},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    base.update(GLOG_v="3", PYTHONPATH=str(REPO))
    base.update(extra)  # may set GLOG_v too
    return base


def run(job: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrate_bloom.train", "--job", str(job),
                           *args],
                          cwd=REPO, env=env(**extra), capture_output=True, text=True,
                          timeout=timeout)


def losses(stdout: str) -> dict[int, float]:
    out = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def params_of(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if k.startswith("transformer.")}


def test_single_process_loss_drops(tmp_path: Path, data_dir: Path) -> None:
    job = write_job(tmp_path / "single", data_dir, keep_checkpoints=2)
    proc = run(job)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step=")]
    assert len(lines) == 60 and all(LINE.match(ln) for ln in lines), lines[:3]
    curve = losses(proc.stdout)
    assert curve[1] > 0.9 * math.log(VOCAB)  # starts near uniform
    assert np.mean([curve[s] for s in range(51, 61)]) < 0.5 * curve[1]  # and falls well below
    out = tmp_path / "single" / "output"
    assert ck.listed_steps(out, 0) == [40, 60]  # keep_checkpoints=2 pruned step 20
    manifest = ck.read_manifest(out, 0, 60)
    assert manifest is not None and manifest["samples_per_rank"] == 60 * 8
    assert ck.is_complete(out, 0, 60, manifest["layout"])

    # finetune from that single-device checkpoint: starts where pretraining ended, not at ln V
    tuned = run(write_job(tmp_path / "tune", data_dir, mode="finetune", steps=1,
                          load_checkpoint=str(ck.ckpt_path(out, 0, 60))))
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "loaded" in tuned.stderr
    assert losses(tuned.stdout)[1] < 0.5 * curve[1]


def test_model_parallel_on_cpu_is_refused(tmp_path: Path, data_dir: Path) -> None:
    job = write_job(tmp_path / "mp", data_dir)
    proc = run(job, "--set", "parallel.model_parallel=2")
    assert proc.returncode == 1
    assert "parallel.model_parallel=2" in proc.stderr and "only data parallel" in proc.stderr
    short = run(job, "--set", "train.seq_length=64")
    assert short.returncode == 1
    assert "holds samples of 97 token ids, model.seq_length=64 needs 65" in short.stderr
    bad = run(job, "--set", "train.stepz=3")
    assert bad.returncode == 1 and "unknown key 'train.stepz'" in bad.stderr
    assert not (tmp_path / "mp" / "output").exists()


def test_resume_after_kill_skips_truncated_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    # constant LR (warmup 0, lr == min_lr): the loss at step s does not depend on train.steps
    const = {"warmup_steps": 0, "lr": 2.0e-3, "min_lr": 2.0e-3, "save_steps": 10,
             "keep_checkpoints": 5}
    job = write_job(tmp_path / "job", data_dir, steps=1_000_000, **const)
    out = tmp_path / "job" / "output"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrate_bloom.train", "--job", str(job)],
                            cwd=REPO,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(ck.listed_steps(out, 0)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = ck.listed_steps(out, 0)
    assert len(saved) >= 3, "the run never wrote 3 checkpoints"
    victim = ck.ckpt_path(out, 0, saved[-1])  # a crash mid-save: the newest file is cut short
    victim.chmod(0o600)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    start, total = saved[-2], saved[-1] + 10

    ref = run(write_job(tmp_path / "ref", data_dir, steps=total, **const))
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = losses(ref.stdout)
    resumed = run(job, "--resume", "--set", f"train.steps={total}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {start} " in resumed.stderr
    curve = losses(resumed.stdout)
    assert sorted(curve) == list(range(start + 1, total + 1))
    for step, loss in curve.items():  # the curve continues exactly where it stopped
        assert loss == pytest.approx(reference[step], abs=2e-4), step
    final = params_of(ck.ckpt_path(out, 0, total))
    ref_final = params_of(ck.ckpt_path(tmp_path / "ref" / "output", 0, total))
    for name, value in ref_final.items():
        np.testing.assert_allclose(final[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cluster(job: Path, *args: str, per_rank_job: dict[int, Path] | None = None,
                core: int | None = None, **extra: str) -> list[tuple[int, str, str]]:
    """Scheduler + 2 workers on 127.0.0.1 (a free port); (exit code, stdout, stderr) each.
    `extra`: more environment for every process. `core`: every process may use only that
    core, and each gets its place on the node (ORCHESTRATE_LOCAL_RANK, as launch.sh sets it):
    both workers share the core (cpu_share), as 8 ranks on 2 cores do.

    `per_rank_job` gives a worker its own job file (default: `job` for every process).
    A cluster not done within CLUSTER_TIMEOUT_S is not an exception that loses its output:
    every process still running gets SIGABRT (PYTHONFAULTHANDLER prints every thread's Python
    stack to its stderr), then SIGKILL, and the result carries that stderr and exit code -6/-9.
    """
    cluster = {"MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(free_port()),
               "MS_WORKER_NUM": "2", **cluster_retry_env(2),  # the heartbeat launch.sh sets
               "PYTHONFAULTHANDLER": "1"}  # a crash prints the Python stack of every thread
    jobs = [job] + [(per_rank_job or {}).get(n, job) for n in (0, 1)]
    sched = {"MS_ROLE": "MS_SCHED", "GLOG_v": "2"}  # its WARNINGs: "Node N has unregistered"
    roles = [sched] + [{"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(n)} for n in (0, 1)]
    if core is not None:
        for place, role in zip(("sched", "0", "1"), roles, strict=True):
            role["ORCHESTRATE_LOCAL_RANK"] = place
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrate_bloom.train", "--job",
                               str(path), *args], cwd=REPO, env=env(**role, **cluster, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=None if core is None else
                              lambda: os.sched_setaffinity(0, {core}))
             for role, path in zip(roles, jobs, strict=True)]
    deadline = time.monotonic() + CLUSTER_TIMEOUT_S
    outputs: list[tuple[str, str]] = []
    try:
        for p in procs:  # the scheduler ends last: one deadline for the whole cluster
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for p in procs[len(outputs):]:
            if p.poll() is None:
                p.send_signal(signal.SIGABRT)  # faulthandler: the stacks of a hung process
        outputs += [_output_after_abort(p) for p in procs[len(outputs):]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


CLUSTER_TIMEOUT_S = 300


def _output_after_abort(p: subprocess.Popen[str]) -> tuple[str, str]:
    """What an aborted process printed; SIGKILL if it has not ended 20 s after SIGABRT."""
    try:
        return p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


def exit_problems(results: list[tuple[int, str, str]]) -> list[str]:
    """What is wrong with how a cluster run ended (run_cluster's results; [] when nothing): any
    exit code not 0, a worker that did not take worker_exit's explicit unregistration (its
    UNREGISTERED_NOTE), a scheduler that did not log "has unregistered" once per worker or
    reported a worker "is timed out"."""
    problems = [f"process {i} (0: scheduler) exited {code}"
                for i, (code, _, _) in enumerate(results) if code != 0]
    problems += [f"worker {i - 1} did not print {UNREGISTERED_NOTE!r}"
                 for i, (_, _, err) in enumerate(results) if i and UNREGISTERED_NOTE not in err]
    sched = results[0][2]
    if sched.count(" has unregistered") != len(results) - 1 or " is timed out" in sched:
        problems.append(f"scheduler: {sched.count(' has unregistered')} 'has unregistered', "
                        f"{sched.count(' is timed out')} 'is timed out'")
    return problems


def assert_cluster_ok(results: list[tuple[int, str, str]]) -> None:
    """exit_problems finds nothing; else print each failing process's stderr whole.

    (A worker once died with SIGSEGV in CI and the 1500-character tail pytest showed did not
    say where; the captured stdout of a failed test is shown in full.)
    """
    problems = exit_problems(results)
    if problems:
        for i, (code, _out, err) in enumerate(results):
            print(f"==== process {i} (0: scheduler) exited {code}; stderr:\n{err[-20000:]}")
    assert problems == []


@pytest.mark.slow
def test_two_worker_cluster_matches_single_process(tmp_path: Path, data_dir: Path) -> None:
    steps = {"steps": 12, "save_steps": 6, "log_steps": 4}
    single = run(write_job(tmp_path / "single", data_dir, **steps))  # global batch 8
    assert single.returncode == 0, single.stderr[-2000:]

    job = write_job(tmp_path / "dp", data_dir, **steps)
    spec = yaml.safe_load(job.read_text())
    spec["parallel"].update(data_parallel=2, micro_batch_size=4)  # 2 ranks x 4 = the same 8
    job.write_text(yaml.safe_dump(spec))
    # both ranks on this node, as launch.sh says: the gradient mean goes through shared memory;
    # both on one core, as 8 ranks on 2 cores: they take turns (shm_reduce.ShmMean.turn)
    results = run_cluster(job, ORCHESTRATE_LOCAL_RANKS="2", core=min(os.sched_getaffinity(0)))
    assert_cluster_ok(results)
    assert "through shared memory" in results[1][2]
    # shm_step._HostAdamW, not graph 2, on both ranks (each updates its half of the
    # parameters): checked against ref below
    assert all(HOST_UPDATE_NOTE in r[2] and TURNS_NOTE in r[2] for r in results[1:])
    assert sorted(losses(results[1][1])) == [4, 8, 12]  # rank 0 logs
    assert losses(results[2][1]) == {}  # rank 1 does not
    for step, loss in losses(results[1][1]).items():  # the global mean, not rank 0's 4 samples
        assert abs(loss - losses(single.stdout)[step]) < 2e-3, (step, loss)

    out = tmp_path / "dp" / "output"
    rank0, rank1 = (params_of(ck.ckpt_path(out, r, 12)) for r in (0, 1))
    ref = params_of(ck.ckpt_path(tmp_path / "single" / "output", 0, 12))
    assert rank0.keys() == rank1.keys() == ref.keys()
    for name in ref:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    # fp32 tolerance: the gradients agree to ~1e-7 relative; Adam divides by sqrt(v), which
    # magnifies that noise on near-zero gradients (biases) to ~1e-5 after 12 steps of lr 3e-3.
    for name in ref:
        np.testing.assert_allclose(rank0[name], ref[name], rtol=1e-4, atol=1e-4, err_msg=name)
    flat0 = np.concatenate([rank0[n].ravel() for n in ref])
    flat_ref = np.concatenate([ref[n].ravel() for n in ref])
    assert np.linalg.norm(flat0 - flat_ref) < 1e-5 * np.linalg.norm(flat_ref)
    # training really changed the weights the ranks agree on: steps 7..12 moved them (the
    # single run's own step-6 checkpoint, not one more 1-step run to read the seeded init)
    mid = params_of(ck.ckpt_path(tmp_path / "single" / "output", 0, 6))
    moved = max(float(np.abs(ref[n] - mid[n]).max()) for n in ref)
    assert moved > 1e-3

    # step 12 is incomplete on rank 1 only: both ranks must agree on step 6
    ck.manifest_path(out, 1, 12).unlink()
    # on one node too, but switched off: MindSpore's AllReduce
    again = run_cluster(job, "--resume", "--set", "train.steps=14",
                        ORCHESTRATE_LOCAL_RANKS="2", ORCHESTRATE_SHM_REDUCE="0")
    assert_cluster_ok(again)
    assert "through shared memory" not in again[1][2]
    for _, _, err in again[1:]:
        assert "resumed from step 6 " in err
    assert sorted(losses(again[1][1])) == [8, 12, 14]
