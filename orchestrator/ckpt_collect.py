"""`orchestrate collect-ckpt`: list, choose the step, gather, merge, check — one function.

    orchestrate collect-ckpt -i INVENTORY --job JOB_ID [--dest DIR] [--step N]

`collect()` lists every node in parallel, chooses the step (orchestrator/ckpt.py), verifies
the chosen step's sha256 on the nodes, gathers strategy files and then one replica of every
needed shard (orchestrator/ckpt_fetch.py), strips optimizer state, transforms to one device
(orchestrator/ckpt_merge.py) and loads the result into the preset's model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from orchestrator import ckpt, ckpt_fetch, ckpt_merge, ckpt_nodes
from orchestrator.errors import CheckpointError, RemoteError
from orchestrator.inventory import Inventory, Node
from orchestrator.ranktable import node_rank_ranges

Say = Callable[[str], None]


@dataclass
class Collected:
    """What collect() did, for the summary."""

    step: int
    preset: str | None
    layout: ckpt.Layout
    merged: Path | None
    manifest: Path | None
    fetched_ranks: list[int]
    downloaded: int  # bytes over the network this run
    saved_bytes: int  # bytes not downloaded thanks to DP dedupe
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0  # peak host memory of the MindSpore steps


@dataclass(frozen=True)
class Target:
    """One node's share of the job: where its job folder is and which ranks it holds."""

    node: Node
    job_dir: PurePosixPath
    ranks: range


def targets_from_inventory(inv: Inventory, job_id: str) -> list[Target]:
    """Rank ranges as `up` assigns them, job folders at <workdir>/jobs/<job_id>."""
    return [
        Target(nr.node, nr.node.workdir / "jobs" / job_id, nr.ranks) for nr in node_rank_ranges(inv)
    ]


def targets_from_record(inv: Inventory, record: Any) -> list[Target]:
    """Rank ranges and job folders from a job record (orchestrator/jobs/state.JobRecord)."""
    return [
        Target(inv.node(n.name), PurePosixPath(n.job_dir), range(n.rank_start, n.rank_end))
        for n in record.nodes
    ]


def list_nodes(inv: Inventory, targets: Sequence[Target]) -> list[ckpt.NodeListing]:
    """List every node in parallel; one error naming each unreachable node and its ranks."""

    def one(t: Target) -> ckpt.NodeListing:
        raw = ckpt_nodes.list_job(inv, t.node, t.job_dir, list(t.ranks))
        return ckpt.parse_listing(t.node.name, raw, t.ranks)

    out: list[ckpt.NodeListing] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=min(64, len(targets)) or 1) as pool:
        for t, fut in [(t, pool.submit(one, t)) for t in targets]:
            try:
                out.append(fut.result())
            except (RemoteError, CheckpointError) as exc:
                errors.append(f"{exc} (holds ranks {t.ranks.start}-{t.ranks.stop - 1})")
    if errors:
        raise CheckpointError("cannot list checkpoints:\n  " + "\n  ".join(errors))
    return out


def verify_on_nodes(inv: Inventory, listings: Sequence[ckpt.NodeListing], step: int) -> list[str]:
    """Hash the step's checkpoints on their nodes (in parallel); problems, one per bad rank."""
    nodes = {n.name: n for n in inv.nodes}

    def one(lst: ckpt.NodeListing) -> list[str]:
        mine = {r: have[step] for r, have in lst.ckpts.items() if step in have}
        rels = {str(c.remote.relative_to(lst.job_dir)): c for c in mine.values()}
        sums = ckpt_nodes.hash_files(inv, nodes[lst.node], lst.job_dir, sorted(rels))
        return [
            f"rank {c.rank} on {lst.node}: {c.remote} sha256 {sums.get(rel, '?')[:12]}… "
            f"does not match its manifest ({c.sha256[:12]}…)"
            for rel, c in rels.items()
            if sums.get(rel) != c.sha256
        ]

    with ThreadPoolExecutor(max_workers=min(64, len(listings)) or 1) as pool:
        return [p for ps in pool.map(one, listings) for p in ps]


