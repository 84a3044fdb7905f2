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

import yaml

DEFAULTS_FILE = Path(__file__).resolve().parent / "configs" / "defaults.yaml"
SECTIONS = ("model", "parallel", "train", "data")
KEY_ALIASES = {"train.seq_length": "model.seq_length"}


class JobFileError(ValueError):
    """The job file or an override is malformed; the message names the file/flag and key."""


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

    Raises:
        JobFileError: unreadable file, unknown section or key, value of the wrong type.
    """
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise JobFileError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise JobFileError(f"{path}: YAML syntax error: {e}") from None
    if not isinstance(doc, dict):
        raise JobFileError(f"{path}: expected a mapping of sections at top level")
    merged = {s: dict(defaults[s]) for s in SECTIONS}
    meta = doc.get("job") or {}
    if not isinstance(meta, dict):
        raise JobFileError(f"{path}: job: expected a mapping (id, output_dir, ...)")
    for section, values in doc.items():
        if section == "job":
            continue
        if section not in merged:
            raise JobFileError(f"{path}: unknown section {section!r} (sections: "
                               f"{', '.join(('job', *SECTIONS))})")
        if not isinstance(values, dict):
            raise JobFileError(f"{path}: {section}: expected a mapping")
        for key, value in values.items():
            _set(merged, f"{section}.{key}", value, str(path))
    for item in overrides:
        if "=" not in item:
            raise JobFileError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(merged, dotted.strip(), value, f"--set {item!r}")
    output = Path(meta["output_dir"]) if meta.get("output_dir") else path.parent / "output"
    return Job(path=path, job_id=str(meta.get("id") or path.parent.name), output_dir=output,
               meta=dict(meta), **{s: merged[s] for s in SECTIONS})


def _set(merged: dict[str, dict[str, Any]], dotted: str, value: Any, src: str) -> None:
    dotted = KEY_ALIASES.get(dotted, dotted)
    section, _, key = dotted.partition(".")
    if section not in merged or key not in merged[section]:
        raise JobFileError(f"{src}: unknown key {dotted!r}")
    default = merged[section][key]
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        if not ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, ok = str(value), True
    if not ok:
        raise JobFileError(f"{src}: {dotted}: expected {kind.__name__}, got {value!r}")
    merged[section][key] = value
