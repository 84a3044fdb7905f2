"""Run the MindSpore side of `collect-ckpt` as subprocesses (`... -m orchestrate_bloom.ckpt.tools`).

orchestrator/ never imports mindspore: each step is one `python -m orchestrate_bloom.ckpt.tools`
process that prints one JSON object, or one `error: ...` line and exit 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrate_bloom.fileio import write_atomic
from orchestrate_bloom.tool_io import ToolFailure, read_result

from orchestrator import bundle
from orchestrator.errors import CheckpointError


def run_tool(args: Sequence[str], python: str = sys.executable) -> dict[str, Any]:
    """Run `python -m orchestrate_bloom.ckpt.tools ARGS`; its JSON result.

    Raises:
        CheckpointError: the tool failed; its `error:` line is the message.
    """
    proc = bundle.run_model("ckpt.tools", args, python=python)
    try:
        return read_result(proc.stdout, proc.stderr, proc.returncode)
    except ToolFailure as exc:
        raise CheckpointError(f"ckpt.tools {args[0]} failed: {exc}") from None


def merge_strategies(src_dir: Path, out: Path) -> Path:
    """Merge per-rank strategy files (pipeline stages) into one file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run_tool(["merge-strategies", "--src", str(src_dir), "--out", str(out)])
    return out


def needed_ranks(strategy: Path | None, dst_strategy: Path | None) -> tuple[list[int], list[int]]:
    """(source ranks every destination rank together reads, destination ranks).

    One replica of every slice; no `dst_strategy`: one device (rank 0).
    """
    args = ["needed-ranks"]
    if strategy is not None:
        args += ["--strategy", str(strategy)]
    if dst_strategy is not None:
        args += ["--dst-strategy", str(dst_strategy), "--all-dst"]
    res = run_tool(args)
    return [int(r) for r in res["ranks"]], [int(r) for r in res["dst_ranks"]]


def strip(pairs: Mapping[Path, Path], keep_optimizer: bool) -> dict[str, Any]:
    """Copy checkpoints (src -> out) without optimizer state (unless `keep_optimizer`).

    One process for all files: MindSpore's import costs seconds. Returns {"results",
    "peak_rss"}.
    """
    args = ["strip"]
    for src, out in pairs.items():
        args += ["--src", str(src), "--out", str(out)]
    return run_tool([*args, "--keep-optimizer"] if keep_optimizer else args)


def transform(
    src_map: Mapping[int, Path],
    strategy: Path | None,
    out: Path,
    dst_strategy: Path | None,
    rank: int = 0,
) -> dict[str, Any]:
    """Reassemble sharded checkpoints into one device's checkpoint, or `dst_strategy`'s `rank`.

    `strategy` None: `src_map` is {0: one complete checkpoint} (pure DP).
    """
    args = ["transform", "--out", str(out), "--rank", str(rank)]
    args += ["--src-map", json.dumps({str(r): str(p) for r, p in src_map.items()})]
    if strategy is not None:
        args += ["--strategy", str(strategy)]
    if dst_strategy is not None:
        args += ["--dst-strategy", str(dst_strategy)]
    return run_tool(args)


def check(ckpt: Path, preset: str | None, model_json: str | None) -> dict[str, Any]:
    """Load `ckpt` into BloomLMHeadModel of the manifests' model section (else the preset).

    CheckpointError names every missing, unexpected or mis-shaped parameter.
    """
    args = ["check", "--ckpt", str(ckpt)]
    if model_json is not None:
        return run_tool([*args, "--model-json", model_json])
    if preset is None:
        raise CheckpointError("cannot check the merged checkpoint: no model config or preset")
    return run_tool([*args, "--preset", preset])


def write_manifest(path: Path, doc: Mapping[str, Any]) -> None:
    """Atomic JSON write."""
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", fsync=False)
