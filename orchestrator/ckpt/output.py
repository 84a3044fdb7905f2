"""The outputs of `orchestrate collect-ckpt`: merged checkpoint(s), their manifest, the pointer
`infer --job` reads.

    DEST/merged/bloom_<preset>_step<N>.ckpt   one device (default), + .json manifest, + .yaml
                                              (the model section, for `infer --config`)
    DEST/merged/bloom_<preset>_step<N>_<dst>/rank_<r>/bloom_<preset>_step<N>.ckpt
                                              with --dst-strategy: one file per destination rank
    <state-dir>/ckpt/<job_id>.json            where the job's merged checkpoint is

The MindSpore work runs in `python -m orchestrate_bloom.ckpt.tools` children (ckpt/merge.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from orchestrate_bloom.fileio import sha256_file, write_atomic

from orchestrator.ckpt import merge as ckpt_merge
from orchestrator.ckpt.select import Layout
from orchestrator.errors import CheckpointError


@dataclass(frozen=True)
class JobInfo:
    """What the manifest says about where the checkpoint came from."""

    job_id: str
    step: int
    preset: str | None
    model_json: str | None  # the manifests' model section
    layout: Layout
    template: str = ""  # prompt template of the training data: infer --job applies it


def _strip_all(
    dest: Path, local: Mapping[int, Path], keep_optimizer: bool
) -> tuple[dict[int, Path], int]:
    """Strip each distinct fetched file once (one child process); rank -> stripped file."""
    out_of: dict[Path, Path] = {}
    for r, src in sorted(local.items()):
        out_of.setdefault(src, dest / "stripped" / f"rank_{r}.ckpt")
    res = ckpt_merge.strip(out_of, keep_optimizer)
    return {r: out_of[src] for r, src in local.items()}, int(res["peak_rss"])


def to_one_device(
    dest: Path,
    name: str,
    local: Mapping[int, Path],
    strategy: Path | None,
    keep_optimizer: bool,
) -> tuple[Path, int]:
    """DEST/merged/<name>.ckpt: one replica stripped (pure DP) or sharded files transformed."""
    merged = dest / "merged" / f"{name}.ckpt"
    merged.parent.mkdir(parents=True, exist_ok=True)
    if strategy is None:
        res = ckpt_merge.strip({local[min(local)]: merged}, keep_optimizer)
        return merged, int(res["peak_rss"])
    stripped, peak = _strip_all(dest, local, keep_optimizer)
    try:
        res = ckpt_merge.transform(stripped, strategy, merged, None)
    finally:
        shutil.rmtree(dest / "stripped", ignore_errors=True)
    return merged, max(peak, int(res["peak_rss"]))


def to_strategy(
    dest: Path,
    name: str,
    local: Mapping[int, Path],
    strategy: Path | None,
    dst_strategy: Path,
    dst_ranks: Sequence[int],
    keep_optimizer: bool,
    processes: int,
) -> tuple[Path, int]:
    """Every destination rank of `dst_strategy`, `processes` children at a time."""
    folder = dest / "merged" / f"{name}_{dst_strategy.stem}"
    folder.mkdir(parents=True, exist_ok=True)
    if strategy is None:  # pure DP: the one replica is the complete source
        local = {0: local[min(local)]}
    stripped, peak = _strip_all(dest, local, keep_optimizer)
    try:
        with ThreadPoolExecutor(max_workers=max(1, processes)) as pool:
            futures = [
                pool.submit(
                    ckpt_merge.transform,
                    stripped,
                    strategy,
                    folder / f"rank_{r}" / f"{name}.ckpt",
                    dst_strategy,
                    r,
                )
                for r in dst_ranks
            ]
            peaks = [int(f.result()["peak_rss"]) for f in futures]
    finally:
        shutil.rmtree(dest / "stripped", ignore_errors=True)
    # `processes` children run at once: their peaks add up
    return folder, max(peak, sum(sorted(peaks)[-max(1, processes) :]))


def write_manifest(
    merged: Path,
    job: JobInfo,
    source_ranks: Sequence[int],
    keep_optimizer: bool,
    dst_strategy: Path | None,
) -> Path:
    """<merged>.json (+ <merged>.yaml with the model section and data.template, a preset file
    `infer --config` reads) beside the output."""
    files = sorted(merged.rglob("*.ckpt")) if merged.is_dir() else [merged]
    base = merged if merged.is_dir() else merged.parent
    arch = merged.with_suffix(".yaml") if not merged.is_dir() else merged / "model.yaml"
    if job.model_json is not None:
        doc = {"model": json.loads(job.model_json), "data": {"template": job.template}}
        write_atomic(arch, yaml.safe_dump(doc, sort_keys=True),
                     fsync=False)  # O_EXCL random temp name, never a fixed one
    manifest = merged.with_suffix(".json") if not merged.is_dir() else merged / "manifest.json"
    ckpt_merge.write_manifest(
        manifest,
        {
            "preset": job.preset,
            "model": json.loads(job.model_json) if job.model_json else None,
            "template": job.template,
            "step": job.step,
            "job_id": job.job_id,
            "files": [
                {
                    "path": str(f.relative_to(base)),
                    "sha256": sha256_file(f),
                    "size": f.stat().st_size,
                }
                for f in files
            ],
            "source_ranks": list(source_ranks),
            "layout": vars(job.layout),
            "optimizer_state": keep_optimizer,
            "dst_strategy": str(dst_strategy) if dst_strategy else None,
            "architecture": arch.name if job.model_json is not None else None,
        },
    )
    return manifest


def record_collected(state_dir: Path, job_id: str, step: int, merged: Path) -> Path:
    """Remember the job's single-device checkpoint for `orchestrate infer --job`."""
    folder = state_dir / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    arch = merged.with_suffix(".yaml")
    doc = {
        "job_id": job_id,
        "step": step,
        "ckpt": str(merged.resolve()),
        "manifest": str(merged.with_suffix(".json").resolve()),
        "config": str(arch.resolve()) if arch.is_file() else None,
    }
    path = folder / f"{job_id}.json"
    ckpt_merge.write_manifest(path, doc)
    return path


def collected_for_job(state_dir: Path, job_id: str) -> tuple[Path, str]:
    """(merged checkpoint, --config value) that collect-ckpt recorded for `job_id`."""
    path = state_dir / "ckpt" / f"{job_id}.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"job {job_id} has no merged checkpoint ({path} missing): run "
            f"`orchestrate collect-ckpt --job {job_id}` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from exc
    ckpt_path = Path(doc.get("ckpt", ""))
    if not ckpt_path.is_file():
        raise CheckpointError(f"{path}: merged checkpoint {ckpt_path} is gone; collect again")
    config = doc.get("config")
    if not config:
        raise CheckpointError(f"{path}: no architecture recorded; pass --ckpt and --config")
    return ckpt_path, str(config)
