"""`orchestrate collect-ckpt`: list, choose the step, gather, merge, check — one function.

    orchestrate collect-ckpt -i INVENTORY --job JOB_ID [--dest DIR] [--step N]

`collect()` lists every node in parallel, chooses the step (orchestrator/ckpt.py), verifies
the chosen step's sha256 on the nodes, gathers strategy files and then one replica of every
needed shard (orchestrator/ckpt/fetch.py), strips optimizer state, transforms to one device
(orchestrator/ckpt/merge.py) and loads the result into the preset's model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.ckpt import fetch as ckpt_fetch
from orchestrator.ckpt import merge as ckpt_merge
from orchestrator.ckpt import nodes as ckpt_nodes
from orchestrator.ckpt import output as ckpt_output
from orchestrator.ckpt import select as ckpt
from orchestrator.config.inventory import Inventory, Node
from orchestrator.errors import CheckpointError, RemoteError
from orchestrator.hccl.ranktable import node_rank_ranges
from orchestrator.remote.connect import open_all
from orchestrator.remote.transport import Transport

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
    """Rank ranges and job folders from a job record (orchestrator/job/state.JobRecord)."""
    return [
        Target(inv.node(n.name), PurePosixPath(n.job_dir), range(n.rank_start, n.rank_end))
        for n in record.nodes
    ]


def list_nodes(conns: Mapping[str, Transport], targets: Sequence[Target]) -> list[ckpt.NodeListing]:
    """List every node in parallel; one error naming each unreachable node and its ranks."""

    def one(t: Target) -> ckpt.NodeListing:
        raw = ckpt_nodes.list_job(conns[t.node.name], t.job_dir, list(t.ranks))
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


def verify_on_nodes(
    conns: Mapping[str, Transport], listings: Sequence[ckpt.NodeListing], step: int
) -> list[str]:
    """Hash the step's checkpoints on their nodes (in parallel); problems, one per bad rank."""

    def one(lst: ckpt.NodeListing) -> list[str]:
        mine = {r: have[step] for r, have in lst.ckpts.items() if step in have}
        rels = {str(c.remote.relative_to(lst.job_dir)): c for c in mine.values()}
        sums = ckpt_nodes.hash_files(conns[lst.node], lst.job_dir, sorted(rels))
        return [
            f"rank {c.rank} on {lst.node}: {c.remote} sha256 {sums.get(rel, '?')[:12]}… "
            f"does not match its manifest ({c.sha256[:12]}…)"
            for rel, c in rels.items()
            if sums.get(rel) != c.sha256
        ]

    with ThreadPoolExecutor(max_workers=min(64, len(listings)) or 1) as pool:
        return [p for ps in pool.map(one, listings) for p in ps]


def choose_verified_step(
    conns: Mapping[str, Transport], listings: list[ckpt.NodeListing], step: int | None, say: Say
) -> int:
    """choose_step, then hash on the nodes; a corrupt newest step falls back to an older one."""
    while True:
        chosen = ckpt.choose_step(listings, step)
        bad = verify_on_nodes(conns, listings, chosen)
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


def opener(conns: Mapping[str, Transport]) -> ckpt_fetch.Opener:
    """(node, path, offset) -> stream, for ckpt_fetch."""

    def open_(node: str, path: PurePosixPath, offset: int) -> Any:
        return ckpt_nodes.open_stream(conns[node], path, offset)

    return open_


