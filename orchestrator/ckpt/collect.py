"""`orchestrate collect-ckpt`: list, choose the step, gather, merge, check — one function.

    orchestrate collect-ckpt [JOB] [-i INVENTORY] [-o DIR] [--step N] [--forks 8]

`collect()` lists every node in parallel, chooses the step (orchestrator/ckpt.py), verifies
the chosen step's sha256 on the nodes, gathers strategy files and then one replica of every
needed shard (orchestrator/ckpt/fetch.py), strips optimizer state, transforms to one device
(orchestrator/ckpt/merge.py) and loads the result into the preset's model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from orchestrator.ckpt import fetch as ckpt_fetch
from orchestrator.ckpt import merge as ckpt_merge
from orchestrator.ckpt import nodes as ckpt_nodes
from orchestrator.ckpt import output as ckpt_output
from orchestrator.ckpt import select as ckpt
from orchestrator.config.inventory import Inventory
from orchestrator.errors import CheckpointError
from orchestrator.hccl.ranktable import node_rank_ranges
from orchestrator.job.state import JobRecord, NodeRecord
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.transport import Transport

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend

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


def targets_from_inventory(inv: Inventory, job_id: str) -> list[NodeRecord]:
    """A job without a record: rank ranges as `up` assigns them, job folders at
    <workdir>/jobs/<job_id> (a job's nodes are always job/state.NodeRecord)."""
    return [NodeRecord(name=nr.node.name, host=nr.node.host, rank_start=nr.ranks.start,
                       rank_end=nr.ranks.stop, devices=nr.node.devices,
                       job_dir=str(nr.node.workdir / "jobs" / job_id))
            for nr in node_rank_ranges(inv)]


def list_nodes(group: NodeGroup, targets: Sequence[NodeRecord]) -> list[ckpt.NodeListing]:
    """List every node in parallel; one error naming each unreachable node and its ranks."""
    by_name = {t.name: t for t in targets}

    def one(tr: Transport) -> ckpt.NodeListing:
        t = by_name[tr.node.name]
        raw = ckpt_nodes.list_job(tr, PurePosixPath(t.job_dir), list(t.ranks))
        return ckpt.parse_listing(t.name, raw, t.ranks)

    res = group.map(one, list(by_name))
    errors = [f"{exc} (holds ranks {by_name[name].rank_start}-{by_name[name].rank_end - 1})"
              for name, exc in res.failed.items()]
    if errors:
        raise CheckpointError("cannot list checkpoints:\n  " + "\n  ".join(errors))
    return list(res.succeeded.values())


def verify_on_nodes(group: NodeGroup, listings: Sequence[ckpt.NodeListing], step: int
                    ) -> list[str]:
    """Hash the step's checkpoints on their nodes (in parallel); problems, one per bad rank."""
    by_node = {lst.node: lst for lst in listings}

    def one(t: Transport) -> list[str]:
        lst = by_node[t.node.name]
        mine = {r: have[step] for r, have in lst.ckpts.items() if step in have}
        rels = {str(c.remote.relative_to(lst.job_dir)): c for c in mine.values()}
        sums = ckpt_nodes.hash_files(t, lst.job_dir, sorted(rels))
        return [
            f"rank {c.rank} on {lst.node}: {c.remote} sha256 {sums.get(rel, '?')[:12]}… "
            f"does not match its manifest ({c.sha256[:12]}…)"
            for rel, c in rels.items()
            if sums.get(rel) != c.sha256
        ]

    res = group.map(one, list(by_node))
    for exc in res.failed.values():
        raise exc  # could not hash there: not a corrupt step, an error naming the node
    return [p for ps in res.succeeded.values() for p in ps]


def choose_verified_step(
    group: NodeGroup, listings: list[ckpt.NodeListing], step: int | None, say: Say
) -> int:
    """choose_step, then hash on the nodes; a corrupt newest step falls back to an older one."""
    while True:
        chosen = ckpt.choose_step(listings, step)
        bad = verify_on_nodes(group, listings, chosen)
        if not bad:
            return chosen
        if step is not None:
            raise CheckpointError(f"step {chosen} is corrupt on the nodes:\n  " + "\n  ".join(bad))
        for p in bad:
            say(f"skipping step {chosen}: {p}")
        listings[:] = [_drop_step(lst, chosen) for lst in listings]


def _drop_step(lst: ckpt.NodeListing, step: int) -> ckpt.NodeListing:
    ckpts = {r: {s: c for s, c in have.items() if s != step} for r, have in lst.ckpts.items()}
    return ckpt.NodeListing(lst.node, lst.job_dir, ckpts, lst.problems, lst.strategies)


def opener(group: NodeGroup, job: tuple[Backend, JobRecord] | None = None
           ) -> ckpt_fetch.Opener:
    """(node, path, offset) -> stream, for ckpt_fetch: through the job's backend
    (`backend.stream`, paths relative to the node's job folder) for a recorded job, else
    over the group's connection (a job known only by its inventory)."""

    def open_(node: str, path: PurePosixPath, offset: int) -> Any:
        if job is not None:
            backend, record = job
            try:
                rel = path.relative_to(record.node(node).job_dir)
            except ValueError:
                raise CheckpointError(f"[{node}] {path} is not in the job folder "
                                      f"{record.node(node).job_dir}") from None
            return backend.stream(record, group, node, rel.as_posix(), offset)
        return ckpt_nodes.open_stream(group.transport(node), path, offset)

    return open_


def gather_strategies(
    group: NodeGroup, listings: Sequence[ckpt.NodeListing], dest: Path, required: bool,
    open_: ckpt_fetch.Opener | None = None,
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
    ckpt_fetch.fetch_all(dest, items, open_ or opener(group))
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
    forks: int = 8  # parallel download streams


def collect(
    group: NodeGroup,
    job_id: str,
    dest: Path,
    opts: Options = Options(),
    *,
    say: Say = print,
    progress: Callable[[int], Any] | None = None,
    targets: Sequence[NodeRecord] | None = None,
    job: tuple[Backend, JobRecord] | None = None,
) -> Collected:
    """Gather and merge one step of job `job_id` over `group`; see the module docstring.

    `progress(total_bytes)` returns a callable taking byte increments (the CLI's rich bar).
    `targets` (the job record's nodes) default to the inventory's rank order. `job`: the
    record's backend and record, whose `backend.stream` the downloads go through.
    """
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    targets = targets or targets_from_inventory(group.inventory, job_id)
    return _collect(group, targets, job_id, dest, opts, say, progress, t0, opener(group, job))


def _collect(
    group: NodeGroup,
    targets: Sequence[NodeRecord],
    job_id: str,
    dest: Path,
    opts: Options,
    say: Say,
    progress: Callable[[int], Any] | None,
    t0: float,
    open_: ckpt_fetch.Opener,
) -> Collected:
    listings = list_nodes(group, targets)
    chosen = choose_verified_step(group, listings, opts.step, say)
    ckpts = ckpt.rank_ckpts(listings, chosen)
    layout, manifest_preset = ckpt.job_layout(ckpts)
    preset = opts.preset or manifest_preset
    model_json = ckpts[min(ckpts)].model
    seconds = {"list+verify": time.monotonic() - t0}
    say(f"step {chosen}: complete and verified on all {len(ckpts)} ranks; layout {layout}")

    t1 = time.monotonic()
    strategy, dst_ranks, plan, outcomes = _gather(group, listings, ckpts, layout, dest, opts,
                                                  say, progress, open_)
    seconds["gather"] = time.monotonic() - t1

    t2 = time.monotonic()
    local = {c.rank: dest / c.local_rel for c in plan.fetch}
    local.update({r: local[src] for r, src in plan.copies.items()})
    name = f"bloom_{Path(preset).stem if preset else 'unknown'}_step{chosen}"
    job = ckpt_output.JobInfo(job_id, chosen, preset, model_json, layout,
                              ckpts[min(ckpts)].template)
    if opts.dst_strategy is None:
        merged, peak = ckpt_output.to_one_device(dest, name, local, strategy, opts.keep_optimizer)
    else:
        merged, peak = ckpt_output.to_strategy(dest, name, local, strategy, opts.dst_strategy,
                                               dst_ranks, opts.keep_optimizer, opts.processes)
    seconds["merge"] = time.monotonic() - t2
    if opts.check and opts.dst_strategy is None:
        t3 = time.monotonic()
        ckpt_merge.check(merged, preset, model_json)
        seconds["check"] = time.monotonic() - t3
    manifest = ckpt_output.write_manifest(
        merged, job, sorted(local), opts.keep_optimizer, opts.dst_strategy
    )
    return Collected(chosen, preset, layout, merged, manifest, sorted(local),
                     sum(o.fetched for o in outcomes), plan.saved_bytes, seconds, peak)


def _gather(group: NodeGroup, listings: Sequence[ckpt.NodeListing],
            ckpts: dict[int, ckpt.RankCkpt], layout: ckpt.Layout, dest: Path, opts: Options,
            say: Say, progress: Callable[[int], Any] | None, open_: ckpt_fetch.Opener,
            ) -> tuple[Path | None, list[int], ckpt.FetchPlan, list[ckpt_fetch.Outcome]]:
    """Strategy files (merged unless pure data parallel), then one replica of every needed
    shard, free space checked first: (merged strategy or None, destination ranks, the fetch
    plan, the fetch outcomes)."""
    strategy: Path | None = None
    needed: list[int] | None = None
    strategies = gather_strategies(group, listings, dest, not layout.pure_dp, open_)
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
        dest, remaining + outputs,
        f"{human_bytes(remaining)} to download + up to {human_bytes(outputs)} output"
    )
    if plan.saved_bytes:
        say(
            f"data-parallel replicas: fetching ranks {[c.rank for c in plan.fetch]} only, "
            f"{human_bytes(plan.saved_bytes)} not downloaded "
            f"({len(plan.skipped) + len(plan.copies)} replica file(s) skipped)"
        )
    on_bytes = progress(total) if progress is not None else (lambda _n: None)
    outcomes = ckpt_fetch.fetch_all(dest, items, open_, jobs=opts.forks, on_bytes=on_bytes)
    for o in outcomes:
        if o.action != "fetched":
            say(f"{o.item.label}: {o.action}")
    return strategy, dst_ranks, plan, outcomes


def human_bytes(b: int) -> str:
    """`1.5 MiB`: bytes for people (GiB, MiB, KiB, else B)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b} B"
