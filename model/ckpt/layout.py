"""The checkpoint layout on disk, the one definition: names, "complete step", newest common step.

    output/checkpoint/rank_<r>/bloom_rank_<r>-<step>.ckpt   (written to a temp name, then renamed)
    output/checkpoint/rank_<r>/bloom_rank_<r>-<step>.json   (manifest, written after the ckpt)
    output/strategy/ckpt_strategy_rank_<r>.ckpt             (semi-auto parallel layouts)

A step is *complete* on a rank when its manifest exists, parses, matches the parallel layout and
the checkpoint file (a regular file, not a link) has the recorded size and sha256. `--resume`
takes the newest step complete on every rank (newest_common), so a crash mid-save (no manifest,
or a truncated file) is skipped. The trainer, `collect-ckpt` (orchestrator/ckpt/select.py) and
`resume --exclude-node` use these names and rules; on a node the last runs, from the staged
code (standard library only):

    python -m orchestrate_bloom.ckpt.layout steps --job-dir DIR --layout JSON --rank R ...
    python -m orchestrate_bloom.ckpt.layout adopt --job-dir DIR --step S --layout JSON \
        --old-layout JSON --pair NEW:SRC ...

`steps` prints {"<rank>": [complete steps]}; `adopt` gives rank NEW a copy of rank SRC's
checkpoint of step S (read-only, same bytes) with a manifest for the new layout
(`converted_from` names the source) and prints {"adopted": N}. Errors: `error: ...`, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

from ..fileio import atomic_target, sha256_file, write_atomic
from ..tool_io import tool_main

CKPT_RE = re.compile(r"^bloom_rank_([0-9]{1,9})-([0-9]{1,9})\.ckpt\Z")
MANIFEST_RE = re.compile(r"^bloom_rank_([0-9]{1,9})-([0-9]{1,9})\.json\Z")
STRATEGY_RE = re.compile(r"^ckpt_strategy_rank_([0-9]{1,9})\.ckpt\Z")


P = TypeVar("P", bound=PurePath)  # local Path, or a node's PurePosixPath (collect-ckpt)


def rank_dir(output_dir: P, rank: int) -> P:
    """`output/checkpoint/rank_<r>`: one rank's checkpoints and manifests."""
    return output_dir / "checkpoint" / f"rank_{rank}"


def ckpt_name(rank: int, step: int) -> str:
    return f"bloom_rank_{rank}-{step}.ckpt"


def manifest_name(rank: int, step: int) -> str:
    return f"bloom_rank_{rank}-{step}.json"


def ckpt_path(output_dir: P, rank: int, step: int) -> P:
    return rank_dir(output_dir, rank) / ckpt_name(rank, step)


def manifest_path(output_dir: P, rank: int, step: int) -> P:
    return rank_dir(output_dir, rank) / manifest_name(rank, step)


def strategy_dir(output_dir: P) -> P:
    return output_dir / "strategy"


def strategy_path(output_dir: P, rank: int) -> P:
    return strategy_dir(output_dir) / f"ckpt_strategy_rank_{rank}.ckpt"


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", fsync=False)


