"""Render a job's files locally: per-node launch scripts, env files and job.yaml.

    files = render_job(launch, plan)            # {node name: {file name: RenderedFile}}
    text = render_pod_launch(launch, "worker", 8, "python3")   # a Kubernetes pod's launch.sh

Jinja2 with StrictUndefined and a `quote` filter (shlex.quote): every value that reaches a
shell is quoted; templates only substitute, loop and branch. Nothing here touches a node.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from orchestrate_bloom.train import graceful

from orchestrator import bundle
from orchestrator.config.plan import Plan
from orchestrator.errors import JobError
from orchestrator.hccl.ranktable import NodeRanks

MODES = ("ranktable", "msrun")
SCHED_SLOT = "sched"
DEFAULT_SCHED_PORT = 8118
DEFAULT_CLUSTER_TIMEOUT = 7200  # s; MindFormers' msrun wrapper default (7.1B compiles ~1.5 h)
DEFAULT_STOP_GRACE = 10  # s between SIGTERM and SIGKILL
K8S_TABLE_DIR = "/user/serverid/devindex/config"  # where Ascend platforms mount hccl.json
# MindSpore's dynamic cluster (libmindspore_cluster.so): a worker hears that the cluster has
# formed only in its heartbeat's answer, and at exit waits for the heartbeat thread's sleep to
# end; the heartbeat sleeps a random whole number of seconds in [MS_RETRY_INTERVAL_LOWER,
# MS_RETRY_INTERVAL_UPPER], 3..5 by default (the CPU collective library's address retries use
# the same pair). 1..2 s saves seconds at every multi-rank start and exit (docs/design.md); it
# is 0.5-1 heartbeat/s per worker (64-128 messages/s for a 16-node x 8-device job), and from
# MindSpore's own large-cluster bound (kClusterScaleBound, 256 workers) MindSpore's defaults
# stay. A value in the inventory's `env:` or the pod's environment wins.
CLUSTER_RETRY_INTERVAL_S = (1, 2)
CLUSTER_RETRY_MAX_WORKERS = 256
# A Kubernetes pod's node rank, known only at run time: the ascend-operator's environment
# (AscendJob, msrun) or Volcano's task index (rank-table mode); `n` is ranks per pod.
POD_NODE_RANK = {"msrun": "MS_NODE_RANK * MS_LOCAL_WORKER", "ranktable": "VC_TASK_INDEX * {n}"}


@dataclass(frozen=True)
class LaunchSpec:
    """Job-wide launch choices (the same for every node)."""

    job_id: str
    mode: str  # "ranktable" | "msrun"
    world_size: int
    sched_host: str  # msrun: address of the first node in rank order
    sched_port: int = DEFAULT_SCHED_PORT
    cluster_timeout: int = DEFAULT_CLUSTER_TIMEOUT
    entrypoint: str | None = None  # shell command run per rank instead of the bundled trainer
    stop_grace: int = DEFAULT_STOP_GRACE
    # MindSpore fault tolerance asked for by the inventory (config/faulttol.py): (name, value)
    fault_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Slot:
    """One process the node's supervisor starts: a rank, or the msrun scheduler."""

    name: str  # global rank id as text, or "sched"
    rank: int | str | None  # global rank; str: a shell arithmetic expansion (k8s pods)
    device: int | None  # local device id (None for the scheduler)


@dataclass(frozen=True)
class RenderedFile:
    text: str
    mode: int  # file mode on disk, locally and on the node


def cluster_retry_env(world_size: int) -> dict[str, str]:
    """MS_RETRY_INTERVAL_LOWER/UPPER for a dynamic cluster of `world_size` workers ({} from
    CLUSTER_RETRY_MAX_WORKERS on: MindSpore's defaults); launch scripts and tests use this.

        env.update(cluster_retry_env(2))
    """
    if world_size > CLUSTER_RETRY_MAX_WORKERS:
        return {}
    lower, upper = CLUSTER_RETRY_INTERVAL_S
    return {"MS_RETRY_INTERVAL_LOWER": str(lower), "MS_RETRY_INTERVAL_UPPER": str(upper)}


