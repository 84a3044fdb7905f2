"""MindFormers datasets (issue 15.3): what make_mindrecord.py writes — one dataset.mindrecord
(+ .db), column input_ids int64 of seq_length + 1 ids padded with eos — read as is; a row
length that does not match the model is refused naming both numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from orchestrate_bloom.data.read import create_dataset, sample_length

from tests.model.test_train import env

REPO = Path(__file__).resolve().parents[2]
EOS = 2


def write_mindformers_dataset(folder: Path, rows: int, width: int, vocab: int = 1000,
                              seed: int = 0) -> np.ndarray:
    """The layout of MindFormers' make_mindrecord.py (Bloom/wikitext): one file
    `dataset.mindrecord` + `.db`, schema {"input_ids": int64 [-1]}, rows padded with eos."""
    from mindspore.mindrecord import FileWriter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = np.full((rows, width), EOS, np.int64)
    for r in range(rows):
        n = int(rng.integers(width // 2, width))
        ids[r, :n] = rng.integers(4, vocab, n)
    writer = FileWriter(str(folder / "dataset.mindrecord"), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int64", "shape": [-1]}}, "wikitext2")
    writer.write_raw_data([{"input_ids": row} for row in ids])
    writer.commit()
    return ids


def test_a_mindformers_dataset_is_read_as_is(tmp_path: Path) -> None:
    ids = write_mindformers_dataset(tmp_path / "mf", rows=6, width=17)
    assert sorted(p.name for p in (tmp_path / "mf").iterdir()) == [
        "dataset.mindrecord", "dataset.mindrecord.db"]
    assert sample_length(tmp_path / "mf") == 17
    batches = create_dataset(tmp_path / "mf", 2, num_shards=2, shard_id=1).create_tuple_iterator()
    first = next(batches)[0].asnumpy()
    assert first.dtype == np.int32  # cast from MindFormers' int64 as read
    np.testing.assert_array_equal(first, ids[[1, 3]])


def test_a_row_length_that_does_not_match_is_refused(tmp_path: Path) -> None:
    write_mindformers_dataset(tmp_path / "mf", rows=4, width=65)
    job = tmp_path / "job" / "job.yaml"
    job.parent.mkdir()
    job.write_text(yaml.safe_dump({
        "model": {"vocab_size": 1000, "hidden_size": 32, "n_layer": 2, "n_head": 4,
                  "seq_length": 32, "compute_dtype": "float32"},
        "train": {"device_target": "CPU", "mode": "pretrain", "steps": 2},
        "data": {"path": str(tmp_path / "mf")}}))
    result = subprocess.run([sys.executable, "-m", "orchestrate_bloom.train", "--job", str(job)],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "holds samples of 65 token ids, model.seq_length=32 needs 33" in result.stderr
    assert not (job.parent / "output" / "checkpoint").exists()


def test_a_local_dataset_of_another_row_length_is_refused_at_up(tmp_path: Path) -> None:
    """Before anything is rendered, staged or started: one line naming the file and both
    numbers (the row length comes from the first row; this CLI process reads it in a child)."""
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    write_mindformers_dataset(tmp_path / "mf", rows=4, width=65)
    inv = tmp_path / "local.yaml"
    inv.write_text(f"defaults: {{connection: local, devices: 2, workdir: {tmp_path / 'run'}}}\n"
                   "nodes:\n  - {host: 127.0.0.1, name: local}\n")
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["up", "-i", str(inv), "-c", "tiny", "--state-dir",
                                      str(state), "--set", f"data.path={tmp_path / 'mf'}"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"Error: data.path {tmp_path / 'mf'}: {tmp_path / 'mf' / 'dataset.mindrecord'} holds "
        "rows of 65 token ids, model.seq_length=128 needs 129 (make the data for seq_length "
        "128, or --set model.seq_length=64)"]
    assert not list(tmp_path.glob("run/jobs/*"))  # the check made the workdir, nothing in it
    assert not list(state.glob("jobs/*.json")) and not list(state.glob("jobs/*/*"))
