"""`--set` means the same to `orchestrate` and to `python -m orchestrate_bloom.train`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from orchestrate_bloom.presets import SettingsError
from orchestrate_bloom.train.job import load_job

from orchestrator.config.inventory import parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import PresetError
from orchestrator.job.render import render_job_yaml

# (override, the key it sets, the value both sides must hold; None: both must refuse it)
TABLE = [
    ("train.lr=3e-4", "train.lr", 3e-4),  # YAML 1.1 reads 3e-4 as a string: the CLI took it
    ("train.lr=1", "train.lr", 1.0),
    ("train.lr=0.002", "train.lr", 0.002),
    ("train.steps=5", "train.steps", 5),
    ("train.seq_length=32", "model.seq_length", 32),  # alias
    ("parallel.batch_size=4", "parallel.micro_batch_size", 4),  # alias
    ("parallel.optimizer_shard=true", "parallel.optimizer_shard", True),
    ("data.path=/data/mr", "data.path", "/data/mr"),
    ("data.path=123", "data.path", "123"),
    ("data.tokenizer=", "data.tokenizer", ""),
    ("train.load_checkpoint=a=b.ckpt", "train.load_checkpoint", "a=b.ckpt"),
    ("parallel.layers_per_stage=[2]", "parallel.layers_per_stage", [2]),
    ("train.lr=fast", "train.lr", None),
    ("train.steps=1.5", "train.steps", None),
    ("train.steps=true", "train.steps", None),
    ("parallel.optimizer_shard=3", "parallel.optimizer_shard", None),
    ("parallel.layers_per_stage=2", "parallel.layers_per_stage", None),
    ("train.stepz=5", "train.stepz", None),
    ("nosection.x=1", "nosection.x", None),
    ("train.steps", "train.steps", None),
    ("model.seq_length=[1]", "model.seq_length", None),
]


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job.yaml `up -c tiny` renders for one local device."""
    inv = parse_inventory("nodes:\n  - {name: n0, host: 127.0.0.1, devices: 1}\n")
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_text(render_job_yaml(build_plan(inv, load_job_spec("tiny"))))
    return path


@pytest.mark.parametrize(("item", "dotted", "want"), TABLE)
def test_cli_and_trainer_accept_the_same(tiny_job: Path, item: str, dotted: str,
                                         want: object) -> None:
    if want is None:
        with pytest.raises(PresetError) as cli_err:
            load_job_spec("tiny", [item])
        with pytest.raises(SettingsError) as trainer_err:
            load_job(tiny_job, [item])
        assert str(cli_err.value) == str(trainer_err.value)  # one message, naming the flag
        assert repr(item) in str(cli_err.value)
        return
    section, key = dotted.split(".")
    cli_value = load_job_spec("tiny", [item]).value(dotted)
    trainer_value = getattr(load_job(tiny_job, [item]), section)[key]
    assert cli_value == trainer_value == want
    assert type(cli_value) is type(trainer_value) is type(want)


def test_trainer_entry_point_refuses_what_the_cli_refuses(tiny_job: Path) -> None:
    """The real `python -m orchestrate_bloom.train`: exit 1 with the CLI's one-line message."""
    item = "train.steps=1.5"
    with pytest.raises(PresetError) as cli_err:
        load_job_spec("tiny", [item])
    run = subprocess.run([sys.executable, "-m", "orchestrate_bloom.train", "--job", str(tiny_job),
                          "--set", item], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"error: {cli_err.value}"
