"""`collect` on a `connection: local` inventory (the README's CPU path): no sshd needed.

Real files, real MindSpore strip + load check in children, the trainer's manifest format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from orchestrate_bloom.ckpt.tools import model_shapes  # noqa: E402

from orchestrator.ckpt.collect import collect  # noqa: E402
from orchestrator.config.inventory import load_inventory  # noqa: E402
from orchestrator.errors import CheckpointError  # noqa: E402


def collect_on(inventory: Path, *args: Any, **kwargs: Any) -> Any:
    """ckpt.collect over a NodeGroup of `inventory`'s nodes (as the CLI does)."""
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(load_inventory(inventory)) as group:
        return collect(group, *args, **kwargs)


MODEL = {"vocab_size": 64, "hidden_size": 16, "n_layer": 2, "n_head": 2, "seq_length": 8}


def _job(tmp_path: Path, steps: tuple[int, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "defaults: {connection: local, devices: 2, workdir: "
        f"{tmp_path / 'work'}, python: python3}}\nnodes: [{{host: 127.0.0.1, name: local}}]\n"
    )
    rng = np.random.default_rng(3)
    full = {n: rng.standard_normal(s).astype(np.float32) for n, s in model_shapes(MODEL).items()}
    layout = {"data_parallel": 2, "model_parallel": 1, "pipeline_stage": 1}
    for rank in (0, 1):
        folder = tmp_path / "work" / "jobs" / "j" / "output" / "checkpoint" / f"rank_{rank}"
        folder.mkdir(parents=True)
        for step in steps:
            items = [{"name": n, "data": ms.Tensor(a * step)} for n, a in full.items()]
            items += [{"name": f"adam_v.{n}", "data": ms.Tensor(a)} for n, a in full.items()]
            path = folder / f"bloom_rank_{rank}-{step}.ckpt"
            ms.save_checkpoint(items, str(path))
            data = path.read_bytes()
            path.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "step": step,
                        "rank": rank,
                        "size": len(data),
                        "layout": layout,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "model": MODEL,
                        "job_id": "j",
                    }
                )
            )
    return inv, {n: a * max(steps) for n, a in full.items()}


def test_local_dp_job_collects_one_replica_and_loads(tmp_path: Path) -> None:
    inv, want = _job(tmp_path, (3, 6))
    res = collect_on(inv, "j", tmp_path / "dest", say=lambda _s: None)
    assert (res.step, res.fetched_ranks) == (6, [0])
    assert "check" in res.seconds
    got = ms.load_checkpoint(str(res.merged))
    assert set(got) == set(want)
    for n, a in want.items():
        np.testing.assert_array_equal(got[n].asnumpy(), a)


def test_wrong_model_section_fails_the_load_check_naming_params(tmp_path: Path) -> None:
    inv, _ = _job(tmp_path, (3,))
    for rank in (0, 1):
        man = tmp_path / f"work/jobs/j/output/checkpoint/rank_{rank}/bloom_rank_{rank}-3.json"
        doc = json.loads(man.read_text())
        doc["model"] = {**MODEL, "n_layer": 3}
        man.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"missing parameter transformer\.h\.2\."):
        collect_on(inv, "j", tmp_path / "dest", say=lambda _s: None)
