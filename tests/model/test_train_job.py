"""The trainer's job file: defaults, --set overrides and aliases, errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrate_bloom.presets import SettingsError
from orchestrate_bloom.train.job import load_job


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_overrides_and_output_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, "job: {id: j1, preset: tiny}\nmodel: {hidden_size: 64}\n"
                            "train: {steps: 5, device_target: CPU}\n")
    job = load_job(path, ["train.steps=7", "train.seq_length=128", "train.lr=1", "data.path=/d",
                          "train.save_steps=3", "train.log_steps=2"])
    assert job.job_id == "j1" and job.output_dir == tmp_path / "output"
    assert job.model["hidden_size"] == 64 and job.model["n_layer"] == 24  # default kept
    assert job.train["steps"] == 7 and job.model["seq_length"] == 128
    assert job.train["lr"] == 1.0 and isinstance(job.train["lr"], float)
    assert job.data["path"] == "/d" and job.meta["preset"] == "tiny"
    assert job.train["save_steps"] == 3 and job.train["log_steps"] == 2


def test_output_dir_from_job_section(tmp_path: Path) -> None:
    path = _write(tmp_path, f"job: {{output_dir: {tmp_path / 'elsewhere'}}}\n")
    assert load_job(path).output_dir == tmp_path / "elsewhere"
    assert load_job(path).job_id == tmp_path.name  # no id: the job folder's name


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("train: {stepz: 3}\n", [], "job.yaml: unknown key 'train.stepz'"),
    ("trains: {steps: 3}\n", [], "job.yaml: unknown section 'trains'"),
    ("train: {steps: many}\n", [], "job.yaml: train.steps: expected int, got 'many'"),
    ("- 1\n", [], "job.yaml: expected a mapping of sections"),
    ("train: {steps: 3}\n", ["train.steps=1.5"],
     "--set 'train.steps=1.5': train.steps: expected int"),
    ("train: {steps: 3}\n", ["steps"], "--set 'steps': expected section.key=value"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, overrides: list[str],
                                  message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_job(_write(tmp_path, text), overrides)
    assert message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_job(tmp_path / "nope.yaml")
