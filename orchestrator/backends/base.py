"""The backend interface: the part of a job that knows where its ranks run.

    backend = backend_for(record)                        # orchestrator/backends/__init__.py
    record = backend.launch(record, group, store, echo)  # `up`: stage + start (ssh: per node)
    record = backend.stage(record, group, store, echo)   # code, data, rendered files
    record = backend.start(record, group, store, resume=False)
    poll = backend.poll(record, group, timeout)          # per-node reports + scheduler view
    stopped = backend.stop(record, group, only=None, timeout=180.0)
    backend.fetch(record, group, "th0", "slurm-12.out", local_path)
    with backend.stream(record, group, "th0", "output/checkpoint/rank_0/x.ckpt", 0) as f: ...

Plan, render, the watch loop, job records and collect-ckpt are the same for every backend;
only these steps differ (ssh: fan-out over the node group; slurm: one batch job;
k8s: one job object through the API server).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from orchestrator.job.nodes import NodeReport
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.group import GroupResult, NodeGroup

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Poll:
    """One look at a job: what each node says of its ranks, and what the scheduler says."""

    reports: GroupResult[NodeReport]
    # The scheduler's verdict when it knows more than the ranks (a pending job, a time
    # limit): the status and its one-line reason. None: the ranks decide (ssh, always).
    verdict: tuple[JobStatus, str] | None = None
    scheduler_state: str | None = None  # e.g. Slurm's JobState; None without a scheduler


class Backend(Protocol):
    """Where ranks run. Every method takes the job's record and the command's node group."""

    name: str
    # The job folders on the nodes are reachable over the command's node group (ssh, slurm:
    # `launch.sh` runs there, files are read there); False: only the scheduler's API sees
    # the ranks (k8s), so SSH-only steps (resumed step, stall probe, down --save) are skipped.
    node_files: bool

    def stage(self, record: JobRecord, group: NodeGroup, store: JobStore,
              echo: Echo) -> JobRecord:
        """Put code, data and the rendered files into every node's job folder."""
        ...

    def start(self, record: JobRecord, group: NodeGroup, store: JobStore,
              resume: bool) -> JobRecord:
        """Start (or, with `resume`, restart) every rank; JobError if it cannot."""
        ...

    def launch(self, record: JobRecord, group: NodeGroup, store: JobStore,
               echo: Echo) -> JobRecord:
        """Stage and start a new job (`up`): stage + start, or both overlapped per node."""
        ...

    def poll(self, record: JobRecord, group: NodeGroup, timeout: float) -> Poll:
        """Ask the nodes (and the scheduler) how the job is; never trusts the record."""
        ...

    def stop(self, record: JobRecord, group: NodeGroup, only: Collection[str] | None,
             timeout: float) -> GroupResult[str]:
        """Stop every rank (on the nodes in `only`); name -> what stop did, or the error."""
        ...

    def fetch(self, record: JobRecord, group: NodeGroup, node: str, relpath: str,
              local: Path) -> Path:
        """Copy `relpath` (in the node's job folder) from `node` to `local`."""
        ...

    def stream(self, record: JobRecord, group: NodeGroup, node: str, relpath: str,
               offset: int) -> AbstractContextManager[IO[bytes]]:
        """`relpath` (in the node's job folder) as bytes from `offset` on: collect-ckpt's
        verified, resumable downloads (hashed as they stream)."""
        ...


def stage_then_start(backend: Backend, record: JobRecord, group: NodeGroup, store: JobStore,
                     echo: Echo) -> JobRecord:
    """Backend.launch of a backend whose start is one act for all nodes (an sbatch, a job
    object): stage everywhere, then start."""
    record = backend.stage(record, group, store, echo)
    return backend.start(record, group, store, resume=False)
