"""Model + parallel presets as the control plane sees them: typed JobSpec, layout checks, fitting.

spec = load_job_spec("65b", ["parallel.micro_batch_num=80", "train.seq_length=512"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

from orchestrate_bloom import presets as settings
from orchestrate_bloom.train.stages import SplitError, resolve_split

from orchestrator.errors import PresetError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """Architecture numbers the control plane needs (the full config: model/config.py)."""

    vocab_size: int
    hidden_size: int
    n_layer: int
    n_head: int
    seq_length: int
    param_dtype: str
    compute_dtype: str

    @property
    def parameters(self) -> int:
        """Exact Bloom parameter count (LM head tied to the embeddings)."""
        h = self.hidden_size
        embed = self.vocab_size * h + 2 * h  # word_embeddings + word_embeddings_layernorm
        per_layer = 12 * h * h + 13 * h  # qkv 3h²+3h, dense h²+h, mlp 8h²+5h, two LNs 4h
        return embed + self.n_layer * per_layer + 2 * h  # + ln_f


@dataclass(frozen=True)
class ParallelLayout:
    """DP × MP × PP and micro-batching."""

    data_parallel: int
    model_parallel: int
    pipeline_stage: int
    micro_batch_size: int  # samples per micro-batch per data-parallel replica
    micro_batch_num: int
    optimizer_shard: bool
    recompute: bool

    @property
    def devices(self) -> int:
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_num * self.micro_batch_size * self.data_parallel


@dataclass(frozen=True)
class JobSpec:
    """A preset with overrides applied: what `plan` and `up` work from."""

    preset: str  # name (e.g. "65b") or the path of a custom preset file
    model: ModelShape
    parallel: ParallelLayout
    overrides: tuple[str, ...]  # the --set strings, as given
    sections: Mapping[str, Mapping[str, Any]] = field(hash=False)  # full merged config
    notes: tuple[str, ...] = field(default=(), hash=False)  # what the file asked that we ignore

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return self.sections[section][key]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The merged config as plain dicts (what gets rendered into job.yaml)."""
        return {s: dict(v) for s, v in self.sections.items()}


def available_presets() -> list[str]:
    """Names of the shipped presets (model/configs/*.yaml except defaults)."""
    return settings.preset_names()


def load_job_spec(preset: str, overrides: Sequence[str] = ()) -> JobSpec:
    """Load a preset by name (or path to a YAML file, ours or a MindFormers run config), apply
    `section.key=value` overrides. A MindFormers file's unhonoured keys are in `spec.notes`.

    The files and overrides are read by orchestrate_bloom.presets, the loader the trainer
    uses too (one type rule, one alias table).

    Raises:
        PresetError: unknown preset or key, a value of the wrong type, an inconsistent layout.
    """
    notes: list[str] = []
    try:
        merged = settings.load_preset_sections(preset, overrides, notes)
    except settings.SettingsError as e:
        raise PresetError(str(e)) from None
    spec = replace(_build_spec(preset, merged, tuple(overrides)), notes=tuple(notes))
    validate_shape(spec)
    return spec


def _build_spec(
    preset: str, merged: dict[str, dict[str, Any]], overrides: tuple[str, ...]
) -> JobSpec:
    m, p = merged["model"], merged["parallel"]
    for dotted in ("model.param_dtype", "model.compute_dtype"):
        section, key = dotted.split(".")
        if merged[section][key] not in DTYPE_BYTES:
            raise PresetError(
                f"{preset}: {dotted}: expected one of {', '.join(DTYPE_BYTES)}, "
                f"got {merged[section][key]!r}"
            )
    positive = [
        "model.vocab_size",
        "model.hidden_size",
        "model.n_layer",
        "model.n_head",
        "model.seq_length",
        "parallel.data_parallel",
        "parallel.model_parallel",
        "parallel.pipeline_stage",
        "parallel.micro_batch_size",
        "parallel.micro_batch_num",
        "train.steps",
        "train.log_steps",
        "train.save_steps",
    ]
    for dotted in positive:
        section, key = dotted.split(".")
        if merged[section][key] < 1:
            raise PresetError(f"{preset}: {dotted} must be >= 1, got {merged[section][key]}")
    shape, layout = _from_section(ModelShape, m), _from_section(ParallelLayout, p)
    frozen = MappingProxyType({s: MappingProxyType(dict(v)) for s, v in merged.items()})
    return JobSpec(
        preset=preset, model=shape, parallel=layout, overrides=overrides, sections=frozen
    )


T = TypeVar("T")


