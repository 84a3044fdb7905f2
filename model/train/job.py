"""The job file the trainer runs from: job.yaml (rendered by the orchestrator) + `--set` overrides.

    job = load_job(Path("job.yaml"), ["train.steps=50", "data.path=/data/alpaca"])
    job.train["steps"], job.output_dir

job.yaml has the sections of model/configs/defaults.yaml (model, parallel, train, data), and
optionally `job: {id: ..., output_dir: ..., preset: ...}` (other `job` keys are kept as-is and
copied into checkpoint manifests). Keys missing from the file take the defaults;
unknown keys and mistyped values are errors naming the file and key. `output_dir` defaults to
`<folder of job.yaml>/output`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..presets import SECTIONS, SettingsError, apply_override, defaults, merge_file, read_yaml


@dataclass(frozen=True)
class Job:
    """A fully merged job: every section holds every default key."""

    path: Path
    job_id: str
    output_dir: Path
    model: Mapping[str, Any]
    parallel: Mapping[str, Any]
    train: Mapping[str, Any]
    data: Mapping[str, Any]
    meta: Mapping[str, Any]  # the whole `job:` section (id, output_dir, anything else given)

    def to_dict(self) -> dict[str, Any]:
        return {"job": {**self.meta, "id": self.job_id, "output_dir": str(self.output_dir)},
                **{s: dict(getattr(self, s)) for s in SECTIONS}}


def load_job(path: Path, overrides: Sequence[str] = ()) -> Job:
    """Read `path`, merge it over the defaults, apply `section.key=value` overrides.

    The file and the overrides go through presets.py, the loader `orchestrate` uses, so the
    trainer accepts exactly the keys, aliases and values the CLI accepts.

    Raises:
        SettingsError: unreadable file, unknown section or key, value of the wrong type.
    """
    doc = read_yaml(path)
    merged = defaults()
    meta = doc.get("job") or {}
    if not isinstance(meta, dict):
        raise SettingsError(f"{path}: job: expected a mapping (id, output_dir, ...)")
    merge_file(merged, doc, str(path), skip=("job",))
    for item in overrides:
        apply_override(merged, item)
    output = Path(meta["output_dir"]) if meta.get("output_dir") else path.parent / "output"
    return Job(path=path, job_id=str(meta.get("id") or path.parent.name), output_dir=output,
               meta=dict(meta), **{s: merged[s] for s in SECTIONS})
