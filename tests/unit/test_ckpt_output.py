"""The pointer `infer --job` reads (orchestrator/ckpt/output.py), pure filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.ckpt.output import collected_for_job, record_collected
from orchestrator.errors import CheckpointError


def test_record_then_lookup_gives_checkpoint_and_architecture(tmp_path: Path) -> None:
    merged = tmp_path / "ckpt" / "merged" / "bloom_tiny_step20.ckpt"
    merged.parent.mkdir(parents=True)
    merged.write_bytes(b"x")
    merged.with_suffix(".yaml").write_text("model: {hidden_size: 64}\n")
    state = tmp_path / "state"
    record_collected(state, "tiny-abcd", 20, merged)
    ckpt, config = collected_for_job(state, "tiny-abcd")
    assert ckpt == merged.resolve() and config == str(merged.with_suffix(".yaml").resolve())


def test_lookup_errors_name_the_job_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"job j1 has no merged checkpoint .*collect-ckpt"):
        collected_for_job(tmp_path, "j1")
    merged = tmp_path / "m.ckpt"
    merged.write_bytes(b"x")
    record_collected(tmp_path, "j2", 1, merged)
    merged.unlink()
    with pytest.raises(CheckpointError, match=r"m.ckpt is gone; collect again"):
        collected_for_job(tmp_path, "j2")