def gather_strategies(
    conns: Mapping[str, Transport], listings: Sequence[ckpt.NodeListing], dest: Path, required: bool
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
    ckpt_fetch.fetch_all(dest, items, opener(conns))
    return {int(i.label.split()[1]): dest / i.rel for i in items}


@dataclass(frozen=True)
class Options:
    """What to collect and how (the CLI flags)."""

    step: int | None = None  # None: the newest step complete on every rank
    preset: str | None = None  # name for the output; the load check prefers the manifests
    keep_optimizer: bool = False
    dst_strategy: Path | None = None  # None: one device
    processes: int = 1  # destination ranks transformed at once (with dst_strategy)
    check: bool = True  # load the result into BloomLMHeadModel
    jobs: int = 8  # parallel download streams


def collect(
    inv: Inventory,
    job_id: str,
    dest: Path,
    opts: Options = Options(),
    *,
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
    targets = targets or targets_from_inventory(inv, job_id)
    with open_all(inv, [t.node for t in targets]) as conns:
        return _collect(conns, targets, job_id, dest, opts, say, progress, t0)


def _collect(
    conns: Mapping[str, Transport],
    targets: Sequence[Target],
    job_id: str,
    dest: Path,
    opts: Options,
    say: Say,
    progress: Callable[[int], Any] | None,
    t0: float,
) -> Collected:
    listings = list_nodes(conns, targets)
    chosen = choose_verified_step(conns, listings, opts.step, say)
    ckpts = ckpt.rank_ckpts(listings, chosen)
    layout, manifest_preset = ckpt.job_layout(ckpts)
    preset = opts.preset or manifest_preset
    model_json = ckpts[min(ckpts)].model
    seconds = {"list+verify": time.monotonic() - t0}
    say(f"step {chosen}: complete and verified on all {len(ckpts)} ranks; layout {layout}")

    t1 = time.monotonic()
    strategy: Path | None = None
    needed: list[int] | None = None
    strategies = gather_strategies(conns, listings, dest, required=not layout.pure_dp)
    dst_ranks = [0]
    if not layout.pure_dp:
        strategy = ckpt_merge.merge_strategies(dest / "strategy", dest / "merged_strategy.ckpt")
    elif strategies:
        say(f"pure data parallel: {len(strategies)} strategy files gathered, not needed")
    if strategy is not None or opts.dst_strategy is not None:
        needed, dst_ranks = ckpt_merge.needed_ranks(strategy, opts.dst_strategy)
        needed = needed if strategy is not None else None
    plan = ckpt.plan_fetch(ckpts, needed)
    items = [
        ckpt_fetch.Item(c.node, c.remote, c.local_rel, c.size, c.sha256, f"rank {c.rank}")
        for c in plan.fetch
    ]
    total = sum(i.size for i in items)
    remaining = ckpt_fetch.bytes_to_fetch(dest, items)
    outputs = (total if layout.pure_dp else 2 * total) * len(dst_ranks)  # upper bound
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
    outcomes = ckpt_fetch.fetch_all(dest, items, opener(conns), jobs=opts.jobs, on_bytes=on_bytes)
    for o in outcomes:
        if o.action != "fetched":
            say(f"{o.item.label}: {o.action}")
    seconds["gather"] = time.monotonic() - t1

    t2 = time.monotonic()
    local = {c.rank: dest / c.local_rel for c in plan.fetch}
    local.update({r: local[src] for r, src in plan.copies.items()})
    name = f"bloom_{Path(preset).stem if preset else 'unknown'}_step{chosen}"
    job = ckpt_output.JobInfo(job_id, chosen, preset, model_json, layout)
    if opts.dst_strategy is None:
        merged, peak = ckpt_output.to_one_device(dest, name, local, strategy, opts.keep_optimizer)
    else:
        merged, peak = ckpt_output.to_strategy(
            dest,
            name,
            local,
            strategy,
            opts.dst_strategy,
            dst_ranks,
            opts.keep_optimizer,
            opts.processes,
        )
    seconds["merge"] = time.monotonic() - t2
    if opts.check and opts.dst_strategy is None:
        t3 = time.monotonic()
        ckpt_merge.check(merged, preset, model_json)
        seconds["check"] = time.monotonic() - t3
    manifest = ckpt_output.write_manifest(
        merged, job, sorted(local), opts.keep_optimizer, opts.dst_strategy
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
