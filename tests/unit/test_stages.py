"""The one layer split (orchestrate_bloom.train.stages): plan, job.yaml and the trainer agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrate_bloom.train import trainer as train
from orchestrate_bloom.train.job import load_job
from orchestrate_bloom.train.stages import (
    SplitError,
    check_split,
    layers_per_stage,
    resolve_split,
    stage_of_layers,
)

from orchestrator.config.inventory import parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import available_presets, load_job_spec
from orchestrator.errors import PresetError
from orchestrator.job.render import render_job_yaml


def _inventory(devices: int) -> str:
    """`devices` devices, 8 per node (the last node takes the rest)."""
    per_node = [8] * (devices // 8) + ([devices % 8] if devices % 8 else [])
    hosts = "\n".join(f"  - {{name: n{i}, host: 10.0.{i // 250}.{i % 250 + 1}, devices: {k}}}"
                      for i, k in enumerate(per_node))
    return f"nodes:\n{hosts}\n"


def _cases() -> list[tuple[str, int]]:
    cases = []
    for name in available_presets():
        p = load_job_spec(name).parallel
        minimum = p.model_parallel * p.pipeline_stage
        cases += [(name, minimum), (name, 2 * minimum)]
    return cases


@pytest.mark.parametrize(("preset", "devices"), _cases())
def test_trainer_stage_assignment_is_plans(tmp_path: Path, preset: str, devices: int) -> None:
    """Render job.yaml as `up` does, load it as the trainer does, place the blocks with the
    trainer's own code: the per-stage counts are plan's layers_per_stage, none is empty and
    they differ by at most one."""
    plan = build_plan(parse_inventory(_inventory(devices)), load_job_spec(preset))
    planned = plan.to_json()["parallel"]["layers_per_stage"]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(render_job_yaml(plan))
    job = load_job(job_file)
    assert job.parallel["layers_per_stage"] == planned
    layout, _ = train.fit_layout(job, devices)
    stages = train.block_stages(layout)
    assert len(stages) == job.model["n_layer"]
    counts = [stages.count(s) for s in range(layout.pipeline_stage)]
    assert counts == planned
    assert stages == sorted(stages)  # consecutive blocks per stage
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1


def test_176b_and_65b_splits() -> None:
    """The seed's two pipeline presets (the trainer used to give 176b [5 x 14, 0, 0])."""
    assert layers_per_stage(70, 16) == [5] * 6 + [4] * 10
    assert layers_per_stage(80, 12) == [7] * 8 + [6] * 4
    assert stage_of_layers([2, 1]) == [0, 0, 1]


def test_bad_splits_are_refused() -> None:
    with pytest.raises(SplitError, match="pipeline_stage=5 exceeds n_layer=4"):
        layers_per_stage(4, 5)
    with pytest.raises(SplitError, match="sums to 5, model.n_layer=4"):
        check_split([3, 2], 4, 2)
    with pytest.raises(SplitError, match="has 1 entries, parallel.pipeline_stage=2"):
        check_split([4], 4, 2)
    with pytest.raises(SplitError, match="every stage needs >= 1 layer"):
        check_split([4, 0], 4, 2)
    assert resolve_split([3, 1], 4, 2) == [3, 1]  # an explicit split is kept
    assert resolve_split([], 4, 2) == [2, 2]


def test_explicit_split_reaches_the_trainer(tmp_path: Path) -> None:
    """`--set parallel.layers_per_stage=[...]` is plan's split and the trainer's."""
    spec = load_job_spec("7.1b", ["parallel.layers_per_stage=[16, 14]"])
    plan = build_plan(parse_inventory(_inventory(8)), spec)
    assert list(plan.stage_layers) == [16, 14]
    (tmp_path / "job.yaml").write_text(render_job_yaml(plan))
    layout, _ = train.fit_layout(load_job(tmp_path / "job.yaml"), 8)
    assert train.block_stages(layout) == [0] * 16 + [1] * 14
    with pytest.raises(PresetError, match="sums to 29"):
        load_job_spec("7.1b", ["parallel.layers_per_stage=[15, 14]"])


def test_trainer_refuses_a_split_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model: {n_layer: 4}\nparallel: {pipeline_stage: 2, layers_per_stage: [4]}\n")
    with pytest.raises(train.TrainError, match="has 1 entries"):
        train.fit_layout(load_job(path), 2)
