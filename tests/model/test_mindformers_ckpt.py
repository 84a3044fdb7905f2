"""MindFormers checkpoints in and out (issue 15.2), through `orchestrate convert-weights`.

HF -> MindFormers layout (written here from the HF fixture as MindFormers' convert_weight.py
lays it out, plus optimizer entries as MindFormers training saves them) -> ours: logits equal
HF's; ours -> --to-mindformers -> --mindformers: bit-exact; wrong shapes name the parameter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt.convert import hf_to_ours, load_checkpoint_arrays, read_hf_weights
from orchestrate_bloom.config import BloomConfig

REPO = Path(__file__).resolve().parents[2]
CASE = REPO / "tests" / "fixtures" / "bloom_ref" / "heads6"  # 6 heads: the per-head split shows


def orchestrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def mindformers_layout(hf: dict[str, np.ndarray], config: BloomConfig) -> dict[str, np.ndarray]:
    """HF tensors in MindFormers' names and layouts (independent of orchestrate_bloom)."""
    n, d, h = config.n_head, config.head_dim, config.hidden_size
    t = {k.removeprefix("transformer."): v for k, v in hf.items()}
    out = {"transformer.embedding.word_embedding.embedding_table": t["word_embeddings.weight"],
           "transformer.embedding.norm.gamma": t["word_embeddings_layernorm.weight"],
           "transformer.embedding.norm.beta": t["word_embeddings_layernorm.bias"],
           "transformer.ln_f.gamma": t["ln_f.weight"], "transformer.ln_f.beta": t["ln_f.bias"],
           "head.weight": t["word_embeddings.weight"]}
    for i in range(config.n_layer):
        src, dst = f"h.{i}.", f"transformer.blocks.{i}."
        qkv_w = t[src + "self_attention.query_key_value.weight"].reshape(n, 3, d, h)
        qkv_b = t[src + "self_attention.query_key_value.bias"].reshape(n, 3, d)
        for j, name in enumerate(("dense1", "dense2", "dense3")):
            out[f"{dst}attention.{name}.weight"] = qkv_w[:, j].reshape(h, h)
            out[f"{dst}attention.{name}.bias"] = qkv_b[:, j].reshape(h)
        for ours, theirs in (("input_layernorm", "layernorm1"),
                             ("post_attention_layernorm", "layernorm2")):
            out[f"{dst}{theirs}.gamma"] = t[f"{src}{ours}.weight"]
            out[f"{dst}{theirs}.beta"] = t[f"{src}{ours}.bias"]
        for ours, theirs in (("self_attention.dense", "attention.projection"),
                             ("mlp.dense_h_to_4h", "output.mapping"),
                             ("mlp.dense_4h_to_h", "output.projection")):
            out[f"{dst}{theirs}.weight"] = t[f"{src}{ours}.weight"].T  # [in, out]
            out[f"{dst}{theirs}.bias"] = t[f"{src}{ours}.bias"]
    return out


def save(arrays: dict[str, np.ndarray], path: Path) -> Path:
    import mindspore as ms

    ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.ascontiguousarray(v))}
                        for k, v in arrays.items()], str(path))
    return path