def choose_verified_step(
    inv: Inventory, listings: list[ckpt.NodeListing], step: int | None, say: Say
) -> int:
    """choose_step, then hash on the nodes; a corrupt newest step falls back to an older one."""
    while True:
        chosen = ckpt.choose_step(listings, step)
        bad = verify_on_nodes(inv, listings, chosen)
        if not bad:
            return chosen
        if step is not None:
            raise CheckpointError(f"step {chosen} is corrupt on the nodes:\n  " + "\n  ".join(bad))
        for p in bad:
            say(f"[yellow]skipping step {chosen}[/]: {p}")
        listings[:] = [_drop_step(lst, chosen) for lst in listings]


def _drop_step(lst: ckpt.NodeListing, step: int) -> ckpt.NodeListing:
    ckpts = {r: {s: c for s, c in have.items() if s != step} for r, have in lst.ckpts.items()}
    return ckpt.NodeListing(lst.node, lst.job_dir, ckpts, lst.problems, lst.strategies)


def _opener(inv: Inventory) -> ckpt_fetch.Opener:
    nodes = {n.name: n for n in inv.nodes}

    def open_(node: str, path: PurePosixPath, offset: int) -> Any:
        return ckpt_nodes.open_stream(inv, nodes[node], path, offset)

    return open_


def gather_strategies(
    inv: Inventory, listings: Sequence[ckpt.NodeListing], dest: Path, required: bool
) -> dict[int, Path]:
    """Fetch every rank's strategy file into DEST/strategy/; name ranks lacking one."""
    found = {r: s for lst in listings for r, s in lst.strategies.items()}
    ranks = [r for lst in listings for r in lst.ckpts]
    missing = [r for r in ranks if r not in found]
    if missing and required:
        where = {r: lst for lst in listings for r in lst.ckpts}
        raise CheckpointError(
            "strategy file missing for "
            + "; ".join(
                f"rank {r} on {where[r].node} "
                f"({where[r].job_dir}/output/strategy/ckpt_strategy_rank_{r}.ckpt)"
                for r in missing
            )
        )
    items = [
        ckpt_fetch.Item(s.node, s.remote, s.local_rel, s.size, None, f"rank {r} strategy")
        for r, s in sorted(found.items())
        if r in ranks
    ]
    ckpt_fetch.fetch_all(dest, items, _opener(inv))
    return {int(i.label.split()[1]): dest / i.rel for i in items}


