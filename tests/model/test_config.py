"""BloomConfig, presets and HF config.json reading (pure Python, no MindSpore)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from orchestrate_bloom.config import BloomConfig, ConfigError, load_preset


def test_tiny_preset_reads_defaults_then_preset() -> None:
    cfg = load_preset("tiny")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.n_layer, cfg.n_head) == (1000, 64, 2, 4)
    assert cfg.seq_length == 128 and cfg.compute_dtype == "float32"
    assert cfg.layer_norm_epsilon == 1e-5 and cfg.pad_token_id == 3  # from defaults.yaml


def test_560m_preset_matches_bloom_560m() -> None:
    cfg = load_preset("560m")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.n_layer, cfg.n_head) == (250880, 1024, 24, 16)
    assert cfg.head_dim == 64


def test_preset_overrides_and_yaml_path(tmp_path: Path) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  hidden_size: 96\n  n_head: 6\n")
    cfg = load_preset(preset, seq_length=128)
    assert (cfg.hidden_size, cfg.n_head, cfg.seq_length, cfg.n_layer) == (96, 6, 128, 24)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*tiny"):
        load_preset("huge")


def test_unknown_model_key_names_file_and_key(tmp_path: Path) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text("model:\n  hiden_size: 96\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'model\.hiden_size'"):
        load_preset(preset)


def test_validation_names_both_values() -> None:
    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by n_head=16"):
        BloomConfig(hidden_size=100, n_head=16)
    with pytest.raises(ConfigError, match=r"pad_token_id=1000 must be in \[0, vocab_size=1000\)"):
        BloomConfig(vocab_size=1000, pad_token_id=1000)
    with pytest.raises(ConfigError, match="compute_dtype='float64'"):
        BloomConfig(compute_dtype="float64")


def test_from_hf_accepts_hf_aliases(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "n_embed": 64, "num_hidden_layers": 3, "num_attention_heads": 8, "vocab_size": 512,
        "layer_norm_epsilon": 1e-6, "architectures": ["BloomForCausalLM"], "n_inner": None}))
    cfg = BloomConfig.from_hf(tmp_path)
    assert (cfg.hidden_size, cfg.n_layer, cfg.n_head, cfg.vocab_size) == (64, 3, 8, 512)
    assert cfg.layer_norm_epsilon == 1e-6
    assert BloomConfig.from_hf(tmp_path / "config.json", seq_length=99).seq_length == 99


def test_from_hf_round_trips_through_to_hf(tmp_path: Path) -> None:
    cfg = BloomConfig(vocab_size=128, hidden_size=48, n_layer=2, n_head=6)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
    assert BloomConfig.from_hf(tmp_path) == cfg


def test_from_hf_refuses_post_layernorm_residual(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"apply_residual_connection_post_layernorm": True}))
    with pytest.raises(ConfigError, match="apply_residual_connection_post_layernorm=True"):
        BloomConfig.from_hf(path)


def test_from_hf_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        BloomConfig.from_hf(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read HF config"):
        BloomConfig.from_hf(bad)


def test_parameter_shapes_count_matches_formula() -> None:
    cfg = load_preset("560m")
    h, v, n = cfg.hidden_size, cfg.vocab_size, cfg.n_layer
    total = sum(int.__mul__(*s) if len(s) == 2 else s[0] for s in cfg.parameter_shapes().values())
    assert total == v * h + 2 * h + n * (12 * h * h + 13 * h) + 2 * h
    assert total == 559_214_592  # bloom-560m's published parameter count


def test_config_module_does_not_import_mindspore() -> None:
    import subprocess
    import sys

    code = "import sys, model.config; assert 'mindspore' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