def ckpt_arrays(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def mf_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HF fixture as a MindFormers training checkpoint (with moments and counters)."""
    config = BloomConfig.from_hf(CASE)
    model = mindformers_layout(read_hf_weights(CASE), config)
    extra = {f"adam_m.{k}": np.zeros_like(v) for k, v in model.items()}
    extra.update({"global_step": np.array([7], np.int32),
                  "scale_sense": np.array(1024.0, np.float32)})
    return save({**model, **extra}, tmp_path_factory.mktemp("mf") / "mf.ckpt")


def test_hf_to_mindformers_to_ours_gives_hfs_logits(mf_ckpt: Path, tmp_path: Path) -> None:
    from mindspore import Tensor
    from orchestrate_bloom.infer import load_model, set_graph_mode

    ours = tmp_path / "ours.ckpt"
    result = orchestrate("convert-weights", "--mindformers", str(mf_ckpt), "--hf-config",
                         str(CASE / "config.json"), "-o", str(ours))
    assert result.returncode == 0, result.stderr
    config = BloomConfig.from_hf(CASE)
    n_mf = len(mindformers_layout(read_hf_weights(CASE), config))  # head.weight included
    assert (f"({len(config.parameter_shapes())} parameters, orchestrate names; ignored "
            f"{n_mf + 2} entries") in result.stdout  # the moments, global_step, scale_sense
    direct = hf_to_ours(read_hf_weights(CASE), config)
    converted = ckpt_arrays(ours)
    assert converted.keys() == direct.keys()
    assert all(np.array_equal(converted[k], direct[k]) for k in direct)
    set_graph_mode("CPU")
    with np.load(CASE / "reference.npz") as ref:
        ids, mask, want = ref["input_ids"], ref["attention_mask"], ref["logits"]
    for path in (ours, mf_ckpt):  # infer --ckpt takes the MindFormers file directly too
        logits = load_model(path, config)(Tensor(ids.astype(np.int32)),
                                          Tensor(mask.astype(np.int32))).asnumpy()
        assert np.abs(logits - want)[mask.astype(bool)].max() <= 1e-5


def test_ours_to_mindformers_and_back_is_bit_exact(tmp_path: Path) -> None:
    config = BloomConfig.from_hf(CASE)
    rng = np.random.default_rng(0)
    ours = {k: rng.standard_normal(s).astype(np.float32)
            for k, s in config.parameter_shapes().items()}
    src = save(ours, tmp_path / "ours.ckpt")
    exported, back = tmp_path / "mf.ckpt", tmp_path / "back.ckpt"
    cfg = ["--hf-config", str(CASE / "config.json")]
    result = orchestrate("convert-weights", "--to-mindformers", "--ckpt", str(src), *cfg,
                         "-o", str(exported))
    assert result.returncode == 0, result.stderr
    theirs = ckpt_arrays(exported)
    assert "transformer.blocks.1.attention.dense3.bias" in theirs
    assert theirs["transformer.blocks.0.output.mapping.weight"].shape == (24, 96)  # [in, out]
    result = orchestrate("convert-weights", "--mindformers", str(exported), *cfg, "-o",
                         str(back))
    assert result.returncode == 0, result.stderr
    again = ckpt_arrays(back)
    assert again.keys() == ours.keys()
    assert all(np.array_equal(again[k], ours[k]) and again[k].dtype == ours[k].dtype
               for k in ours)


def test_wrong_shape_and_missing_parameter_are_named(mf_ckpt: Path, tmp_path: Path) -> None:
    from orchestrate_bloom.ckpt.convert import ConvertError

    config = BloomConfig.from_hf(CASE)
    good = ckpt_arrays(mf_ckpt)
    bad = dict(good)
    bad["transformer.blocks.1.output.mapping.weight"] = good[
        "transformer.blocks.1.output.mapping.weight"].T  # HF's [out, in]
    path = save(bad, tmp_path / "bad.ckpt")
    result = orchestrate("convert-weights", "--mindformers", str(path), "--hf-config",
                         str(CASE / "config.json"), "-o", str(tmp_path / "x.ckpt"))
    assert result.returncode == 1 and not (tmp_path / "x.ckpt").exists()
    assert result.stderr.strip().splitlines()[-1].endswith(
        "transformer.blocks.1.output.mapping.weight: expected shape (24, 96), found (96, 24)")
    del good["transformer.blocks.0.attention.dense2.bias"]
    with pytest.raises(ConvertError, match=r"missing parameter transformer\.blocks\.0\."
                       r"attention\.dense2\.bias \(expected shape \(24,\)\)"):
        load_checkpoint_arrays(save(good, tmp_path / "missing.ckpt"), config)
