"""Convert Bloom weights between HF transformers and our MindSpore checkpoint, both ways.

    python -m orchestrate_bloom.ckpt.convert --hf DIR --out bloom.ckpt
    python -m orchestrate_bloom.ckpt.convert --to-hf --ckpt bloom.ckpt --config tiny --out DIR
    python -m orchestrate_bloom.ckpt.convert --to-hf --ckpt bloom.ckpt --hf-config config.json \
        --out DIR

DIR holds `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`, or
`pytorch_model.bin`). HF names may carry the `transformer.` prefix or not; `lm_head.weight` is
optional (it is tied to the word embeddings). Every name goes through NAME_MAP/LAYER_NAME_MAP;
unknown or missing tensors and shape mismatches are errors naming them. `.bin` files are read
without torch (a restricted unpickler that only rebuilds tensors); every reader checks offsets,
shapes, strides, dtypes and shard names against the file (model/ckpt/weights_safe.py).
`--to-hf` writes `config.json` + `model.safetensors` the way HF's save_pretrained does (no lm_head).
Values are copied, never recomputed: HF -> ours -> HF is bit-exact.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import BloomConfig, ConfigError, load_preset
from ..fileio import atomic_target
from .weights_safe import (  # noqa: F401 - ConvertError is this module's error too
    ConvertError,
    index_shards,
    read_safetensors,
    read_torch_bin,
)

log = logging.getLogger(__name__)

HF_PREFIX = "transformer."
# HF name (without "transformer.") -> our parameter name, for tensors outside the blocks.
NAME_MAP = {
    "word_embeddings.weight": "transformer.word_embeddings.weight",
    "word_embeddings_layernorm.weight": "transformer.word_embeddings_layernorm.weight",
    "word_embeddings_layernorm.bias": "transformer.word_embeddings_layernorm.bias",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
}
# HF name inside block i ("h.{i}." + key) -> our name inside block i ("transformer.h.{i}." + value).
LAYER_NAME_MAP = {
    "input_layernorm.weight": "input_layernorm.weight",
    "input_layernorm.bias": "input_layernorm.bias",
    "self_attention.query_key_value.weight": "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias": "self_attention.query_key_value.bias",
    "self_attention.dense.weight": "self_attention.dense.weight",
    "self_attention.dense.bias": "self_attention.dense.bias",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "post_attention_layernorm.bias": "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight": "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias": "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight": "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias": "mlp.dense_4h_to_h.bias",
}
TIED_HEAD = "lm_head.weight"
OUT_DTYPES = {"float32": np.float32, "float16": np.float16}


def name_map(config: BloomConfig) -> dict[str, str]:
    """HF name (no prefix) -> our parameter name, for every tensor of this architecture."""
    names = dict(NAME_MAP)
    for i in range(config.n_layer):
        for hf_key, our_key in LAYER_NAME_MAP.items():
            names[f"h.{i}.{hf_key}"] = f"transformer.h.{i}.{our_key}"
    return names


# ---------------------------------------------------------------------------- reading HF files

def read_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a HF model folder (safetensors, sharded safetensors or pytorch_model.bin)."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        tensors: dict[str, np.ndarray] = {}
        for shard in index_shards(index):
            tensors.update(read_safetensors(shard))
        return tensors
    if binary.is_file():
        return read_torch_bin(binary)
    raise ConvertError(f"{folder}: no model.safetensors, model.safetensors.index.json or "
                       "pytorch_model.bin")


# ---------------------------------------------------------------------------- mapping

def check_shapes(arrays: dict[str, np.ndarray], config: BloomConfig, source: str) -> None:
    """Every expected parameter present with its shape; raises naming the first problem."""
    shapes = config.parameter_shapes()
    missing = [n for n in shapes if n not in arrays]
    if missing:
        raise ConvertError(f"{source}: missing tensor(s) {missing[:5]}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for name, shape in shapes.items():
        if tuple(arrays[name].shape) != shape:
            raise ConvertError(f"{source}: {name} has shape {tuple(arrays[name].shape)}, "
                               f"config expects {shape}")


def hf_to_ours(tensors: dict[str, np.ndarray], config: BloomConfig,
               source: str = "HF weights") -> dict[str, np.ndarray]:
    """Rename HF tensors to our parameter names (values untouched).

    Raises:
        ConvertError: unknown or missing tensors, shape mismatches, an untied lm_head.
    """
    names = name_map(config)
    ours: dict[str, np.ndarray] = {}
    head = None
    unknown = []
    for hf_name, array in tensors.items():
        key = hf_name.removeprefix(HF_PREFIX)
        if key == TIED_HEAD:
            head = array
        elif key in names:
            ours[names[key]] = array
        else:
            unknown.append(hf_name)
    if unknown:
        raise ConvertError(f"{source}: unknown tensor(s) {sorted(unknown)[:5]} for "
                           f"n_layer={config.n_layer}")
    check_shapes(ours, config, source)
    embeddings = ours["transformer.word_embeddings.weight"]
    if head is not None and not np.array_equal(head, embeddings):
        raise ConvertError(f"{source}: {TIED_HEAD} differs from word_embeddings.weight; "
                           "only tied LM heads are supported")
    return ours


def ours_to_hf(arrays: dict[str, np.ndarray], config: BloomConfig) -> dict[str, np.ndarray]:
    """Our parameters -> HF names with the `transformer.` prefix (no lm_head, as HF saves)."""
    check_shapes(arrays, config, "checkpoint")
    inverse = {ours: HF_PREFIX + hf for hf, ours in name_map(config).items()}
    return {inverse[name]: arrays[name] for name in config.parameter_shapes()}


# ---------------------------------------------------------------------------- our checkpoints

def _strip_wrapper_prefix(names: list[str]) -> str:
    """The prefix a training wrapper put before our names ("" if none), e.g. "network."."""
    anchor = "transformer.word_embeddings.weight"
    for name in names:
        if name.endswith(anchor):
            return name[: -len(anchor)]
    return ""


def load_checkpoint_arrays(path: str | Path, config: BloomConfig) -> dict[str, np.ndarray]:
    """Model parameters of a MindSpore .ckpt (ours, the trainer's or a merged one).

    Optimizer state and step counters are ignored; a wrapper prefix (e.g. "network.") is
    stripped; MindFormers' parameter names are mapped (mindformers_ckpt). Every model
    parameter must be present with the config's shape.

    Raises:
        ConvertError: missing/corrupt file, missing parameter, shape mismatch (both shapes).
    """
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: checkpoint not found")
    try:
        params = ms.load_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: cannot read checkpoint: {reason}") from e
    from . import mindformers as mindformers_ckpt  # imports this module

    if mindformers_ckpt.is_mindformers(params):  # MindFormers' names: mapped there
        return mindformers_ckpt.from_checkpoint(params, config, str(path))[0]
    prefix = _strip_wrapper_prefix(list(params))
    arrays = {}
    for name, value in params.items():
        if name.startswith(prefix + "transformer."):
            arrays[name[len(prefix):]] = value.asnumpy()
    expected = config.parameter_shapes()
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise ConvertError(f"{path}: parameter(s) {unknown[:3]} do not exist for this config "
                           f"(n_layer={config.n_layer})")
    check_shapes(arrays, config, str(path))
    return arrays


def _atomic_write(target: Path, write: Callable[[str], None], mode: int | None = 0o644) -> None:
    """Call write(tmp_path) then move the temp file over `target`; no partial file is left."""
    with atomic_target(target, mode, create=True) as tmp:
        write(str(tmp))


def save_checkpoint_arrays(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write arrays as a MindSpore .ckpt, atomically (names in our order)."""
    import mindspore as ms

    path = Path(path)
    entries = [{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()]
    _atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp),
                  mode=None)  # MindSpore makes checkpoints read-only itself
    return path


