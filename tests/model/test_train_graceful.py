"""The trainer's graceful stop (orchestrate_bloom/train/graceful.py): save at the step boundary,
exit 0, resume to the same final loss; on two workers the all-reduce makes a rank that never
saw the request stop at the same step as the one that did.

    python -m pytest tests/model/test_train_graceful.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.train import graceful

from tests.model.test_train import (  # noqa: F401 - data_dir: the module's fixture
    assert_cluster_ok,
    data_dir,
    run,
    run_cluster,
    write_job,
)

STEPS = {"steps": 6, "save_steps": 100, "log_steps": 100, "warmup_steps": 0}


def final_loss(out: Path, step: int) -> float:
    """The full-precision global loss the trainer records in the step's manifest."""
    manifest = ck.read_manifest(out, 0, step)
    assert manifest is not None, f"no manifest for step {step} in {out}"
    return float(manifest["loss"])


@pytest.mark.slow
def test_stop_request_saves_the_step_and_resume_matches(
        tmp_path: Path, data_dir: Path) -> None:  # noqa: F811
    ref = write_job(tmp_path / "ref", data_dir, **STEPS)
    done = run(ref)
    assert done.returncode == 0, done.stderr[-2000:]

    job = write_job(tmp_path / "job", data_dir, **STEPS)
    graceful.request(job.parent)  # seen after the first step
    stopped = run(job)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    out = tmp_path / "job" / "output"
    assert ck.listed_steps(out, 0) == [1]
    assert "stop requested" in stopped.stderr and "saved step 1" in stopped.stderr
    assert stopped.stdout.startswith("step=1 ")  # the stop step is logged

    graceful.request_path(job.parent).unlink()  # what `launch.sh start resume` does
    resumed = run(job, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 1 " in resumed.stderr
    ours, reference = final_loss(out, 6), final_loss(tmp_path / "ref" / "output", 6)
    print(f"\ngraceful stop at 1, resume to 6: final loss {ours!r} vs uninterrupted "
          f"{reference!r} (diff {abs(ours - reference):.1e})")
    assert abs(ours - reference) <= 1e-6


@pytest.mark.slow
def test_ranks_agree_on_the_stop_step(tmp_path: Path, data_dir: Path) -> None:  # noqa: F811
    job = write_job(tmp_path / "dp", data_dir, **STEPS)
    spec = yaml.safe_load(job.read_text())
    spec["parallel"].update(data_parallel=2, micro_batch_size=4)
    spec["job"]["output_dir"] = str(tmp_path / "dp" / "output")
    job.write_text(yaml.safe_dump(spec))
    graceful.request(job.parent)
    # Rank 1 reads a copy of the job file in a folder without the request: it stops only
    # because the all-reduce tells it that rank 0 saw one.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(job, other / "job.yaml")
    results = run_cluster(job, per_rank_job={1: other / "job.yaml"})
    assert_cluster_ok(results)
    out = tmp_path / "dp" / "output"
    assert ck.listed_steps(out, 0) == ck.listed_steps(out, 1) == [1]
    assert "saved step 1" in results[2][2]  # rank 1's stderr
