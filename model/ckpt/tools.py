"""MindSpore-side checkpoint work for `orchestrate collect-ckpt`, run as a subprocess.

The control plane (orchestrator/) never imports mindspore; it runs these instead:

    python -m orchestrate_bloom.ckpt.tools merge-strategies --src DIR --out FILE
    python -m orchestrate_bloom.ckpt.tools needed-ranks --strategy FILE \
        [--dst-strategy FILE [--all-dst]]
    python -m orchestrate_bloom.ckpt.tools strip --src IN.ckpt --out OUT.ckpt [--src ... --out ...]
        [--keep-optimizer]
    python -m orchestrate_bloom.ckpt.tools transform --src-map JSON --strategy FILE --out OUT.ckpt
        [--dst-strategy FILE] [--rank 0]
    python -m orchestrate_bloom.ckpt.tools check --ckpt FILE (--preset NAME | --model-json JSON)

Every subcommand prints one JSON object on stdout (the control plane parses it) and exits 0,
or prints one line `error: ...` on stderr and exits 1. Output files are written to a temp
name and renamed, so a failed run leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_target
from ..tool_io import ToolError, peak_rss_bytes, tool_main
from .strategy import merge_strategies, needed_ranks
from .transform import transform

OPTIMIZER_PREFIXES = (
    "adam_m.",
    "adam_v.",
    "moments.",
    "accu_grads.",
    "accu_gradients.",
)
OPTIMIZER_NAMES = frozenset(
    {
        "global_step",
        "learning_rate",
        "beta1_power",
        "beta2_power",
        "scale_sense",
        "current_iterator_step",
        "last_overflow_iterator_step",
        "epoch_num",
        "step_num",
        "loss_scale",
    }
)


def is_training_state(name: str) -> bool:
    """True for optimizer moments, gradient accumulators and step/scale counters."""
    return name in OPTIMIZER_NAMES or name.startswith(OPTIMIZER_PREFIXES)


def strip(src: Path, out: Path, keep_optimizer: bool = False) -> dict[str, Any]:
    """Copy `src` to `out` without optimizer state, record by record (one block in memory)."""
    from . import stream as ckpt_stream

    try:
        entries = ckpt_stream.scan(src)
    except ckpt_stream.UnsupportedCkpt:
        return _strip_loaded(src, out, keep_optimizer)
    kept = [e for e in ckpt_stream.iter_entries(entries)
            if keep_optimizer or not is_training_state(e.name)]
    if not kept:
        raise ToolError(f"{src}: no parameters left after stripping optimizer state")
    with (atomic_target(out, mode=0o644) as tmp, open(src, "rb") as fh,
          ckpt_stream.CkptWriter(tmp) as writer):
        for entry in kept:
            writer.copy_records(fh, entry)
    return {
        "out": str(out),
        "kept": len(kept),
        "dropped": len(entries) - len(kept),
        "peak_rss": peak_rss_bytes(),
    }


def _strip_loaded(src: Path, out: Path, keep_optimizer: bool) -> dict[str, Any]:
    """`strip` through load_checkpoint/save_checkpoint, for files ckpt_stream cannot read."""
    import mindspore as ms

    dropped: list[str] = []

    def keep(name: str) -> bool:
        if keep_optimizer or not is_training_state(name):
            return True
        dropped.append(name)
        return False

    params = ms.load_checkpoint(str(src), choice_func=keep)
    if not params:
        raise ToolError(f"{src}: no parameters left after stripping optimizer state")
    with atomic_target(out, mode=0o644) as tmp:
        ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(tmp))
    return {
        "out": str(out),
        "kept": len(params),
        "dropped": len(dropped),
        "peak_rss": peak_rss_bytes(),
    }


def compare_params(
    expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]
) -> list[str]:
    """Problems between a model's parameter shapes and a checkpoint's, one line each."""
    problems = [f"missing parameter {n} {list(s)}" for n, s in expected.items() if n not in got]
    problems += [
        f"unexpected parameter {n} {list(s)}"
        for n, s in got.items()
        if n not in expected and not is_training_state(n)
    ]
    problems += [
        f"wrong shape for {n}: checkpoint {list(got[n])}, model {list(s)}"
        for n, s in expected.items()
        if n in got and tuple(got[n]) != tuple(s)
    ]
    return problems


def _config(preset: str | None, model_json: str | None) -> Any:
    from ..config import BloomConfig, load_preset

    if model_json:
        return BloomConfig.from_dict(json.loads(model_json), "the manifests' model section")
    if preset:
        return load_preset(preset)
    raise ToolError("check needs --preset or --model-json")


def bloom_factory(config: Any) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """BloomLMHeadModel(config) and its parameter shapes by name."""
    from ..bloom import BloomLMHeadModel

    net = BloomLMHeadModel(config)
    return net, {p.name: tuple(p.shape) for p in net.get_parameters()}


def model_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of BloomLMHeadModel for a model section."""
    from ..config import BloomConfig

    return BloomConfig.from_dict(dict(model), "model").parameter_shapes()


NUMPY_TYPES = {
    "Float16": "float16", "Float32": "float32", "Float64": "float64", "Int8": "int8",
    "Int16": "int16", "Int32": "int32", "Int64": "int64", "UInt8": "uint8", "UInt16": "uint16",
    "UInt32": "uint32", "UInt64": "uint64", "Bool": "bool",
}


