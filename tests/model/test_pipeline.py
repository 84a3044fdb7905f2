"""The Python text-generation API (issue 15.7): pipeline("text_generation", ...), templates
recorded with the model config, raw prompts, batches, and the README's example."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from orchestrate_bloom.config import load_preset
from orchestrate_bloom.generate import GenerateConfig, InferError
from orchestrate_bloom.prompts import apply_template

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Give three tips for staying healthy.", "Name a fruit."]


def random_ckpt(path: Path, seed: int = 0) -> Path:
    import mindspore as ms

    rng = np.random.default_rng(seed)
    arrays = {k: (0.2 * rng.standard_normal(s)).astype(np.float32)
              for k, s in load_preset("tiny").parameter_shapes().items()}
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], str(path))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_ckpt(tmp_path_factory.mktemp("ckpt") / "bloom_tiny.ckpt")


@pytest.fixture(scope="module")
def merged_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What collect-ckpt writes beside a merged checkpoint of a job trained on Alpaca data."""
    path = tmp_path_factory.mktemp("merged") / "bloom_tiny_step5.yaml"
    model = yaml.safe_load((REPO / "model/configs/tiny.yaml").read_text())["model"]
    path.write_text(yaml.safe_dump({"model": model, "data": {"template": "alpaca"}}))
    return path


def test_recorded_template_is_applied_and_raw_sends_text_as_is(ckpt: Path,
                                                               merged_yaml: Path) -> None:
    from orchestrate_bloom.pipeline import pipeline

    generate = pipeline("text_generation", model=str(merged_yaml), ckpt=ckpt, max_new_tokens=4)
    assert generate.template == "alpaca"
    templated = generate.complete(PROMPTS)
    raw = generate.complete(PROMPTS, raw=True)
    tok = generate.tokenizer
    for t, r, text in zip(templated, raw, PROMPTS, strict=True):
        assert t["template"] == "alpaca" and r["template"] == ""
        assert r["prompt_tokens"] == len(tok.encode(text))
        whole = len(tok.encode(apply_template("alpaca", text)))
        assert t["prompt_tokens"] + t["prompt_tokens_dropped"] == whole
    # the batch equals each prompt alone (left padding), and __call__ returns the texts
    alone = [generate(p)[0] for p in PROMPTS]
    assert generate(PROMPTS) == alone == [t["completion"] for t in templated]
    # a preset records no template: prompts go as they are
    plain = pipeline("text_generation", model="tiny", ckpt=ckpt, max_new_tokens=4)
    assert plain.template == "" and plain(PROMPTS) == [r["completion"] for r in raw]


def test_sampling_is_repeatable_with_a_seed_and_errors_are_named(ckpt: Path) -> None:
    from orchestrate_bloom.pipeline import TextGenerationPipeline, pipeline

    generate = TextGenerationPipeline("tiny", ckpt, max_new_tokens=6)
    a = generate(PROMPTS, do_sample=True, seed=3, top_k=20)
    assert a == generate(PROMPTS, do_sample=True, seed=3, top_k=20)
    assert generate.gen == GenerateConfig(max_new_tokens=6)  # per-call settings do not stick
    with pytest.raises(InferError, match="task 'summarization' is not supported"):
        pipeline("summarization", model="tiny", ckpt=ckpt)
    with pytest.raises(InferError, match="unknown prompt template 'chatml'"):
        TextGenerationPipeline("tiny", ckpt, template="chatml")


def test_readme_python_example_runs(ckpt: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "orchestrate_bloom.pipeline" in b)
    merged = re.search(r'merged = "([^"]+)"', example)
    assert merged is not None
    base = tmp_path / merged.group(1)  # what collect-ckpt writes there
    base.parent.mkdir(parents=True)
    base.with_suffix(".ckpt").write_bytes(ckpt.read_bytes())
    base.with_suffix(".yaml").write_text(yaml.safe_dump({
        "model": yaml.safe_load((REPO / "model/configs/tiny.yaml").read_text())["model"],
        "data": {"template": "alpaca"}}))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the documented example
    printed = capsys.readouterr().out
    assert printed.strip(), "the README example prints the generated texts"


def test_up_says_when_the_template_leaves_no_room_for_responses(tmp_path: Path) -> None:
    """The README's tiny job: seq_length 128 and the shipped tokenizer (trained on the templated
    records, so the Alpaca template is 30 tokens, not 65): most rows reach their response; the
    49 whose template + instruction (+ input) fill the row are named in a note."""
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    inv = tmp_path / "local.yaml"
    inv.write_text(f"defaults: {{connection: local, devices: 2, workdir: {tmp_path / 'run'}}}\n"
                   "nodes:\n  - {host: 127.0.0.1, name: local}\n")
    args = ["up", "-i", str(inv), "-c", "tiny", "--dry-run", "--state-dir", str(tmp_path / "s")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert ("note: 49 of 175 records have no response token within seq_length 128 + 1 (the "
            "alpaca template and instruction fill the row)") in result.stderr
    wide = CliRunner().invoke(cli, [*args, "--set", "model.seq_length=256"])
    assert wide.exit_code == 0 and "note: 15 of 175 records" in wide.stderr  # long inputs
