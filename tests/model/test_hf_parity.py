"""Parity with HF transformers' BloomForCausalLM through `orchestrate convert-weights`.

The fixtures in tests/fixtures/bloom_ref were written by tests/fixtures/make_bloom_reference.py
(torch 2.13 CPU + transformers); these tests need neither.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt.convert import read_hf_weights, read_safetensors
from orchestrate_bloom.config import BloomConfig

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "bloom_ref"
CASES = ("heads4", "heads6", "leftpad")
NEW_TOKENS = 10


def orchestrate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI from this checkout as a user would."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fixture converted HF -> ours with `orchestrate convert-weights`."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for case in CASES:
        ckpt = out / f"{case}.ckpt"
        result = orchestrate("convert-weights", "--hf", str(FIXTURES / case), "--output", str(ckpt))
        assert result.returncode == 0, result.stderr
        assert f"wrote {ckpt}" in result.stdout
        paths[case] = ckpt
    return paths


@pytest.fixture(scope="module")
def models(converted: dict[str, Path]) -> dict[str, object]:
    """Our model per case, loaded from the converted checkpoint (graph mode, CPU)."""
    from orchestrate_bloom.infer import Generator, load_model, set_graph_mode

    set_graph_mode("CPU")
    loaded = {}
    for case in CASES:
        model = load_model(converted[case], BloomConfig.from_hf(FIXTURES / case))
        loaded[case] = (model, Generator(model))
    return loaded


def reference(case: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / case / "reference.npz") as data:
        return dict(data)


@pytest.mark.parametrize("case", CASES)
def test_logits_match_hf(case: str, models: dict) -> None:
    from mindspore import Tensor

    model, _ = models[case]
    ref = reference(case)
    logits = model(Tensor(ref["input_ids"].astype(np.int32)),
                   Tensor(ref["attention_mask"].astype(np.int32))).asnumpy()
    assert logits.dtype == np.float32 and logits.shape == ref["logits"].shape
    real = ref["attention_mask"].astype(bool)  # logits at padding positions are meaningless
    assert np.abs(logits - ref["logits"])[real].max() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_match_hf_generate(case: str, models: dict) -> None:
    from orchestrate_bloom.infer import GenerateConfig

    _, generator = models[case]
    ref = reference(case)
    prompts = [row[m.astype(bool)].tolist() for row, m in zip(ref["input_ids"],
                                                              ref["attention_mask"], strict=True)]
    ours = generator.generate(prompts, GenerateConfig(max_new_tokens=NEW_TOKENS))
    width = ref["input_ids"].shape[1]
    for row, new in enumerate(ours):
        hf_new = ref["generated"][row, width:].tolist()
        # HF pads a row after its eos; we stop the row there.
        assert new == hf_new[: len(new)] and all(t == 3 for t in hf_new[len(new):])
        assert len(new) == NEW_TOKENS or new[-1] == 2
    assert any(len(new) < NEW_TOKENS for new in ours) == (case == "leftpad")  # eos exercised


@pytest.mark.parametrize("case", CASES)
def test_hf_to_ours_to_hf_is_bit_exact(case: str, converted: dict[str, Path],
                                       tmp_path: Path) -> None:
    out = tmp_path / "hf"
    result = orchestrate("convert-weights", "--to-hf", "--ckpt", str(converted[case]),
                         "--hf-config", str(FIXTURES / case / "config.json"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    original = {k.removeprefix("transformer."): v
                for k, v in read_hf_weights(FIXTURES / case).items()}
    original.pop("lm_head.weight", None)  # tied: HF's save_pretrained drops it too
    back = read_safetensors(out / "model.safetensors")
    assert set(back) == {"transformer." + k for k in original}
    for name, array in original.items():
        assert back["transformer." + name].dtype == array.dtype
        assert back["transformer." + name].tobytes() == array.tobytes(), name
    assert BloomConfig.from_hf(out) == BloomConfig.from_hf(FIXTURES / case)


def test_safetensors_reader_agrees_with_the_safetensors_library() -> None:
    from safetensors.numpy import load_file

    path = FIXTURES / "heads4" / "model.safetensors"
    ours, theirs = read_safetensors(path), load_file(str(path))
    assert set(ours) == set(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_bad_hf_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((FIXTURES / "heads4" / "config.json").read_text())
    result = orchestrate("convert-weights", "--hf", str(tmp_path), "--output",
                         str(tmp_path / "x.ckpt"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: convert: {tmp_path}: no model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin"]
    assert not list(tmp_path.glob("*.ckpt")) and not list(tmp_path.glob(".*"))