def _refuse_oversized_model(ckpt: Path, config: Any) -> None:
    """ToolError before building a model the checkpoint cannot hold (>= 2 bytes a parameter):
    the model section comes from a node's manifest and must not size an allocation."""
    count = getattr(config, "parameter_count", None)
    size = ckpt.stat().st_size
    if isinstance(count, int) and count * 2 > size + (1 << 20):
        raise ToolError(f"{ckpt}: the model section describes {count} "
                        f"parameters, more than the {size}-byte checkpoint can hold; not built")


def check(
    ckpt: Path, config: Any, model_factory: Callable[[Any], Any] = bloom_factory
) -> dict[str, Any]:
    """Load `ckpt` into the model; fail naming missing/unexpected/mis-shaped parameters.

    Shapes come from the file's framing; values are then read one parameter at a time into
    the model's parameters (strict: same type), so memory holds the model plus one
    parameter, not the model plus the whole loaded checkpoint.
    """
    import numpy as np

    from . import stream as ckpt_stream

    _refuse_oversized_model(ckpt, config)
    try:
        entries = ckpt_stream.scan(ckpt)
    except ckpt_stream.UnsupportedCkpt:
        return _check_loaded(ckpt, config, model_factory)
    if any(e.dtype not in NUMPY_TYPES for e in entries.values()):
        return _check_loaded(ckpt, config, model_factory)
    import mindspore as ms

    net, expected = model_factory(config)
    _raise_problems(ckpt, compare_params(expected, {n: e.dims for n, e in entries.items()}))
    params = {p.name: p for p in net.get_parameters()}
    with open(ckpt, "rb") as fh:
        for name in expected:
            entry, param = entries[name], params[name]
            data = np.empty(entry.dims, dtype=NUMPY_TYPES[entry.dtype])
            ckpt_stream.read_into(fh, entry, data.data.cast("B"))
            tensor = ms.Tensor.from_numpy(data)
            if tensor.dtype != param.dtype:
                raise ToolError(f"{ckpt} does not fit the model: wrong type for {name}: "
                                f"checkpoint {entry.dtype}, model {param.dtype}")
            param.set_data(tensor, param.sliced)
            if hasattr(param, "init_param") and not param.init_param:
                param.init_param = True
            del data, tensor
    return {"ckpt": str(ckpt), "parameters": len(expected), "peak_rss": peak_rss_bytes()}


def _raise_problems(ckpt: Path, problems: Sequence[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ToolError(f"{ckpt} does not fit the model: " + "; ".join(problems[:5]) + more)


def _check_loaded(ckpt: Path, config: Any, model_factory: Callable[[Any], Any]) -> dict[str, Any]:
    """`check` through load_checkpoint, for files ckpt_stream cannot read (e.g. bfloat16)."""
    import mindspore as ms

    net, expected = model_factory(config)
    params = ms.load_checkpoint(str(ckpt))
    _raise_problems(ckpt, compare_params(expected, {n: tuple(p.shape)
                                                    for n, p in params.items()}))
    ms.load_param_into_net(net, {n: params[n] for n in expected}, strict_load=True)
    return {"ckpt": str(ckpt), "parameters": len(expected), "peak_rss": peak_rss_bytes()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrate_bloom.ckpt.tools", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge-strategies", help="merge per-rank strategy files")
    m.add_argument("--src", type=Path, required=True, help="folder of ckpt_strategy_rank_*.ckpt")
    m.add_argument("--out", type=Path, required=True, help="merged strategy file")
    n = sub.add_parser("needed-ranks", help="source ranks a transform reads")
    n.add_argument("--strategy", type=Path, default=None)
    n.add_argument("--dst-strategy", type=Path, default=None)
    n.add_argument("--all-dst", action="store_true", help="union over every destination rank")
    s = sub.add_parser("strip", help="drop optimizer state from a checkpoint")
    s.add_argument("--src", type=Path, action="append", required=True, help="repeatable")
    s.add_argument("--out", type=Path, action="append", required=True, help="one per --src")
    s.add_argument("--keep-optimizer", action="store_true")
    t = sub.add_parser("transform", help="sharded checkpoints -> one device (or --dst-strategy)")
    t.add_argument("--src-map", required=True, help='JSON {"rank": "path.ckpt", ...}')
    t.add_argument("--strategy", type=Path, default=None, help="merged source strategy")
    t.add_argument("--dst-strategy", type=Path, default=None)
    t.add_argument("--rank", type=int, default=0, help="destination rank to produce")
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check", help="load a checkpoint into the preset's BloomLMHeadModel")
    c.add_argument("--ckpt", type=Path, required=True)
    c.add_argument("--preset", default=None, help="preset name or YAML")
    c.add_argument("--model-json", default=None, help="model section as JSON (from a manifest)")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """One subcommand's result."""
    if args.cmd == "merge-strategies":
        return merge_strategies(args.src, args.out)
    if args.cmd == "needed-ranks":
        return needed_ranks(args.strategy, args.dst_strategy, None if args.all_dst else 0)
    if args.cmd == "strip":
        if len(args.src) != len(args.out):
            raise ToolError(f"{len(args.src)} --src but {len(args.out)} --out")
        pairs = zip(args.src, args.out, strict=True)
        runs = [strip(s, o, args.keep_optimizer) for s, o in pairs]
        return {"results": runs, "peak_rss": peak_rss_bytes()}
    if args.cmd == "transform":
        src_map = {int(k): Path(v) for k, v in json.loads(args.src_map).items()}
        return transform(src_map, args.strategy, args.out, args.dst_strategy, args.rank)
    return check(args.ckpt, _config(args.preset, args.model_json))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return tool_main(lambda: _run(args), (ToolError, OSError, ValueError, RuntimeError, TypeError))


if __name__ == "__main__":
    sys.exit(main())