def collect(
    inv: Inventory,
    job_id: str,
    dest: Path,
    *,
    step: int | None = None,
    preset: str | None = None,
    keep_optimizer: bool = False,
    dst_strategy: Path | None = None,
    check: bool = True,
    jobs: int = 8,
    say: Say = print,
    progress: Callable[[int], Any] | None = None,
    targets: Sequence[Target] | None = None,
) -> Collected:
    """Gather and merge one step of job `job_id`; see the module docstring.

    `progress(total_bytes)` returns a callable taking byte increments (the CLI's rich bar).
    `targets` (from the job record) default to the inventory's rank order.
    """
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    listings = list_nodes(inv, targets or targets_from_inventory(inv, job_id))
    chosen = choose_verified_step(inv, listings, step, say)
    ckpts = ckpt.rank_ckpts(listings, chosen)
    layout, manifest_preset = ckpt.job_layout(ckpts)
    preset = preset or manifest_preset
    model_json = ckpts[min(ckpts)].model
    seconds = {"list+verify": time.monotonic() - t0}
    say(f"step {chosen}: complete and verified on all {len(ckpts)} ranks; layout {layout}")

    t1 = time.monotonic()
    strategy: Path | None = None
    needed: list[int] | None = None
    strategies = gather_strategies(inv, listings, dest, required=not layout.pure_dp)
    if not layout.pure_dp:
        strategy = ckpt_merge.merge_strategies(dest / "strategy", dest / "merged_strategy.ckpt")
        needed = ckpt_merge.needed_ranks(strategy, dst_strategy)
    elif strategies:
        say(f"pure data parallel: {len(strategies)} strategy files gathered, not needed")
    plan = ckpt.plan_fetch(ckpts, needed)
    items = [
        ckpt_fetch.Item(c.node, c.remote, c.local_rel, c.size, c.sha256, f"rank {c.rank}")
        for c in plan.fetch
    ]
    total = sum(i.size for i in items)
    remaining = ckpt_fetch.bytes_to_fetch(dest, items)
    outputs = total if layout.pure_dp else 2 * total  # stripped shards + merged, upper bound
    ckpt_fetch.check_free_space(
        dest, remaining + outputs, f"{_n(remaining)} to download + up to {_n(outputs)} output"
    )
    if plan.saved_bytes:
        say(
            f"data-parallel replicas: fetching ranks {[c.rank for c in plan.fetch]} only, "
            f"{_n(plan.saved_bytes)} not downloaded "
            f"({len(plan.skipped) + len(plan.copies)} replica file(s) skipped)"
        )
    on_bytes = progress(total) if progress is not None else (lambda _n: None)
    outcomes = ckpt_fetch.fetch_all(dest, items, _opener(inv), jobs=jobs, on_bytes=on_bytes)
    for o in outcomes:
        if o.action != "fetched":
            say(f"{o.item.label}: {o.action}")
    seconds["gather"] = time.monotonic() - t1

    t2 = time.monotonic()
    name = f"bloom_{preset or 'unknown'}_step{chosen}"
    merged = dest / "merged" / f"{name}.ckpt"
    merged.parent.mkdir(parents=True, exist_ok=True)
    local = {c.rank: dest / c.local_rel for c in plan.fetch}
    local.update({r: local[src] for r, src in plan.copies.items()})
    peak = 0
    if strategy is None:
        res = ckpt_merge.strip({local[min(local)]: merged}, keep_optimizer)
        peak = res["peak_rss"]
    else:
        stripped_dir = dest / "stripped"
        stripped = {c.rank: stripped_dir / f"rank_{c.rank}.ckpt" for c in plan.fetch}
        res = ckpt_merge.strip({local[r]: stripped[r] for r in stripped}, keep_optimizer)
        stripped.update({r: stripped[src] for r, src in plan.copies.items()})
        peak = res["peak_rss"]
        res = ckpt_merge.transform(stripped, strategy, merged, dst_strategy)
        peak = max(peak, res.get("peak_rss", 0))
        shutil.rmtree(stripped_dir)
    seconds["merge"] = time.monotonic() - t2
    if check and dst_strategy is None:
        t3 = time.monotonic()
        ckpt_merge.check(merged, preset, model_json)
        seconds["check"] = time.monotonic() - t3
    arch = merged.with_suffix(".yaml")  # the architecture, for `infer --config`
    if model_json is not None:
        tmp = arch.with_name(f".{arch.name}.tmp")
        tmp.write_text(yaml.safe_dump({"model": json.loads(model_json)}, sort_keys=True))
        os.replace(tmp, arch)
    manifest = merged.with_suffix(".json")
    ckpt_merge.write_manifest(
        manifest,
        {
            "preset": preset,
            "model": json.loads(model_json) if model_json else None,
            "step": chosen,
            "job_id": job_id,
            "sha256": ckpt_merge.sha256_of(merged),
            "size": merged.stat().st_size,
            "source_ranks": sorted(local),
            "layout": vars(layout),
            "optimizer_state": keep_optimizer,
            "dst_strategy": str(dst_strategy) if dst_strategy else None,
            "architecture": arch.name if model_json is not None else None,
        },
    )
    return Collected(
        chosen,
        preset,
        layout,
        merged,
        manifest,
        sorted(local),
        sum(o.fetched for o in outcomes),
        plan.saved_bytes,
        seconds,
        peak,
    )


def _n(b: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b} B"


def record_collected(state_dir: Path, job_id: str, res: Collected) -> Path:
    """Remember the job's merged checkpoint for `orchestrate infer --job` (atomic JSON)."""
    folder = state_dir / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    assert res.merged is not None and res.manifest is not None
    arch = res.merged.with_suffix(".yaml")
    doc = {
        "job_id": job_id,
        "step": res.step,
        "preset": res.preset,
        "ckpt": str(res.merged.resolve()),
        "manifest": str(res.manifest.resolve()),
        "config": str(arch.resolve()) if arch.is_file() else res.preset,
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
        raise CheckpointError(f"{path}: no architecture recorded; pass --config")
    return ckpt_path, str(config)
