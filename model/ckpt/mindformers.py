"""MindFormers Bloom parameter names <-> ours, and the two-way checkpoint conversion.

    python -m orchestrate_bloom.ckpt.mindformers --mindformers MF.ckpt --config tiny --out OURS.ckpt
    python -m orchestrate_bloom.ckpt.mindformers --to-mindformers --ckpt OURS.ckpt \
        --hf-config config.json --out MF.ckpt

(what `orchestrate convert-weights --mindformers / --to-mindformers` runs). MindFormers names
(MindFormers' convert_weight.py and its training both write them):

    transformer.embedding.word_embedding.embedding_table     transformer.word_embeddings.weight
    transformer.embedding.norm.{gamma,beta}                  transformer.word_embeddings_layernorm
    transformer.blocks.N.layernorm1 / layernorm2             input_ / post_attention_layernorm
    transformer.blocks.N.attention.dense1|2|3.{weight,bias}  query / key / value, split out of
        HF's fused query_key_value, laid out per head as [n_head, 3, head_dim, ...]
    transformer.blocks.N.attention.projection                self_attention.dense      [in, out]
    transformer.blocks.N.output.mapping / projection         mlp.dense_h_to_4h / 4h_to_h [in, out]
    transformer.ln_f.{gamma,beta}                            transformer.ln_f
    head.weight                                              the LM head (tied: the embedding)

Values are copied (split, concatenated, transposed), never recomputed: ours -> MindFormers ->
ours is bit-exact. Entries that are not model parameters (optimizer moments, global_step,
scale_sense, ...) are ignored and counted. convert.load_checkpoint_arrays calls
`from_mindformers` when a checkpoint has these names, so `infer --ckpt` and
`train.load_checkpoint` take either naming.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BloomConfig, ConfigError, load_preset
from .convert import ConvertError, load_checkpoint_arrays, save_checkpoint_arrays

ANCHOR = "transformer.embedding.word_embedding.embedding_table"
HEAD = "head.weight"
# MindFormers name -> ours, outside the blocks (LayerNorm gamma/beta = weight/bias).
OUTER = {
    ANCHOR: "transformer.word_embeddings.weight",
    "transformer.embedding.norm.gamma": "transformer.word_embeddings_layernorm.weight",
    "transformer.embedding.norm.beta": "transformer.word_embeddings_layernorm.bias",
    "transformer.ln_f.gamma": "transformer.ln_f.weight",
    "transformer.ln_f.beta": "transformer.ln_f.bias",
}
# Inside block N: MindFormers key -> (our key, stored transposed).
BLOCK = {
    "layernorm1.gamma": ("input_layernorm.weight", False),
    "layernorm1.beta": ("input_layernorm.bias", False),
    "layernorm2.gamma": ("post_attention_layernorm.weight", False),
    "layernorm2.beta": ("post_attention_layernorm.bias", False),
    "attention.projection.weight": ("self_attention.dense.weight", True),
    "attention.projection.bias": ("self_attention.dense.bias", False),
    "output.mapping.weight": ("mlp.dense_h_to_4h.weight", True),
    "output.mapping.bias": ("mlp.dense_h_to_4h.bias", False),
    "output.projection.weight": ("mlp.dense_4h_to_h.weight", True),
    "output.projection.bias": ("mlp.dense_4h_to_h.bias", False),
}
QKV = ("attention.dense1", "attention.dense2", "attention.dense3")  # query, key, value
FUSED = "self_attention.query_key_value"


def is_mindformers(names: Iterable[str]) -> bool:
    """Whether checkpoint entry names are MindFormers' (by name, not by file)."""
    return any(n.endswith(ANCHOR) or ".blocks.0.attention.dense1." in n for n in names)


def model_prefix(names: Iterable[str]) -> str:
    """The prefix before MindFormers' names ("" as convert_weight.py writes them; the shortest
    one when optimizer moments repeat the names, e.g. "adam_m.")."""
    found = [n[: -len(ANCHOR)] for n in names if n.endswith(ANCHOR)]
    return min(found, key=len) if found else ""


def block_pairs(i: int) -> Iterator[tuple[str, str, bool]]:
    """(MindFormers name, our name, stored transposed) of block i's parameters that map one to
    one (all but the fused query_key_value)."""
    for key, (name, transposed) in BLOCK.items():
        yield f"transformer.blocks.{i}.{key}", f"transformer.h.{i}.{name}", transposed


def shapes(config: BloomConfig) -> dict[str, tuple[int, ...]]:
    """Every MindFormers parameter name of this architecture and its shape (head.weight aside)."""
    ours = config.parameter_shapes()
    out = {mf: ours[name] for mf, name in OUTER.items()}
    h = config.hidden_size
    for i in range(config.n_layer):
        for mf, name, transposed in block_pairs(i):
            out[mf] = ours[name][::-1] if transposed else ours[name]
        for key in QKV:
            out[f"transformer.blocks.{i}.{key}.weight"] = (h, h)
            out[f"transformer.blocks.{i}.{key}.bias"] = (h,)
    return out


def _fused_qkv(arrays: Mapping[str, np.ndarray], config: BloomConfig,
               i: int) -> dict[str, np.ndarray]:
    """Block i's MindFormers dense1/2/3 (query, key, value) -> our fused query_key_value, whose
    rows interleave q, k, v per head."""
    n, d, mf = config.n_head, config.head_dim, f"transformer.blocks.{i}."
    w = [arrays[f"{mf}{k}.weight"].reshape(n, 1, d, -1) for k in QKV]
    b = [arrays[f"{mf}{k}.bias"].reshape(n, 1, d) for k in QKV]
    return {f"transformer.h.{i}.{FUSED}.weight": np.concatenate(w, axis=1).reshape(3 * n * d, -1),
            f"transformer.h.{i}.{FUSED}.bias": np.concatenate(b, axis=1).reshape(3 * n * d)}


