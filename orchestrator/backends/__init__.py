"""Backends: where a job's ranks run (base.py: the interface; ssh.py; slurm.py).

    backend = backend_for(record)        # the one the job was started with
    backend = get_backend("slurm")       # `up --backend slurm` / inventory `backend: slurm`
"""

from __future__ import annotations

from orchestrator.backends.base import Backend, Poll
from orchestrator.errors import JobError
from orchestrator.job.state import JobRecord

__all__ = ["Backend", "Poll", "backend_for", "get_backend"]


def get_backend(name: str) -> Backend:
    """The backend called `name` (ssh, slurm); JobError for one that cannot start jobs."""
    if name == "ssh":
        from orchestrator.backends.ssh import SSHBackend

        return SSHBackend()
    if name == "slurm":
        from orchestrator.backends.slurm import SlurmBackend

        return SlurmBackend()
    raise JobError(f"backend {name!r} cannot run jobs from here (backends: ssh, slurm)")


def backend_for(record: JobRecord) -> Backend:
    """The backend of the job's record."""
    return get_backend(record.backend)
