"""Backends: where a job's ranks run (base.py: the interface; ssh.py; slurm.py; k8s.py).

    backend = backend_for(record)        # the one the job was started with
    backend = get_backend("slurm")       # `up --backend slurm` / inventory `backend: slurm`
    with job_group(record, inv) as group: ...   # no SSH connections for a k8s job
"""

from __future__ import annotations

from typing import Any

from orchestrator.backends.base import Backend, Poll
from orchestrator.config.inventory import Inventory
from orchestrator.errors import JobError
from orchestrator.job.state import JobRecord

__all__ = ["Backend", "Poll", "backend_for", "get_backend", "job_group", "need_node_files"]


def get_backend(name: str) -> Backend:
    """The backend called `name` (ssh, slurm, k8s); JobError for any other."""
    if name == "ssh":
        from orchestrator.backends.ssh import SSHBackend

        return SSHBackend()
    if name == "slurm":
        from orchestrator.backends.slurm import SlurmBackend

        return SlurmBackend()
    if name == "k8s":
        from orchestrator.backends.k8s import K8sBackend

        return K8sBackend()
    raise JobError(f"backend {name!r} cannot run jobs from here (backends: ssh, slurm, k8s)")


def backend_for(record: JobRecord) -> Backend:
    """The backend of the job's record."""
    return get_backend(record.backend)


def job_group(record: JobRecord, inv: Inventory, **group_args: Any) -> Any:
    """The NodeGroup a command on the job uses: connecting to the job's nodes now when its
    backend reaches job folders over them (ssh, slurm), to none when it does not (k8s)."""
    from orchestrator.remote.group import NodeGroup

    nodes = [inv.node(n.name) for n in record.nodes] if backend_for(record).node_files else []
    return NodeGroup(inv, nodes, **group_args)


def need_node_files(record: JobRecord, command: str) -> None:
    """JobError (one line) when `command` needs the job folders on the nodes and the job's
    backend cannot reach them (k8s: they are in the pods; checkpoints are on the claim)."""
    if not backend_for(record).node_files:
        where = record.scheduler_ref.get("volume") or "the claim given as --volume"
        raise JobError(f"{command}: job {record.job_id} ran on {record.backend}; its job "
                       f"folders were in its pods. Checkpoints and strategies are on {where} "
                       f"under {record.scheduler_job}/ (docs/k8s.md)")
