"""model/ckpt/tools.py on real MindSpore checkpoints built on CPU (pure DP: no transform)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from orchestrate_bloom.ckpt import tools as ckpt_tools  # noqa: E402


class Tiny(ms.nn.Cell):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.dense = ms.nn.Dense(4, hidden)
        self.head = ms.nn.Dense(hidden, 3)

    def construct(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.dense(x))


def _train_ckpt(path: Path, hidden: int = 8) -> Tiny:
    """A checkpoint as a trainer leaves it: params + Adam moments + global_step."""
    ms.set_seed(1)
    net = Tiny(hidden)
    opt = ms.nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3)
    state = list(net.get_parameters()) + list(opt.parameters_and_names())
    items = [{"name": p.name, "data": p} for p in net.get_parameters()]
    items += [{"name": n, "data": p} for n, p in opt.parameters_and_names()]
    assert len(items) == len(state)
    ms.save_checkpoint(items, str(path))
    return net


def test_strip_drops_optimizer_state_and_keeps_params_exactly(tmp_path: Path) -> None:
    net = _train_ckpt(tmp_path / "rank0.ckpt")
    names = set(ms.load_checkpoint(str(tmp_path / "rank0.ckpt")))
    assert any(n.startswith("adam_m.") for n in names) and "global_step" in names

    out = tmp_path / "merged" / "m.ckpt"
    res = ckpt_tools.strip(tmp_path / "rank0.ckpt", out)
    loaded = ms.load_checkpoint(str(out))
    assert set(loaded) == {p.name for p in net.get_parameters()}
    assert res["dropped"] == len(names) - len(loaded) > 0
    for p in net.get_parameters():
        np.testing.assert_array_equal(loaded[p.name].asnumpy(), p.asnumpy())
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".")]  # no temp left


def test_strip_keep_optimizer_keeps_everything(tmp_path: Path) -> None:
    _train_ckpt(tmp_path / "r.ckpt")
    out = tmp_path / "k.ckpt"
    ckpt_tools.strip(tmp_path / "r.ckpt", out, keep_optimizer=True)
    assert set(ms.load_checkpoint(str(out))) == set(ms.load_checkpoint(str(tmp_path / "r.ckpt")))


def test_check_names_missing_unexpected_and_misshaped(tmp_path: Path) -> None:
    _train_ckpt(tmp_path / "r.ckpt", hidden=8)
    ckpt_tools.strip(tmp_path / "r.ckpt", tmp_path / "m.ckpt")

    def factory(hidden: int):  # type: ignore[no-untyped-def]
        net = Tiny(hidden)
        return net, {p.name: tuple(p.shape) for p in net.get_parameters()}

    ok = ckpt_tools.check(tmp_path / "m.ckpt", 8, factory)
    assert ok["parameters"] == 4
    with pytest.raises(ckpt_tools.ToolError, match=r"wrong shape for dense.weight: checkpoint"):
        ckpt_tools.check(tmp_path / "m.ckpt", 16, factory)


def test_compare_params_names_each_problem() -> None:
    problems = ckpt_tools.compare_params(
        {"a": (2, 2), "b": (3,)}, {"a": (2, 3), "c": (1,), "adam_m.a": (2, 3)}
    )
    assert problems == [
        "missing parameter b [3]",
        "unexpected parameter c [1]",
        "wrong shape for a: checkpoint [2, 3], model [2, 2]",
    ]


def test_cli_strip_prints_json_and_errors_in_one_line(tmp_path: Path, repo: Path) -> None:
    _train_ckpt(tmp_path / "r.ckpt")
    cmd = [sys.executable, "-m", "orchestrate_bloom.ckpt.tools", "strip"]
    ok = subprocess.run(
        [*cmd, "--src", str(tmp_path / "r.ckpt"), "--out", str(tmp_path / "o.ckpt")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["results"][0]["kept"] == 4
    bad = subprocess.run(
        [*cmd, "--src", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.ckpt")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "nope.ckpt" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.ckpt").exists()


def test_trainer_checkpoint_strips_and_loads_into_bloom(tmp_path: Path) -> None:
    """A checkpoint saved from the trainer's own train-step cell: strip, then check."""
    from orchestrate_bloom.train import trainer as train
    from orchestrate_bloom.train.job import load_job

    model_cfg = {"vocab_size": 99, "hidden_size": 32, "n_layer": 2, "n_head": 4, "seq_length": 16}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        json.dumps({"model": model_cfg, "train": {"device_target": "CPU"}, "job": {"id": "j"}})
    )
    job = load_job(job_file)
    from orchestrate_bloom.train.cells import build_cells

    _, step_cell, _ = build_cells(
        job,
        train.fit_layout(job, 1)[0],
        train.Dist("single", 0, 1),
        False,
        np.full(10, 1e-3, np.float32),
        None,
    )
    ms.save_checkpoint(step_cell, str(tmp_path / "rank0.ckpt"))
    res = ckpt_tools.strip(tmp_path / "rank0.ckpt", tmp_path / "m.ckpt")
    assert res["dropped"] > res["kept"]  # adam_m + adam_v + counters

    config = ckpt_tools._config(None, json.dumps(model_cfg))
    assert ckpt_tools.check(tmp_path / "m.ckpt", config)["parameters"] == res["kept"]

    wrong = ckpt_tools._config(None, json.dumps({**model_cfg, "n_layer": 3}))
    with pytest.raises(ckpt_tools.ToolError, match=r"missing parameter transformer\.h\.2\."):
        ckpt_tools.check(tmp_path / "m.ckpt", wrong)