def save(write: Callable[[Path], None], output_dir: Path, rank: int, step: int,
         meta: Mapping[str, Any]) -> Path:
    """Save one step: `write(tmp_path)` writes the checkpoint, then rename, then the manifest.

    Args:
        write: writes a checkpoint to the given path (e.g. wraps mindspore.save_checkpoint).
        meta: extra manifest fields (parallel layout, model config, data position, ...).
    """
    final = ckpt_path(output_dir, rank, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")  # still ends in .ckpt
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        # MindSpore writes `<name>.tmp` first (suffix replaced): a failed save (disk full)
        # leaves that partial file behind unless removed here too.
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            if leftover.exists():
                leftover.unlink()
    manifest = {**meta, "step": step, "rank": rank, "file": final.name,
                "size": final.stat().st_size, "sha256": sha256_file(final)}
    write_json_atomic(manifest_path(output_dir, rank, step), manifest)
    return final


def read_manifest(output_dir: Path, rank: int, step: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(manifest_path(output_dir, rank, step).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


RESUMED_ENV = "ORCHESTRATE_RESUMED_FILE"  # where launch.sh asks a rank to record its resume
RESUMED_MAX_BYTES = 4096  # what a reader takes of a node's record


def record_resumed(step: int, environ: Mapping[str, str] = os.environ) -> None:
    """Record the step this attempt resumed from (0: none complete on every rank) where the
    launcher asks: `$ORCHESTRATE_RESUMED_FILE`, the rank's folder of the job, which
    `launch.sh start resume` clears for each attempt. Nothing when run by hand."""
    path = environ.get(RESUMED_ENV)
    if path:
        write_json_atomic(Path(path), {"resumed_step": step})


def parse_resumed(text: str) -> int | None:
    """The step in a rank's resume record; None for anything else (a node is untrusted)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    step = doc.get("resumed_step") if isinstance(doc, dict) else None
    ok = isinstance(step, int) and not isinstance(step, bool) and step >= 0
    return step if ok else None


def is_complete(output_dir: Path, rank: int, step: int, layout: Mapping[str, Any]) -> bool:
    """Manifest present and valid, same parallel layout, file size and sha256 as recorded."""
    manifest = read_manifest(output_dir, rank, step)
    if manifest is None or manifest.get("step") != step or manifest.get("rank") != rank:
        return False
    if manifest.get("layout") != dict(layout):
        return False
    path = ckpt_path(output_dir, rank, step)
    if path.is_symlink() or not path.is_file() or path.stat().st_size != manifest.get("size"):
        return False
    return sha256_file(path) == manifest.get("sha256")


def listed_steps(output_dir: Path, rank: int) -> list[int]:
    """Steps that have a manifest in this rank's folder (complete or not), ascending."""
    folder = rank_dir(output_dir, rank)
    if folder.is_symlink() or not folder.is_dir():
        return []
    steps = []
    for p in folder.iterdir():
        m = MANIFEST_RE.match(p.name)
        if m and int(m.group(1)) == rank:
            steps.append(int(m.group(2)))
    return sorted(steps)


def complete_steps(output_dir: Path, rank: int, layout: Mapping[str, Any]) -> list[int]:
    """Steps complete on `rank` (see is_complete), ascending."""
    return [s for s in listed_steps(output_dir, rank) if is_complete(output_dir, rank, s, layout)]


def newest_common(per_rank: Iterable[Iterable[int]]) -> int | None:
    """The newest step present in every rank's list (None if there is none): the step a
    resume starts from and `collect-ckpt` collects by default."""
    common: set[int] | None = None
    for steps in per_rank:
        common = set(steps) if common is None else common & set(steps)
    return max(common) if common else None


def prune(output_dir: Path, rank: int, keep: int) -> list[int]:
    """Delete all but the newest `keep` steps of this rank (checkpoint and manifest); removed."""
    steps = listed_steps(output_dir, rank)
    doomed = steps[:-keep] if keep > 0 else []
    for step in doomed:
        manifest_path(output_dir, rank, step).unlink(missing_ok=True)  # manifest first
        ckpt_path(output_dir, rank, step).unlink(missing_ok=True)
    return doomed


def adopt(output_dir: Path, step: int, layout: Mapping[str, Any], old_layout: Mapping[str, Any],
          pairs: Sequence[tuple[int, int]]) -> int:
    """Give each rank `new` of `pairs` rank `src`'s checkpoint of `step`, under the new layout.

    A data-parallel checkpoint is a full replica, so the bytes are copied unchanged (0400, as
    MindSpore saves them); the manifest is src's with rank, file and layout replaced and
    `converted_from` added. Returns how many ranks were written.
    """
    for new, src in pairs:
        doc = read_manifest(output_dir, src, step)
        if doc is None:
            raise ValueError(f"rank {src}: no readable manifest for step {step}")
        dst = ckpt_path(output_dir, new, step)
        if new != src:
            with atomic_target(dst, mode=0o400) as tmp:
                shutil.copyfile(ckpt_path(output_dir, src, step), tmp)
        doc.update(rank=new, file=dst.name, layout=dict(layout),
                   converted_from={"rank": src, "layout": dict(old_layout)})
        write_json_atomic(manifest_path(output_dir, new, step), doc)
    return len(pairs)


def _pair(text: str) -> tuple[int, int]:
    new, _, src = text.partition(":")
    return int(new), int(src)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m orchestrate_bloom.ckpt.layout` (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.ckpt.layout",
                                     description="A job's checkpoints on this node.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("steps", help="complete steps of the given ranks")
    ad = sub.add_parser("adopt", help="copy a step's checkpoint to renumbered ranks")
    for p in (st, ad):
        p.add_argument("--job-dir", type=Path, required=True, help="the job folder")
        p.add_argument("--layout", type=json.loads, required=True, help="JSON parallel layout")
    st.add_argument("--rank", type=int, action="append", default=[], help="repeatable")
    ad.add_argument("--step", type=int, required=True)
    ad.add_argument("--old-layout", type=json.loads, required=True)
    ad.add_argument("--pair", type=_pair, action="append", default=[], metavar="NEW:SRC")
    args = parser.parse_args(argv)
    out = args.job_dir.expanduser() / "output"

    def run() -> dict[str, Any]:
        if args.cmd == "steps":
            return {str(r): complete_steps(out, r, args.layout) for r in args.rank}
        return {"adopted": adopt(out, args.step, args.layout, args.old_layout, args.pair)}

    return tool_main(run, (OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
