"""Weight conversion edge cases: name map, errors naming tensors and shapes, file readers."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt.convert import (
    ConvertError,
    hf_to_ours,
    load_checkpoint_arrays,
    name_map,
    ours_to_hf,
    read_hf_weights,
    read_safetensors,
    read_torch_bin,
    save_checkpoint_arrays,
)
from orchestrate_bloom.config import BloomConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bloom_ref"
CONFIG = BloomConfig(vocab_size=16, hidden_size=8, n_layer=1, n_head=2)


def random_hf_state(config: BloomConfig, prefix: str = "transformer.") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inverse = {ours: hf for hf, ours in name_map(config).items()}
    return {prefix + inverse[name]: rng.standard_normal(shape).astype(np.float32)
            for name, shape in config.parameter_shapes().items()}


def test_name_map_covers_every_parameter_once() -> None:
    names = name_map(CONFIG)
    assert sorted(names.values()) == sorted(CONFIG.parameter_shapes())
    assert names["h.0.self_attention.query_key_value.weight"] == \
        "transformer.h.0.self_attention.query_key_value.weight"


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_prefix_optional_and_tied_head_accepted(prefix: str) -> None:
    state = random_hf_state(CONFIG, prefix)
    state["lm_head.weight"] = state[prefix + "word_embeddings.weight"].copy()
    ours = hf_to_ours(state, CONFIG)
    assert set(ours) == set(CONFIG.parameter_shapes())
    back = ours_to_hf(ours, CONFIG)
    assert all(np.array_equal(back["transformer." + k.removeprefix(prefix)], v)
               for k, v in state.items() if k != "lm_head.weight")


def test_errors_name_the_tensor() -> None:
    state = random_hf_state(CONFIG)
    missing = dict(state)
    del missing["transformer.h.0.mlp.dense_4h_to_h.bias"]
    with pytest.raises(ConvertError, match=r"missing tensor\(s\) \['transformer.h.0.mlp"):
        hf_to_ours(missing, CONFIG)
    extra = dict(state, **{"transformer.h.1.mlp.dense_4h_to_h.bias": np.zeros(8, np.float32)})
    with pytest.raises(ConvertError, match=r"unknown tensor.*transformer.h.1.mlp.*n_layer=1"):
        hf_to_ours(extra, CONFIG)
    wrong = dict(state, **{"transformer.ln_f.weight": np.zeros(9, np.float32)})
    with pytest.raises(ConvertError, match=r"transformer.ln_f.weight has shape \(9,\), "
                                           r"config expects \(8,\)"):
        hf_to_ours(wrong, CONFIG)
    untied = dict(state, **{"lm_head.weight": np.zeros((16, 8), np.float32)})
    with pytest.raises(ConvertError, match="lm_head.weight differs from word_embeddings"):
        hf_to_ours(untied, CONFIG)


def test_bf16_safetensors_widen_exactly(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")  # truncation; exact for these values
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    got = read_safetensors(path)["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bf16.astype(np.uint32) << 16).view(np.float32))
    assert got[0] == 1.0 and got[1] == -2.5


def test_torch_bin_reader_matches_fixture_and_refuses_code(tmp_path: Path) -> None:
    state = read_torch_bin(FIXTURES / "heads6" / "pytorch_model.bin")
    assert "word_embeddings.weight" in state and "lm_head.weight" in state
    assert state["word_embeddings.weight"].shape == (128, 24)
    assert np.array_equal(state["lm_head.weight"], state["word_embeddings.weight"])

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    evil = tmp_path / "evil.bin"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ConvertError, match=r"unsupported object (__builtin__|builtins).print"):
        read_torch_bin(evil)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ConvertError, match=r"not a torch zip checkpoint.*legacy"):
        read_torch_bin(legacy)


def test_hf_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="no model.safetensors"):
        read_hf_weights(tmp_path)


def test_checkpoint_loading_strips_wrappers_and_ignores_optimizer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    params = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in CONFIG.parameter_shapes().items()}
    wrapped = {"network." + k: v for k, v in params.items()}
    wrapped.update({"adam_m.network.transformer.ln_f.weight": np.zeros(8, np.float32),
                    "global_step": np.array([7], np.int32)})
    path = save_checkpoint_arrays(wrapped, tmp_path / "trainer.ckpt")
    loaded = load_checkpoint_arrays(path, CONFIG)
    assert set(loaded) == set(params)
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    assert [p.name for p in tmp_path.iterdir()] == ["trainer.ckpt"]  # no temp files left


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="checkpoint not found"):
        load_checkpoint_arrays(tmp_path / "none.ckpt", CONFIG)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ConvertError, match=r"corrupt.ckpt: cannot read checkpoint"):
        load_checkpoint_arrays(corrupt, CONFIG)
    params = {name: np.zeros(shape, np.float32)
              for name, shape in CONFIG.parameter_shapes().items()}
    path = save_checkpoint_arrays(params, tmp_path / "ok.ckpt")
    wider = BloomConfig(vocab_size=16, hidden_size=12, n_layer=1, n_head=2)
    with pytest.raises(ConvertError, match=r"transformer.word_embeddings.weight has shape "
                                           r"\(16, 8\), config expects \(16, 12\)"):
        load_checkpoint_arrays(path, wider)
    deeper = BloomConfig(vocab_size=16, hidden_size=8, n_layer=2, n_head=2)
    with pytest.raises(ConvertError, match=r"missing tensor\(s\) \['transformer.h.1"):
        load_checkpoint_arrays(path, deeper)


def test_sharded_safetensors_folder_reads_like_one_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    whole = read_hf_weights(FIXTURES / "heads4")
    names = sorted(whole)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: whole[k] for k in keys}, str(tmp_path / shard))
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = read_hf_weights(tmp_path)
    assert set(sharded) == set(whole)
    assert all(np.array_equal(sharded[k], whole[k]) for k in whole)
