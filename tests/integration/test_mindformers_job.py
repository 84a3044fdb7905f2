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
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration.conftest import module_host_set
from tests.model.test_mindformers_ckpt import mindformers_layout, save
from tests.model.test_mindformers_data import write_mindformers_dataset

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SEQ = 32
STATE = Path(tempfile.gettempdir()) / f"orchestrate-testhosts-mfdata-{os.getpid()}"


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


@pytest.fixture(scope="module")
def host() -> Iterator[Path]:
    """One netns test host (2 CPU ranks): its workdir STATE/work is its own (bind-mounted from
    STATE/hosts/th0/work), so a folder there exists on the node only."""
    yield from module_host_set(STATE, 1, devices=2)


def mindformers_start(tmp_path: Path) -> Path:
    """A starting checkpoint with MindFormers' parameter names (tiny sizes)."""
    from orchestrate_bloom.config import load_preset

    rng = np.random.default_rng(0)
    ours = {k: (0.02 * rng.standard_normal(s)).astype(np.float32)
            for k, s in load_preset("tiny").parameter_shapes().items()}
    return save(mindformers_layout(ours, load_preset("tiny")), tmp_path / "mf_start.ckpt")


@pytest.mark.slow
def test_mindformers_config_dataset_and_checkpoint_train_in_a_real_job(tmp_path: Path) -> None:
    data = tmp_path / "wikitext2"
    write_mindformers_dataset(data, rows=16, width=SEQ + 1)
    start = mindformers_start(tmp_path)
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


@pytest.mark.slow
def test_a_mindformers_dataset_only_on_the_node(host: Path, tmp_path: Path) -> None:
    """`--set data.path=DIR` with DIR only on the node (issue 15.3): a make_mindrecord.py
    folder of the right row length trains there, unstaged; one of another row length fails,
    and the trainer's reason, naming both lengths, is the record's failure."""
    on_node = STATE / "work" / "mf-data"  # the node's path
    backing = STATE / "hosts" / "th0" / "work" / "mf-data"  # the same folder, seen from here
    write_mindformers_dataset(backing / "right", rows=16, width=SEQ + 1)
    write_mindformers_dataset(backing / "wrong", rows=16, width=SEQ + 2)
    assert not (on_node / "right").exists()  # not on this machine
    config = mindformers_config(tmp_path, tmp_path / "none", mindformers_start(tmp_path))
    state = tmp_path / "state"

    def up(folder: str) -> tuple[subprocess.CompletedProcess[str], dict]:
        proc = orch(tmp_path, "up", "-i", str(host), "-c", str(config), "--state-dir",
                    str(state), "--set", f"data.path={on_node / folder}", "--wait")
        newest = max(state.glob("jobs/*.json"), key=lambda p: p.stat().st_mtime)
        return proc, json.loads(newest.read_text())

    wrong, record = up("wrong")
    assert wrong.returncode != 0 and record["status"] == "FAILED", wrong.stdout + wrong.stderr
    why = f"holds samples of {SEQ + 2} token ids, model.seq_length={SEQ} needs {SEQ + 1}"
    assert why in record["failure"]["detail"] and why in record["message"], record
    assert why in wrong.stdout + wrong.stderr

    right, record = up("right")
    assert right.returncode == 0 and record["status"] == "SUCCEEDED", right.stdout + right.stderr
    job_dir = STATE / "hosts" / "th0" / "work" / "jobs" / record["job_id"]
    log = (job_dir / "ranks" / "0" / "stdout.log").read_text()
    assert [ln for ln in log.splitlines() if ln.startswith("step=")][-1].startswith("step=4 ")
    assert not (job_dir / "data").exists()  # read where it was, nothing staged