def _split_qkv(arrays: Mapping[str, np.ndarray], config: BloomConfig,
               i: int) -> dict[str, np.ndarray]:
    """Block i's fused query_key_value -> MindFormers dense1/2/3 (the inverse of _fused_qkv)."""
    n, d, mf = config.n_head, config.head_dim, f"transformer.blocks.{i}."
    w = arrays[f"transformer.h.{i}.{FUSED}.weight"].reshape(n, 3, d, -1)
    b = arrays[f"transformer.h.{i}.{FUSED}.bias"].reshape(n, 3, d)
    out = {}
    for j, key in enumerate(QKV):
        out[f"{mf}{key}.weight"] = w[:, j].reshape(n * d, -1)
        out[f"{mf}{key}.bias"] = b[:, j].reshape(n * d)
    return out


def from_mindformers(arrays: dict[str, np.ndarray], config: BloomConfig,
                     source: str) -> dict[str, np.ndarray]:
    """MindFormers-named model parameters (prefix removed) -> ours.

    Raises:
        ConvertError: a missing parameter, a shape that is not the expected one (naming the
            parameter, expected and found shape), an untied head.
    """
    expected = shapes(config)
    for name, shape in expected.items():
        if name not in arrays:
            raise ConvertError(f"{source}: missing parameter {name} (expected shape {shape})")
        if tuple(arrays[name].shape) != shape:
            raise ConvertError(f"{source}: {name}: expected shape {shape}, found "
                               f"{tuple(arrays[name].shape)}")
    ours = {name: arrays[mf] for mf, name in OUTER.items()}
    for i in range(config.n_layer):
        for mf_name, name, transposed in block_pairs(i):
            ours[name] = arrays[mf_name].T if transposed else arrays[mf_name]
        ours.update(_fused_qkv(arrays, config, i))
    head = arrays.get(HEAD)
    if head is not None and not np.array_equal(head, ours["transformer.word_embeddings.weight"]):
        raise ConvertError(f"{source}: {HEAD} differs from {ANCHOR}; only tied LM heads are "
                           "supported")
    return {name: np.ascontiguousarray(ours[name]) for name in config.parameter_shapes()}


def to_mindformers(arrays: dict[str, np.ndarray], config: BloomConfig) -> dict[str, np.ndarray]:
    """Our parameters -> MindFormers names and layouts (head.weight written, tied)."""
    out = {mf: arrays[name] for mf, name in OUTER.items()}
    for i in range(config.n_layer):
        for mf_name, name, transposed in block_pairs(i):
            out[mf_name] = arrays[name].T if transposed else arrays[name]
        out.update(_split_qkv(arrays, config, i))
    out[HEAD] = arrays["transformer.word_embeddings.weight"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_checkpoint(params: Mapping[str, Any], config: BloomConfig,
                    source: str) -> tuple[dict[str, np.ndarray], int]:
    """Our arrays from a loaded MindFormers checkpoint ({name: Parameter}), and how many
    entries were not model parameters (optimizer moments, global_step, ...) and were ignored."""
    prefix = model_prefix(params)
    wanted = set(shapes(config)) | {HEAD}
    arrays = {name[len(prefix):]: value.asnumpy() for name, value in params.items()
              if name.startswith(prefix) and name[len(prefix):] in wanted}
    return from_mindformers(arrays, config, source), len(params) - len(arrays)


def read_mindformers(path: Path, config: BloomConfig) -> tuple[dict[str, np.ndarray], int]:
    """`from_checkpoint` of a file (MindFormers names required)."""
    import mindspore as ms

    if not path.is_file():
        raise ConvertError(f"{path}: checkpoint not found")
    try:
        params = ms.load_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, TypeError) as e:
        raise ConvertError(f"{path}: cannot read checkpoint: {str(e).strip()[:200]}") from e
    if not is_mindformers(params):
        raise ConvertError(f"{path}: no MindFormers parameter names (no {ANCHOR})")
    return from_checkpoint(params, config, str(path))


# ---------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """Entry point; known errors become one line on stderr and exit code 1."""
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.ckpt.mindformers",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--mindformers", type=Path, help="MindFormers checkpoint to import.")
    way.add_argument("--to-mindformers", action="store_true", help="Export our --ckpt.")
    parser.add_argument("--ckpt", type=Path, help="Our checkpoint (with --to-mindformers).")
    parser.add_argument("--out", type=Path, required=True, help="Checkpoint to write.")
    arch = parser.add_mutually_exclusive_group(required=True)
    arch.add_argument("--config", help="Preset, preset YAML or MindFormers run config.")
    arch.add_argument("--hf-config", type=Path, help="HF config.json with the architecture.")
    args = parser.parse_args(argv)
    if args.to_mindformers and args.ckpt is None:
        parser.error("--to-mindformers needs --ckpt FILE")
    os.environ.setdefault("GLOG_v", "3")
    try:
        config = (load_preset(args.config) if args.config is not None
                  else BloomConfig.from_hf(args.hf_config))
        if args.to_mindformers:
            arrays = to_mindformers(load_checkpoint_arrays(args.ckpt, config), config)
            ignored = 0
        else:
            arrays, ignored = read_mindformers(args.mindformers, config)
        save_checkpoint_arrays(arrays, args.out)
    except (ConvertError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    naming = "MindFormers" if args.to_mindformers else "orchestrate"
    extra = f"; ignored {ignored} entries that are not model parameters" if ignored else ""
    print(f"wrote {args.out} ({len(arrays)} parameters, {naming} names{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
