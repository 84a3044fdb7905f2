"""Bloom architecture config: one frozen dataclass with HF's field names, plus preset loading.

    from .config import BloomConfig, load_preset
    cfg = load_preset("tiny")                      # model/configs/defaults.yaml + tiny.yaml
    cfg = BloomConfig.from_hf("bloom-560m/config.json")
    cfg = dataclasses.replace(cfg, seq_length=512)  # configs are frozen; derive new ones

No mindspore import here: the control plane and the data tools read configs too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import presets

DTYPES = ("float32", "float16", "bfloat16")
# HF config.json keys that mean one of our fields (HF's BloomConfig.attribute_map and n_embed).
HF_ALIASES = {"n_embed": "hidden_size", "num_hidden_layers": "n_layer",
              "num_attention_heads": "n_head"}
# HF keys that must have their default value because we implement only that behaviour.
HF_REQUIRED = {"apply_residual_connection_post_layernorm": False}


class ConfigError(ValueError):
    """A config value or file is invalid; the message names the file/key and the bad value."""


@dataclass(frozen=True)
class BloomConfig:
    """Bloom architecture (HF field names) plus sequence length and dtypes.

    Parameter count with the tied LM head: V*h + 2h + n_layer*(12h² + 13h) + 2h.
    """

    vocab_size: int = 250880  # rows of the word embedding (= LM head, tied)
    hidden_size: int = 1024  # model width h; the MLP is 4h wide
    n_layer: int = 24  # transformer blocks
    n_head: int = 16  # attention heads; head_dim = hidden_size / n_head
    layer_norm_epsilon: float = 1e-5  # eps of every LayerNorm
    hidden_dropout: float = 0.0  # dropout on attention/MLP outputs before the residual add
    attention_dropout: float = 0.0  # dropout on attention probabilities
    initializer_range: float = 0.02  # std of the normal init of weights
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 3
    seq_length: int = 2048  # longest sequence trained / generated (ALiBi has no hard limit)
    param_dtype: str = "float32"  # dtype parameters are stored in
    compute_dtype: str = "float32"  # dtype of matmuls; softmax and LayerNorm stay float32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layer", "n_head", "seq_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.hidden_size % self.n_head:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by "
                              f"n_head={self.n_head}")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value!r} must be in [0, 1)")
        if not isinstance(self.layer_norm_epsilon, (int, float)) or self.layer_norm_epsilon <= 0:
            raise ConfigError(f"layer_norm_epsilon={self.layer_norm_epsilon!r} must be > 0")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}={value!r} must be in [0, vocab_size={self.vocab_size})")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be one of {DTYPES}")

    @property
    def parameter_count(self) -> int:
        """Parameters of BloomLMHeadModel (tied head): V*h + 4h + n_layer*(12h² + 13h)."""
        h = self.hidden_size
        return self.vocab_size * h + 4 * h + self.n_layer * (12 * h * h + 13 * h)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.n_head

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name of BloomLMHeadModel (the checkpoint names) and its shape."""
        h, v = self.hidden_size, self.vocab_size
        layer = {"input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
                 "self_attention.query_key_value.weight": (3 * h, h),
                 "self_attention.query_key_value.bias": (3 * h,),
                 "self_attention.dense.weight": (h, h), "self_attention.dense.bias": (h,),
                 "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
                 "mlp.dense_h_to_4h.weight": (4 * h, h), "mlp.dense_h_to_4h.bias": (4 * h,),
                 "mlp.dense_4h_to_h.weight": (h, 4 * h), "mlp.dense_4h_to_h.bias": (h,)}
        shapes = {"transformer.word_embeddings.weight": (v, h),
                  "transformer.word_embeddings_layernorm.weight": (h,),
                  "transformer.word_embeddings_layernorm.bias": (h,)}
        for i in range(self.n_layer):
            shapes.update({f"transformer.h.{i}.{k}": s for k, s in layer.items()})
        shapes["transformer.ln_f.weight"] = (h,)
        shapes["transformer.ln_f.bias"] = (h,)
        return shapes

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> BloomConfig:
        """Build from a mapping of our field names; unknown keys are errors naming `source`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown model key(s) {unknown}; known: {sorted(names)}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e

    @classmethod
    def from_hf(cls, path: str | Path, **overrides: Any) -> BloomConfig:
        """Read a HF `config.json` (a file, or a directory holding one).

        HF keys we do not model (architectures, use_cache, …) are ignored, except those in
        HF_REQUIRED, which must keep the only value we implement.

        Args:
            path: config.json or its directory.
            **overrides: our fields to set instead of the file's/defaults (e.g. seq_length).

        Raises:
            ConfigError: missing/corrupt file, unsupported or invalid values.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: no such file") from e
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read HF config: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        for required, wanted in HF_REQUIRED.items():
            if raw.get(required, wanted) != wanted:
                raise ConfigError(f"{path}: {required}={raw[required]!r} is not supported "
                                  f"(only {wanted!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for hf_key, value in raw.items():
            key = HF_ALIASES.get(hf_key, hf_key)
            if key in names and value is not None:
                values[key] = value
        values.update(overrides)
        return cls.from_dict(values, str(path))

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` contents for this architecture (BloomForCausalLM)."""
        return {
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "apply_residual_connection_post_layernorm": False,
            "use_cache": True,
        }


def preset_names() -> list[str]:
    """Names of the shipped presets (files in model/configs other than defaults.yaml)."""
    return presets.preset_names()


def load_preset(name_or_path: str | Path, **overrides: Any) -> BloomConfig:
    """BloomConfig of a preset: its `model:` section as presets.load_preset_sections reads it.

    Args:
        name_or_path: a shipped preset name ("tiny", "560m", …) or a path to a preset YAML.
        **overrides: our field names to set last (e.g. seq_length=128).

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or invalid value.
    """
    try:
        path = presets.preset_file(name_or_path)
        values = presets.load_preset_sections(path)["model"]
    except presets.SettingsError as e:
        raise ConfigError(str(e)) from None
    values.update(overrides)
    return BloomConfig.from_dict(values, str(path))
