"""Relaunch a job without nodes that keep failing (issue #9): `resume --exclude-node HOST`.

    orchestrate resume tiny-k3f9 --exclude-node th1 [--global-batch keep|scale] [--wait]

    excl = plan_exclusion(record, spec, ["th1"])          # pure: layout, batch, what to say
    record = relaunch_without(record, inv, store, excl)   # convert ckpts, render, stage, start

Only data-parallel jobs (model_parallel = pipeline_stage = 1) can shrink: there every rank's
checkpoint is a full replica (weights + optimizer state), so the newest step complete on every
remaining rank is copied to the renumbered ranks with a manifest for the new layout (same
bytes, same sha256; `converted_from` names the source rank and layout). A model- or
pipeline-parallel checkpoint is sharded by its layout: that relaunch is refused (transform it
with `collect-ckpt --dst-strategy` and start a new job).

Global batch: `keep` (default) keeps samples per optimizer step by raising
parallel.micro_batch_num (else micro_batch_size) on the remaining ranks; the bundled trainer
runs a rank's micro-batches as one batch when there is no pipeline, so each rank's activation
memory grows by the same factor. When the old global batch is not a multiple of what one rank
step can take, `keep` is refused; `scale` keeps the per-rank batch and says how the global
batch shrinks (the LR schedule is unchanged; the data order differs after the resume).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrate_bloom.ckpt import layout as ck

from orchestrator import bundle
from orchestrator.config.presets import JobSpec
from orchestrator.errors import JobError
from orchestrator.job.nodes import NodeReport, query_job
from orchestrator.job.render import LaunchSpec, shell_path
from orchestrator.job.state import JobRecord, JobStore, NodeRecord
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.transport import Transport, tool_answer

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Exclusion:
    """What relaunching a job without some nodes changes."""

    excluded: tuple[str, ...]  # node names
    remaining: tuple[str, ...]
    world: tuple[int, int]  # ranks before, after
    data_parallel: tuple[int, int]
    global_batch: tuple[int, int]  # samples per optimizer step before, after
    overrides: tuple[str, ...]  # the job's --set overrides for the new layout
    notes: tuple[str, ...]  # what the user is told


def plan_exclusion(record: JobRecord, spec: JobSpec, exclude: Sequence[str],
                   keep_global_batch: bool = True) -> Exclusion:
    """The new layout of `record` without the nodes in `exclude` (names or hosts).

    Raises:
        JobError: unknown node, nothing left, a model/pipeline-parallel job, or a global batch
            that cannot be kept (names the numbers).
    """
    gone = tuple(dict.fromkeys(record.node(x).name for x in exclude))
    left = [n for n in record.nodes if n.name not in gone]
    if not left:
        raise JobError(f"job {record.job_id}: excluding {', '.join(gone)} leaves no node")
    p = spec.parallel
    if p.model_parallel * p.pipeline_stage > 1:
        raise JobError(
            f"job {record.job_id} is model/pipeline parallel (model_parallel="
            f"{p.model_parallel}, pipeline_stage={p.pipeline_stage}): its checkpoint shards "
            f"belong to that layout, so it cannot relaunch without {', '.join(gone)} "
            "automatically; transform the checkpoint (collect-ckpt --dst-strategy) and start "
            "a new job")
    world_after = sum(n.rank_end - n.rank_start for n in left)
    dp_before, dp_after = record.world_size, world_after
    mbs, mbn = p.micro_batch_size, p.micro_batch_num
    gbs_before = mbs * mbn * dp_before
    notes = [f"relaunching job {record.job_id} without {', '.join(gone)}: {record.world_size} "
             f"-> {world_after} ranks on {', '.join(n.name for n in left)}; data_parallel "
             f"{dp_before} -> {dp_after}"]
    new = {"parallel.data_parallel": dp_after}
    if not keep_global_batch:
        gbs_after = mbs * mbn * dp_after
        notes.append(f"global batch {gbs_before} -> {gbs_after} samples per step "
                     f"(--global-batch scale: {mbs * mbn} per rank as before)")
    elif gbs_before % (mbs * dp_after) == 0:
        new["parallel.micro_batch_num"] = gbs_before // (mbs * dp_after)
        gbs_after = gbs_before
        notes.append(_kept(gbs_before, "micro_batch_num", mbn, new["parallel.micro_batch_num"]))
    elif gbs_before % (mbn * dp_after) == 0:
        new["parallel.micro_batch_size"] = gbs_before // (mbn * dp_after)
        gbs_after = gbs_before
        notes.append(_kept(gbs_before, "micro_batch_size", mbs,
                           new["parallel.micro_batch_size"]))
    else:
        raise JobError(
            f"job {record.job_id}: the global batch of {gbs_before} samples "
            f"({mbs} x {mbn} x {dp_before} ranks) is not a multiple of {dp_after} ranks x "
            f"micro_batch_size {mbs} or x micro_batch_num {mbn}, so it cannot be kept without "
            f"{', '.join(gone)}; pass --global-batch scale to run with "
            f"{mbs * mbn * dp_after} samples per step")
    overrides = tuple(o for o in record.overrides if o.split("=", 1)[0] not in new)
    overrides += tuple(f"{k}={v}" for k, v in new.items())
    return Exclusion(gone, tuple(n.name for n in left), (record.world_size, world_after),
                     (dp_before, dp_after), (gbs_before, gbs_after), overrides, tuple(notes))


def _kept(gbs: int, key: str, before: int, after: int) -> str:
    return (f"global batch kept at {gbs} samples per step: parallel.{key} {before} -> {after} "
            f"(a rank runs its micro-batches as one batch without a pipeline: activation "
            f"memory per rank x{after / before:g})")


def _layout(dp: int) -> dict[str, int]:
    return {"data_parallel": dp, "model_parallel": 1, "pipeline_stage": 1}


def _on_node(t: Transport, job_dir: str, mode: str, args: Sequence[str]) -> dict[str, Any]:
    """`python -m orchestrate_bloom.ckpt.layout MODE --job-dir JOB_DIR ARGS` on the node; its
    JSON result (tool_io protocol)."""
    line = bundle.node_model_line(t.node.python, shell_path(job_dir, "code"), "ckpt.layout",
                                  [mode, "--job-dir", job_dir, *args])
    return tool_answer(t.run(line, check=False, timeout=1800), f"checkpoint {mode}")


def convert_checkpoints(record: JobRecord, new_nodes: Sequence[NodeRecord], excl: Exclusion,
                        group: NodeGroup) -> int | None:
    """Give every renumbered rank the newest step complete on every remaining rank, with a
    manifest for the new layout; that step, or None when there is none (starts from 0).

    Raises:
        JobError: a node could not be read or written (names it).
    """
    old = {n.name: n for n in record.nodes}
    nodes = [n.name for n in new_nodes]
    layout = _layout(excl.data_parallel[0])

    def steps(t: Transport) -> dict[str, list[int]]:
        n = old[t.node.name]
        ranks = [a for r in n.ranks for a in ("--rank", str(r))]
        doc = _on_node(t, n.job_dir, "steps", ["--layout", json.dumps(layout), *ranks])
        return {str(k): [int(s) for s in v] for k, v in doc.items()}

    found = group.map(steps, nodes)
    bad = {k: v for k, v in found.items() if isinstance(v, BaseException)}
    if bad:
        raise JobError("; ".join(str(e) for e in bad.values()))
    step = ck.newest_common(s for doc in found.values() if isinstance(doc, dict)
                            for s in doc.values())
    if step is None:
        return None
    by_name = {n.name: n for n in new_nodes}

    def convert(t: Transport) -> dict[str, Any]:
        was, now = old[t.node.name], by_name[t.node.name]
        pairs = [f"{r}:{r if r in was.ranks else was.rank_start}" for r in now.ranks]
        return _on_node(t, now.job_dir, "adopt", [
            "--step", str(step), "--layout", json.dumps(_layout(excl.data_parallel[1])),
            "--old-layout", json.dumps(layout), *(a for p in pairs for a in ("--pair", p))])

    done = group.map(convert, nodes)
    bad = {k: v for k, v in done.items() if isinstance(v, BaseException)}
    if bad:
        raise JobError("; ".join(str(e) for e in bad.values()))
    return step


def relaunch_without(record: JobRecord, group: NodeGroup, store: JobStore, excl: Exclusion,
                     echo: Echo = print) -> JobRecord:
    """Stop what is left on the excluded nodes (when they answer), convert the checkpoints,
    re-render and re-stage the job for the remaining nodes, start a new attempt (--resume).

    Raises:
        JobError: the job still runs on a remaining node, a node cannot be reached, or
            staging / starting failed.
    """
    from orchestrator.backends import need_node_files
    from orchestrator.config.plan import build_plan
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job import lifecycle
    from orchestrator.job.dataset import data_paths_for
    from orchestrator.job.render import render_job
    from orchestrator.job.teardown import failures, stop_everywhere

    need_node_files(record, "leaving a node out")  # checkpoints are converted on the nodes

    _refuse_unless_ended(record, excl, group)
    gone = [n for n in record.nodes if n.name in excl.excluded]
    left_over = failures(stop_everywhere(record.replace(nodes=tuple(gone)), group,
                                         timeout=60))
    for name in left_over:
        echo(f"warning: {name} did not answer; any process of the job there is stopped by "
             f"`orchestrate down {record.job_id}` once it does")
    for line in excl.notes:
        echo(line)
    spec = load_job_spec(record.preset, excl.overrides)
    inv = group.inventory
    sub = dataclasses.replace(inv, nodes=tuple(n for n in inv.nodes if n.name in excl.remaining))
    plan = build_plan(sub, spec)
    job_dirs = {n.name: n.job_dir for n in record.nodes}
    new_nodes = tuple(
        NodeRecord(name=n.ranks.node.name, host=n.ranks.node.host, rank_start=n.ranks.rank_start,
                   rank_end=n.ranks.rank_end, devices=n.ranks.node.devices,
                   job_dir=job_dirs[n.ranks.node.name]) for n in plan.nodes)
    step = convert_checkpoints(record, new_nodes, excl, group)
    echo(f"checkpoint: step {step} (complete on every remaining rank) copied to the "
         f"{plan.world_size} renumbered rank(s) for data_parallel={excl.data_parallel[1]}"
         if step is not None else
         "checkpoint: none complete on every remaining rank; the relaunch starts from step 0")
    launch = _launch_spec(record, plan.world_size, group, new_nodes[0].name)
    table = lifecycle.rank_table_for(sub, group) if record.mode == "ranktable" else None
    local = Path(record.local_data) if record.local_data else None
    lifecycle.write_rendered(store, record.job_id, render_job(
        launch, plan, data_paths_for(plan, local), table))
    record = record.replace(
        nodes=new_nodes, world_size=plan.world_size, overrides=spec.overrides,
        sched_host=launch.sched_host if record.mode == "msrun" else None,
        excluded=(*record.excluded, *excl.excluded),
        stray=(*record.stray, *(n for n in gone if n.name in left_over)),
        message=f"relaunched without {', '.join(excl.excluded)}")
    store.save(record)
    from orchestrator.backends import backend_for

    record = backend_for(record).stage(record, group, store, echo)  # slurm: maybe a new bundle
    return lifecycle.resume_job(record, group, store)


def _refuse_unless_ended(record: JobRecord, excl: Exclusion, group: NodeGroup) -> None:
    """JobError unless every remaining node answers and runs nothing of the job."""
    remaining = record.replace(nodes=tuple(n for n in record.nodes if n.name in excl.remaining))
    reports = query_job(remaining, group)
    down = [n for n, r in reports.items() if not isinstance(r, NodeReport)]
    if down:
        raise JobError(f"job {record.job_id}: cannot reach {', '.join(down)}; nothing changed")
    running = [f"{n}/{s.slot}" for n, r in reports.items() if isinstance(r, NodeReport)
               for s in r.slots if s.state in ("running", "exiting")]
    if running:
        raise JobError(f"job {record.job_id} still runs ({', '.join(running[:8])}); stop it "
                       f"with `orchestrate down {record.job_id}` first")


def _launch_spec(record: JobRecord, world_size: int, group: NodeGroup,
                 first: str) -> LaunchSpec:
    """The relaunch's launch choices: the record's, with the scheduler on `first`."""
    from orchestrator.job import lifecycle
    from orchestrator.remote.group import node_address  # an ssh_config alias: its HostName

    inv = group.inventory
    return LaunchSpec(job_id=record.job_id, mode=record.mode, world_size=world_size,
                      sched_host=node_address(inv.node(first), inv),
                      sched_port=record.sched_port or lifecycle.sched_port_for(record.job_id),
                      cluster_timeout=record.cluster_timeout, entrypoint=record.entrypoint,
                      stop_grace=record.stop_grace)