def _from_section(cls: type[T], section: Mapping[str, Any]) -> T:
    """A ModelShape / ParallelLayout from the preset section whose keys are its field names."""
    return cls(**{f.name: section[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def validate_shape(spec: JobSpec) -> None:
    """Architecture vs parallel layout checks that do not depend on the inventory."""
    m, p = spec.model, spec.parallel
    if m.hidden_size % m.n_head:
        raise PresetError(
            f"{spec.preset}: hidden_size={m.hidden_size} is not divisible by n_head={m.n_head}"
        )
    if m.n_head % p.model_parallel:
        raise PresetError(
            f"{spec.preset}: n_head={m.n_head} is not divisible by "
            f"model_parallel={p.model_parallel}"
        )
    if m.vocab_size % p.model_parallel:
        raise PresetError(
            f"{spec.preset}: vocab_size={m.vocab_size} is not divisible by "
            f"model_parallel={p.model_parallel}"
        )
    try:
        resolve_split(spec.value("parallel.layers_per_stage"), m.n_layer, p.pipeline_stage)
    except SplitError as e:
        raise PresetError(f"{spec.preset}: {e}") from None
    if p.pipeline_stage > 1 and p.micro_batch_num < p.pipeline_stage:
        raise PresetError(
            f"{spec.preset}: micro_batch_num={p.micro_batch_num} must be >= "
            f"pipeline_stage={p.pipeline_stage} to fill the pipeline"
        )


def fit_to_world(spec: JobSpec, world_size: int) -> tuple[ParallelLayout, str | None]:
    """The layout for `world_size` devices: DP recomputed when MP×PP divides the world.

    Returns:
        The layout and a note saying what changed (None if nothing did).

    Raises:
        PresetError: world_size is not a multiple of MP×PP (names both numbers).
    """
    p = spec.parallel
    if p.devices == world_size:
        return p, None
    mp_pp = p.model_parallel * p.pipeline_stage
    if world_size % mp_pp:
        raise PresetError(
            f"preset {spec.preset} needs DP×MP×PP = {p.data_parallel}×{p.model_parallel}×"
            f"{p.pipeline_stage} = {p.devices} devices, the inventory has {world_size}, and "
            f"{world_size} is not a multiple of MP×PP = {mp_pp}"
        )
    dp = world_size // mp_pp
    fitted = ParallelLayout(
        data_parallel=dp,
        model_parallel=p.model_parallel,
        pipeline_stage=p.pipeline_stage,
        micro_batch_size=p.micro_batch_size,
        micro_batch_num=p.micro_batch_num,
        optimizer_shard=p.optimizer_shard,
        recompute=p.recompute,
    )
    note = (
        f"data_parallel recomputed {p.data_parallel} -> {dp}: the preset is laid out for "
        f"{p.devices} devices, the inventory has {world_size} (= {dp} × MP {p.model_parallel}"
        f" × PP {p.pipeline_stage}); global batch {p.global_batch_size} -> "
        f"{fitted.global_batch_size}"
    )
    return fitted, note


def stage_parameters(shape: ModelShape, split: Sequence[int]) -> list[int]:
    """Parameters each pipeline stage holds under `split` (stages.layers_per_stage): its
    blocks, plus the embeddings (and their LayerNorm) on the first stage and ln_f on the last
    (the trainer's placement; the LM head is tied to the embeddings)."""
    h = shape.hidden_size
    per_layer = 12 * h * h + 13 * h
    counts = [n * per_layer for n in split]
    counts[0] += shape.vocab_size * h + 2 * h
    counts[-1] += 2 * h
    return counts


def memory_per_device_bytes(shape: ModelShape, layout: ParallelLayout,
                            split: Sequence[int]) -> dict[str, float]:
    """Static memory per device of the heaviest pipeline stage, activations excluded.

    With S = the parameters of the stage holding the most (stage_parameters over `split`):
    params    = S × bytes(param_dtype) / MP
    gradients = S × bytes(param_dtype) / MP
    optimizer = S × 8 (Adam m and v, fp32) / MP / (DP if optimizer_shard else 1)
    """
    shard = max(stage_parameters(shape, split)) / layout.model_parallel
    pbytes = DTYPE_BYTES[shape.param_dtype]
    opt_div = layout.data_parallel if layout.optimizer_shard else 1
    parts = {
        "parameters": shard * pbytes,
        "gradients": shard * pbytes,
        "optimizer": shard * 8 / opt_div,
    }
    parts["total"] = math.fsum(parts.values())
    return parts