def default_mode(device_target: str) -> str:
    """`msrun` (MindSpore's dynamic cluster) on every target, Ascend included: rank-table
    startup is deprecated since MindSpore 2.4. `ranktable` only when asked for (`--mode
    ranktable`) or given a table (`up --rank-table FILE`)."""
    del device_target  # the same everywhere since issue 15.6
    return "msrun"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(bundle.templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False,
                             # bash uses `${#array[@]}`: Jinja comments are `{## ... ##}` here
                             comment_start_string="{##", comment_end_string="##}")
    env.filters["quote"] = lambda v: shlex.quote(str(v))
    return env


@functools.cache
def proc_alive_fn() -> str:
    """bash `start_time PID` (-> ST) and `alive PID STARTTIME` exactly as launch.sh has them
    (templates/proc_alive.sh.j2): a node's first staging command tests the ACTIVE job with it."""
    return environment().get_template("proc_alive.sh.j2").render()


def node_slots(launch: LaunchSpec, ranks: NodeRanks, first: bool) -> tuple[Slot, ...]:
    """The node's slots in start order: the scheduler first (msrun, first node), then ranks."""
    slots = [Slot(name=str(r), rank=r, device=d)
             for r, d in zip(ranks.ranks, ranks.node.devices, strict=True)]
    if launch.mode == "msrun" and first:
        slots.insert(0, Slot(name=SCHED_SLOT, rank=None, device=None))
    return tuple(slots)


def render_launch(launch: LaunchSpec, ranks: NodeRanks, first: bool,
                  env: jinja2.Environment | None = None) -> str:
    """The node's launch.sh text."""
    node = ranks.node
    return _render_slots(launch, f"launch_{launch.mode}.sh.j2", node.name,
                         node_slots(launch, ranks, first), node.python, env,
                         rank_start=ranks.rank_start, rank_end=ranks.rank_end)


def pod_slots(launch: LaunchSpec, role: str, local_workers: int) -> tuple[Slot, ...]:
    """A Kubernetes pod's slots: the msrun scheduler alone, or `local_workers` ranks whose
    global rank the pod learns at run time (POD_NODE_RANK[mode] * local_workers + i)."""
    if role == "scheduler":
        return (Slot(name=SCHED_SLOT, rank=None, device=None),)
    base = POD_NODE_RANK[launch.mode].format(n=local_workers)
    return tuple(Slot(name=str(i), rank=f"$(({base} + {i}))", device=i)
                 for i in range(local_workers))


def render_pod_launch(launch: LaunchSpec, role: str, local_workers: int, python: str,
                      env: jinja2.Environment | None = None,
                      table_dir: str = K8S_TABLE_DIR) -> str:
    """launch.sh of a Kubernetes pod (`role` scheduler or worker): the mode's own template
    (its rank environment rules) with the platform's node rank; `bash launch.sh run` is the
    container's command (the one foreground mode, as on Slurm)."""
    return _render_slots(launch, f"launch_k8s_{launch.mode}.sh.j2", role,
                         pod_slots(launch, role, local_workers), python, env,
                         local_workers=local_workers, table_dir=table_dir)


def _render_slots(launch: LaunchSpec, template: str, node_name: str, slots: Sequence[Slot],
                  python: str, env: jinja2.Environment | None, **extra: Any) -> str:
    if launch.mode not in MODES:
        raise JobError(f"unknown launch mode {launch.mode!r} (modes: {', '.join(MODES)})")
    env = env or environment()
    ctx: dict[str, Any] = {
        "job_id": launch.job_id,
        "node_name": node_name,
        "mode": launch.mode,
        "slots": tuple(slots),
        "has_sched": any(s.name == SCHED_SLOT for s in slots),
        "world_size": launch.world_size,
        "python": python,
        "entrypoint": launch.entrypoint,
        "stop_grace": launch.stop_grace,
        "stop_file": graceful.STOP_FILE,
        "stop_body": graceful.STOP_BODY,
        "sched_host": launch.sched_host,
        "sched_port": launch.sched_port,
        "cluster_timeout": launch.cluster_timeout,
        "fault_env": launch.fault_env,
        "retry_env": sorted(cluster_retry_env(launch.world_size).items()),
        **extra,
    }
    return env.get_template(template).render(ctx)


