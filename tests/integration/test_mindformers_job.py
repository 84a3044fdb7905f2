"""A real job from MindFormers' files (issue 15.1-15.3): a run config in MindFormers' layout
(the real run_bloom_560m.yaml cut down to tiny sizes, as users edit it), a dataset in
make_mindrecord.py's layout (a local folder, staged as is) and a starting checkpoint with
MindFormers' parameter names, on this machine (connection: local, 2 CPU ranks, as
inventories/local.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.model.test_mindformers_ckpt import mindformers_layout, save
from tests.model.test_mindformers_data import write_mindformers_dataset

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SEQ = 32


def mindformers_config(tmp_path: Path, data: Path, start: Path) -> Path:
    doc = yaml.safe_load((REPO / "tests/fixtures/mindformers/run_bloom_560m.yaml").read_text())
    doc["model"]["model_config"].update(seq_length=SEQ, vocab_size=1000, hidden_size=64,
                                        num_layers=2, num_heads=4, param_init_type="float32",
                                        compute_dtype="float32")
    doc["context"]["device_target"] = "CPU"
    doc["runner_config"]["batch_size"] = 2
    doc["lr_schedule"].update(learning_rate=1e-3, lr_end=1e-4, warmup_steps=1, total_steps=4)
    next(c for c in doc["callbacks"] if c["type"] == "CheckpointMointor")[
        "save_checkpoint_steps"] = 2
    doc["train_dataset"]["data_loader"]["dataset_dir"] = data.name  # local: staged as is
    doc["load_checkpoint"] = str(start)
    path = tmp_path / "run_bloom_tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def orch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_mindformers_config_dataset_and_checkpoint_train_in_a_real_job(tmp_path: Path) -> None:
    from orchestrate_bloom.config import load_preset

    data = tmp_path / "wikitext2"
    write_mindformers_dataset(data, rows=16, width=SEQ + 1)
    rng = np.random.default_rng(0)
    ours = {k: (0.02 * rng.standard_normal(s)).astype(np.float32)
            for k, s in load_preset("tiny").parameter_shapes().items()}
    start = save(mindformers_layout(ours, load_preset("tiny")), tmp_path / "mf_start.ckpt")
    config = mindformers_config(tmp_path, data, start)
    inv = tmp_path / "local.yaml"
    inv.write_text(f"defaults: {{connection: local, devices: 2, workdir: {tmp_path / 'run'}, "
                   f"python: {sys.executable}}}\nnodes:\n  - {{host: 127.0.0.1, name: local}}\n")
    plan = json.loads(orch(tmp_path, "plan", "-i", str(inv), "-c", str(config), "--json").stdout)
    assert (plan["parallel"]["data_parallel"], plan["model"]["seq_length"]) == (2, SEQ)
    up = orch(tmp_path, "up", "-i", str(inv), "-c", str(config), "--wait")
    assert "SUCCEEDED" in up.stdout, up.stdout + up.stderr
    assert "note: " in up.stderr and "runner_config.epochs=10" in up.stderr
    job_dir = next(p for p in (tmp_path / "run" / "jobs").iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    log = (job_dir / "ranks" / "0" / "stdout.log").read_text()
    assert f"from {start}" in log and "loaded" in log  # the MindFormers-named checkpoint
    steps = [line for line in log.splitlines() if line.startswith("step=")]
    assert steps and steps[-1].startswith("step=4 ")
    ckpts = sorted(p.name for p in (job_dir / "output" / "checkpoint" / "rank_1").glob("*.ckpt"))
    assert ckpts == ["bloom_rank_1-2.ckpt", "bloom_rank_1-4.ckpt"]
    staged = job_dir / "data" / "wikitext2"  # the folder as make_mindrecord.py left it
    assert sorted(p.name for p in staged.iterdir()) == ["dataset.mindrecord",
                                                         "dataset.mindrecord.db"]
