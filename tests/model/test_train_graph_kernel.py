"""train.graph_kernel (MindSpore's AKG fusion on CPU, opt-in): the same training with it on
and off ends at the same weights (float32 tolerance), its build output lands in the job's
output folder and not in the working directory (one small log excepted), and the rank log
says it is on; on a non-CPU target the key is ignored with a note.

    python -m pytest tests/model/test_train_graph_kernel.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.train import graph_kernel
from orchestrate_bloom.train.job import load_job

from tests.model.test_train import data_dir, env, losses, params_of, write_job

__all__ = ["data_dir"]  # the module fixture, shared with test_train
STEPS = 3


def train(folder: Path, data: Path, on: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """Train STEPS steps of a tiny job in `folder`, cwd a fresh folder beside it."""
    job = write_job(folder, data, steps=STEPS, save_steps=STEPS, graph_kernel=on)
    cwd = folder / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "orchestrate_bloom.train", "--job", str(job)],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, cwd


@pytest.mark.slow  # two tiny trainings, one with AKG's kernel builds: ~20 s
def test_graph_kernel_same_weights_output_in_job_folder(tmp_path: Path, data_dir: Path) -> None:
    off, off_cwd = train(tmp_path / "off", data_dir, on=False)
    on, on_cwd = train(tmp_path / "on", data_dir, on=True)
    assert "graph_kernel: on" not in off.stderr
    assert f"{graph_kernel.KEY}: on" in on.stderr and "OMP_WAIT_POLICY=PASSIVE" in on.stderr
    built = tmp_path / "on" / "output" / "graph_kernel" / "akg_kernel_meta"
    assert built.is_dir() and any(built.iterdir())  # AKG really built kernels, and here
    assert list(off_cwd.iterdir()) == []
    # all but one: libakg.so's polyhedral pass writes dsa_transfrom.log (<1 kB) by a fixed
    # relative name into the cwd of its compile workers; no variable moves it (graph_kernel.py)
    assert [p.name for p in on_cwd.iterdir()] in ([], [graph_kernel.CWD_LOG])
    assert losses(on.stdout).keys() == set(range(1, STEPS + 1))
    for step, loss in losses(off.stdout).items():
        assert abs(losses(on.stdout)[step] - loss) <= 2e-4, (step, loss)
    a = params_of(ck.ckpt_path(tmp_path / "off" / "output", 0, STEPS))
    b = params_of(ck.ckpt_path(tmp_path / "on" / "output", 0, STEPS))
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_graph_kernel_is_ignored_off_cpu(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, tmp_path, graph_kernel=True),
                   ["train.device_target=Ascend"])
    environ: dict[str, str] = {}
    graph_kernel.rank_env(["--job", str(job.path), "--set", "train.device_target=Ascend"],
                          environ)
    assert environ == {} and not graph_kernel.wanted(job)
    assert graph_kernel.enable(None, job) == ("train.graph_kernel: ignored with "
                                              "device_target=Ascend (CPU only)")
    environ = {"MS_COMPILER_CACHE_PATH": "/var/cache/akg"}  # a user's node-wide cache is kept
    graph_kernel.rank_env(["--job", str(job.path)], environ)
    assert environ == {"MS_COMPILER_CACHE_PATH": "/var/cache/akg", "OMP_WAIT_POLICY": "PASSIVE"}