def render_env(values: Mapping[str, str], env: jinja2.Environment | None = None) -> str:
    """env.sh: `export NAME=value` lines, values quoted (names are validated identifiers)."""
    env = env or environment()
    return env.get_template("env.sh.j2").render(env=sorted(values.items()))


def job_config(plan: Plan, data_path: str | None = None) -> dict[str, dict[str, Any]]:
    """The merged preset with the layout fitted to the inventory (what job.yaml holds)."""
    cfg = plan.spec.to_dict()
    p = plan.layout
    cfg["parallel"].update(data_parallel=p.data_parallel, model_parallel=p.model_parallel,
                           pipeline_stage=p.pipeline_stage,
                           layers_per_stage=list(plan.stage_layers))
    if data_path is not None:
        cfg["data"]["path"] = data_path
    return cfg


def render_job_yaml(plan: Plan, data_path: str | None = None) -> str:
    header = (f"# Job config rendered by orchestrate: preset {plan.spec.preset}"
              f"{' with ' + ' '.join(plan.spec.overrides) if plan.spec.overrides else ''}.\n")
    return header + yaml.safe_dump(job_config(plan, data_path), sort_keys=False)


def stamp_job_id(job_yaml: str, job_id: str) -> str:
    """job.yaml as a node gets it: the rendered text plus the job's id."""
    return job_yaml + f"job:\n  id: {job_id}\n"


def render_job(launch: LaunchSpec, plan: Plan,
               data_paths: Mapping[str, str | None] | None = None,
               rank_table: str | None = None,
               require_table: bool = True) -> dict[str, dict[str, RenderedFile]]:
    """Every node's files: launch.sh, job.yaml, env.sh (if the node has `env:`), rank table.

    Args:
        launch: job-wide launch choices.
        plan: the layout (nodes in rank order).
        data_paths: node name -> data.path for its job.yaml (None: keep the preset's).
        rank_table: merged rank table JSON text (ranktable mode).
        require_table: refuse ranktable mode without a table (off for dry runs).

    Returns:
        node name -> file name -> RenderedFile, in rank order.
    """
    if launch.mode == "ranktable" and rank_table is None and require_table:
        raise JobError("ranktable mode needs the merged rank table")
    env = environment()
    out: dict[str, dict[str, RenderedFile]] = {}
    job_yamls: dict[str | None, RenderedFile] = {}  # nodes with the same data path share one
    for i, node_plan in enumerate(plan.nodes):
        node = node_plan.ranks.node
        data_path = (data_paths or {}).get(node.name)
        if data_path not in job_yamls:
            job_yamls[data_path] = RenderedFile(render_job_yaml(plan, data_path), 0o644)
        files = {
            "launch.sh": RenderedFile(render_launch(launch, node_plan.ranks, i == 0, env), 0o755),
            "job.yaml": job_yamls[data_path],
        }
        if node.env:
            files["env.sh"] = RenderedFile(render_env(node.env, env), 0o600)
        if rank_table is not None:
            files["rank_table.json"] = RenderedFile(rank_table, 0o644)
        out[node.name] = files
    return out


LAYOUT_BEGIN, LAYOUT_END = "\n# >>> layout", "\n# <<< layout\n"  # markers in launch_base.sh.j2


def layout_text(launch_sh: str) -> str | None:
    """The part of a rendered launch.sh that alone decides its job folder's own folders and
    links (`bash launch.sh layout DIR`), markers included; None if it has none (a custom
    script): a node may cache what it makes under a key derived from this text."""
    begin = launch_sh.find(LAYOUT_BEGIN)
    end = launch_sh.find(LAYOUT_END, begin + 1) if begin >= 0 else -1
    return launch_sh[begin:end + len(LAYOUT_END)] if end > 0 else None


def shell_path(path: str | Path, *parts: str) -> str:
    """A node path for a shell command: `~` expanded by the node's shell, the rest quoted."""
    text = str(path)
    tail: Sequence[str] = [p for p in parts if p]
    if text == "~" or text.startswith("~/"):
        rest = "/".join([text[2:], *tail]).strip("/")
        return '"$HOME"' + (("/" + shlex.quote(rest)) if rest else "")
    return shlex.quote("/".join([text.rstrip("/") or "/", *tail]) if tail else text)
