"""The SSH backend: ranks run where the inventory says, started over the node group.

    orchestrate up -i inventories/local.yaml -c tiny --wait       # backend: ssh (default)

Each node's launch.sh starts its ranks detached under a per-node supervisor (`launch.sh
start`); status, stop and fetch go over the same connections.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO

from orchestrator.backends.base import Echo, Poll
from orchestrator.job.state import JobRecord, JobStore
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport


class JobDirOverSSH:
    """`fetch` and `stream` of a file in a node's job folder, over the group's connection: the
    part of the Backend protocol the SSH and Slurm backends share (their nodes are reachable
    over SSH)."""

    def fetch(self, record: JobRecord, group: NodeGroup, node: str, relpath: str,
              local: Path) -> Path:
        return fetch_over_group(group, node, f"{record.node(node).job_dir}/{relpath}", local)

    def stream(self, record: JobRecord, group: NodeGroup, node: str, relpath: str,
               offset: int) -> AbstractContextManager[IO[bytes]]:
        return stream_over_group(group, node, f"{record.node(node).job_dir}/{relpath}", offset)


class SSHBackend(JobDirOverSSH):
    """Fan-out over SSH (or the local machine): the seed's world."""

    name = "ssh"
    node_files = True

    def stage(self, record: JobRecord, group: NodeGroup, store: JobStore,
              echo: Echo) -> JobRecord:
        from orchestrator.job.rollout import stage_all

        return stage_all(record, group, store, echo)

    def start(self, record: JobRecord, group: NodeGroup, store: JobStore,
              resume: bool) -> JobRecord:
        from orchestrator.job.rollout import start_over_ssh

        return start_over_ssh(record, group, store, resume)

    def launch(self, record: JobRecord, group: NodeGroup, store: JobStore,
               echo: Echo) -> JobRecord:
        """Each node starts in the same session as soon as it is staged (job/rollout.py)."""
        from orchestrator.job.rollout import stage_and_start

        return stage_and_start(record, group, store, echo)

    def poll(self, record: JobRecord, group: NodeGroup, timeout: float) -> Poll:
        from orchestrator.job.nodes import query_job

        return Poll(reports=query_job(record, group, timeout))

    def stop(self, record: JobRecord, group: NodeGroup, only: Collection[str] | None,
             timeout: float) -> GroupResult[str]:
        from orchestrator.job.teardown import stop_over_ssh

        return stop_over_ssh(record, group, only, timeout)


def stream_over_group(group: NodeGroup, node: str, remote: str, offset: int
                      ) -> AbstractContextManager[IO[bytes]]:
    """`remote` on `node` from byte `offset` on, over the group's connection (OpenSSH with
    the transport's settings, else SFTP: orchestrator/ckpt/nodes.py open_stream)."""
    from orchestrator.ckpt.nodes import open_stream

    return open_stream(group.transport(node), PurePosixPath(remote), offset)


def fetch_over_group(group: NodeGroup, node: str, remote: str, local: Path) -> Path:
    """`remote` on `node` copied to `local` over the group's connection (raises its error)."""
    def one(t: Transport) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        t.get(PurePosixPath(remote), local)
        return local

    result = group.map(one, [node])
    result.raise_on_failure()
    return result.succeeded[node]
