"""Presets: shipped values, validation, --set overrides, fitting to the inventory."""

from __future__ import annotations

import pytest

from orchestrator.config.presets import (
    available_presets,
    fit_to_world,
    load_job_spec,
    memory_per_device_bytes,
)
from orchestrator.errors import PresetError

SEED_TABLE = {
    # preset: hidden, layers, heads, vocab, seq, DP, MP, PP, mbs, micro-batches, devices
    "560m": (1024, 24, 16, 250880, 2048, 1, 1, 1, 1, 1, 1),
    "7.1b": (4096, 30, 32, 250880, 2048, 1, 4, 2, 4, 2, 8),
    "65b": (8192, 80, 64, 250880, 2048, 2, 4, 12, 1, 48, 96),
    "176b": (14336, 70, 112, 250880, 2048, 1, 8, 16, 1, 48, 128),
}


def test_shipped_presets() -> None:
    assert available_presets() == ["176b", "560m", "65b", "7.1b", "tiny"]


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_preset_values_match_the_seed(name: str) -> None:
    spec = load_job_spec(name)
    m, p = spec.model, spec.parallel
    got = (
        m.hidden_size,
        m.n_layer,
        m.n_head,
        m.vocab_size,
        m.seq_length,
        p.data_parallel,
        p.model_parallel,
        p.pipeline_stage,
        p.micro_batch_size,
        p.micro_batch_num,
        p.devices,
    )
    assert got == SEED_TABLE[name]
    assert p.global_batch_size == p.micro_batch_num * p.micro_batch_size * p.data_parallel


def test_tiny_is_cpu_sized() -> None:
    spec = load_job_spec("tiny")
    assert (spec.model.hidden_size, spec.model.n_layer, spec.model.n_head) == (64, 2, 4)
    assert spec.value("train.device_target") == "CPU"


def test_parameter_counts_match_bloom() -> None:
    # bigscience/bloom-560m has 559,214,592 parameters; bloom-7b1 7,069,016,064.
    assert load_job_spec("560m").model.parameters == 559_214_592
    assert load_job_spec("7.1b").model.parameters == 7_069_016_064


def test_set_overrides_with_types() -> None:
    spec = load_job_spec(
        "65b",
        [
            "parallel.micro_batch_num=80",
            "train.seq_length=512",
            "train.lr=3e-4",
            "parallel.optimizer_shard=false",
            "train.lr=1",
        ],
    )
    assert spec.parallel.micro_batch_num == 80
    assert spec.model.seq_length == 512
    assert spec.value("train.lr") == 1.0 and isinstance(spec.value("train.lr"), float)
    assert spec.parallel.optimizer_shard is False
    assert spec.overrides[0] == "parallel.micro_batch_num=80"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "parallel.micro_batch_numm=80",
            "unknown key 'parallel.micro_batch_numm' (did you mean parallel.micro_batch_num",
        ),
        ("nosection.x=1", "unknown key 'nosection.x'"),
        ("parallel.micro_batch_num=abc", "parallel.micro_batch_num: expected int, got 'abc'"),
        ("parallel.micro_batch_num=1.5", "expected int, got 1.5"),
        ("parallel.optimizer_shard=3", "expected bool, got 3"),
        ("train.lr=fast", "expected float, got 'fast'"),
        ("parallel.micro_batch_num", "expected section.key=value"),
        ("parallel.model_parallel=0", "parallel.model_parallel must be >= 1"),
        (
            "model.param_dtype=float8",
            "model.param_dtype: expected one of float32, float16, bfloat16",
        ),
    ],
)
def test_bad_overrides(override: str, fragment: str) -> None:
    with pytest.raises(PresetError) as err:
        load_job_spec("65b", [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.n_head=60", "hidden_size=8192 is not divisible by n_head=60"),
        ("parallel.model_parallel=3", "n_head=64 is not divisible by model_parallel=3"),
        ("parallel.pipeline_stage=81", "pipeline_stage=81 exceeds n_layer=80"),
        ("parallel.micro_batch_num=4", "micro_batch_num=4 must be >= pipeline_stage=12"),
    ],
)
def test_layout_validation_names_both_values(override: str, fragment: str) -> None:
    with pytest.raises(PresetError, match=fragment):
        load_job_spec("65b", [override])


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(
        PresetError, match="unknown preset '1t' .*known: 176b, 560m, 65b, 7.1b, tiny"
    ):
        load_job_spec("1t")


def test_custom_preset_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "mine.yaml"
    f.write_text("model: {hidden_size: 128, n_head: 8}\nparallel: {micro_batch_size: 2}\n")
    spec = load_job_spec(str(f))
    assert (spec.model.hidden_size, spec.model.n_head, spec.parallel.micro_batch_size) == (
        128,
        8,
        2,
    )
    f.write_text("model: {hiden_size: 128}\n")
    with pytest.raises(PresetError, match="mine.yaml: unknown key 'model.hiden_size'"):
        load_job_spec(str(f))


def test_fit_recomputes_dp_or_fails_with_both_numbers() -> None:
    spec = load_job_spec("7.1b")
    layout, note = fit_to_world(spec, 96)
    assert layout.data_parallel == 12 and note and "1 -> 12" in note
    same, none = fit_to_world(spec, 8)
    assert same == spec.parallel and none is None
    with pytest.raises(PresetError, match="128 devices, the inventory has 96"):
        fit_to_world(load_job_spec("176b"), 96)


def test_memory_formula() -> None:
    """65b: the heaviest stage is stage 0 (7 of the 80 blocks plus the embeddings), over MP=4."""
    spec = load_job_spec("65b")
    h, v = 8192, 250880
    stage0 = 7 * (12 * h * h + 13 * h) + v * h + 2 * h
    mem = memory_per_device_bytes(spec.model, spec.parallel, [7] * 8 + [6] * 4)
    shard = stage0 / 4
    assert mem["parameters"] == pytest.approx(shard * 4)
    assert mem["optimizer"] == pytest.approx(shard * 8 / 2)  # optimizer sharded over DP=2
    assert mem["total"] == pytest.approx(shard * (4 + 4 + 4))
    one_stage = memory_per_device_bytes(spec.model, spec.parallel, [80])
    assert one_stage["parameters"] == pytest.approx(spec.model.parameters / 4 * 4)


