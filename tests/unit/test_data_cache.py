"""Prepared data is content-addressed (issue #17): one key per input, tokenizer, seq_length,
options and preparation code; a hit reuses the folder without preparing; `up` imports neither
numpy nor MindSpore in the CLI process.

    python -m pytest tests/unit/test_data_cache.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from orchestrate_bloom.data import key as data_key

from orchestrator.errors import JobError
from orchestrator.job import dataset

REPO = Path(__file__).resolve().parents[2]


def _alpaca(path: Path, text: str = "hi") -> Path:
    path.write_text(json.dumps([{"instruction": text, "input": "", "output": "ok"}]))
    return path


def test_the_key_changes_with_every_input_that_changes_the_bytes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    src = _alpaca(tmp_path / "a.json")
    base = data_key.prepared_key(src, 32)
    assert base == data_key.prepared_key(src, 32, data_key.DEFAULT_TOKENIZER)  # None = shipped
    assert data_key.prepared_key(src, 64) != base
    assert data_key.prepared_key(src, 32, options={"mask_prompt": 1}) != base
    tok = tmp_path / "tok.json"
    tok.write_text(data_key.DEFAULT_TOKENIZER.read_text() + " ")
    assert data_key.prepared_key(src, 32, tok) != base
    other = _alpaca(tmp_path / "b.json", "hello")
    assert data_key.prepared_key(other, 32) != base
    # the same content under another name is the same key
    assert data_key.prepared_key(_alpaca(tmp_path / "c.json"), 32) == base
    monkeypatch.setattr(data_key, "code_version", lambda: "edited data.py")
    assert data_key.prepared_key(src, 32) != base


def test_a_hit_reuses_the_folder_and_a_miss_prepares_once(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    calls: list[Path] = []

    def fake_prepare(src: Path, dest: Path, seq_length: int, tokenizer: str = "") -> Path:
        calls.append(dest)
        assert tokenizer == ""
        dest.mkdir(parents=True)
        (dest / "alpaca.mindrecord").write_text(f"{src.name} {seq_length}")
        return dest

    monkeypatch.setattr(dataset, "prepare_alpaca", fake_prepare)
    src = _alpaca(tmp_path / "seed.json")
    cache = tmp_path / "state" / "data"
    first = dataset.cached_prepare(src, cache, 32)
    assert first == cache / data_key.prepared_key(src, 32) / "seed"
    assert (first / "alpaca.mindrecord").read_text() == "seed.json 32"
    assert dataset.cached_prepare(src, cache, 32) == first and len(calls) == 1
    assert dataset.cached_prepare(src, cache, 64) != first and len(calls) == 2
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []  # no partials


def test_a_failed_preparation_leaves_no_cache_entry(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(src: Path, dest: Path, seq_length: int, tokenizer: str = "") -> Path:
        assert (seq_length, tokenizer) == (32, "")
        dest.mkdir(parents=True)
        (dest / "half").write_text("x")
        raise JobError(f"data.path {src}: preparing MindRecord failed: boom")

    monkeypatch.setattr(dataset, "prepare_alpaca", failing)
    cache = tmp_path / "data"
    with pytest.raises(JobError, match="boom"):
        dataset.cached_prepare(_alpaca(tmp_path / "seed.json"), cache, 32)
    assert list(cache.iterdir()) == []


def test_a_missing_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="data.tokenizer .*nope.json: no such file"):
        dataset.cached_prepare(_alpaca(tmp_path / "seed.json"), tmp_path / "data", 32,
                               str(tmp_path / "nope.json"))


def test_up_imports_neither_numpy_nor_mindspore(tmp_path: Path) -> None:
    """`up --dry-run` end to end in a fresh interpreter (the control-plane path of every `up`)
    with an Alpaca file whose prepared folder is in the cache: the hit is used (no child), and
    the modules the process imported are listed."""
    src = _alpaca(tmp_path / "seed.json")
    state = tmp_path / "state"
    seq = 32  # tiny's seq_length, given explicitly below
    hit = state / "data" / data_key.prepared_key(src, seq) / "seed"
    hit.mkdir(parents=True)
    args = ["up", "-i", str(REPO / "inventories/local.yaml"), "-c", "tiny", "--dry-run",
            "--set", f"model.seq_length={seq}", "--set", f"data.path={src}",
            "--state-dir", str(state)]
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from orchestrator.cli.main import cli\n"
        f"res = CliRunner().invoke(cli, {args!r})\n"
        "assert res.exit_code == 0, res.output\n"
        "print(' '.join(m for m in ('numpy', 'mindspore', 'orchestrate_bloom.data.prepare',"
        " 'tokenizers')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    assert [p.name for p in (state / "data").iterdir()] == [hit.parent.name]  # a hit: no prep
    rendered = list((state / "jobs").glob("*/nodes/local/job.yaml"))
    assert len(rendered) == 1 and "path: data/seed" in rendered[0].read_text()