def convert_hf_to_ckpt(hf_dir: str | Path, out: str | Path) -> tuple[BloomConfig, Path]:
    """HF folder -> our .ckpt; returns the architecture read from config.json and the path."""
    folder = Path(hf_dir)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a directory")
    config = BloomConfig.from_hf(folder / "config.json")
    arrays = hf_to_ours(read_hf_weights(folder), config, str(folder))
    return config, save_checkpoint_arrays(arrays, out)


def convert_ckpt_to_hf(ckpt: str | Path, config: BloomConfig, out_dir: str | Path,
                       dtype: str = "float32") -> Path:
    """Our .ckpt -> HF folder (config.json + model.safetensors); returns the folder."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    arrays = load_checkpoint_arrays(ckpt, config)
    cast = OUT_DTYPES[dtype]
    tensors = {k: np.ascontiguousarray(v.astype(cast, copy=False))
               for k, v in ours_to_hf(arrays, config).items()}
    _atomic_write(out / "model.safetensors",
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n"

    def write_config(tmp: str) -> None:
        Path(tmp).write_text(text)

    _atomic_write(out / "config.json", write_config)
    return out


# ---------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.ckpt.convert",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", type=Path, help="HF model folder to read (default direction).")
    parser.add_argument("--out", type=Path, required=True,
                        help="Output .ckpt (HF -> ours) or folder (--to-hf).")
    parser.add_argument("--to-hf", action="store_true", help="Convert our --ckpt to a HF folder.")
    parser.add_argument("--ckpt", type=Path, help="Our checkpoint to read (with --to-hf).")
    parser.add_argument("--config", help="Preset name or YAML giving the architecture (--to-hf).")
    parser.add_argument("--hf-config", type=Path, help="HF config.json giving the architecture.")
    parser.add_argument("--dtype", choices=sorted(OUT_DTYPES), default="float32",
                        help="Tensor dtype written with --to-hf.")
    args = parser.parse_args(argv)
    if args.to_hf:
        if args.ckpt is None or (args.config is None) == (args.hf_config is None):
            parser.error("--to-hf needs --ckpt and exactly one of --config / --hf-config")
    elif args.hf is None:
        parser.error("give --hf DIR (or --to-hf --ckpt FILE)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; known errors become one line on stderr and exit code 1."""
    args = parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    try:
        if args.to_hf:
            config = (load_preset(args.config) if args.config is not None
                      else BloomConfig.from_hf(args.hf_config))
            out = convert_ckpt_to_hf(args.ckpt, config, args.out, args.dtype)
            print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
        else:
            config, out = convert_hf_to_ckpt(args.hf, args.out)
            print(f"wrote {out} (hidden_size={config.hidden_size}, n_layer={config.n_layer}, "
                  f"n_head={config.n_head}, vocab_size={config.vocab_size})")
    except (ConvertError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
