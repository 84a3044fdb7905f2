"""The Kubernetes backend: one AscendJob (msrun) or Volcano Job (ranktable) per attempt, one
pod per inventory node, through the official `kubernetes` client and a kubeconfig.

    orchestrate up --backend k8s -i inventories/12node.yaml -c 65b --image reg/bloom:1 \\
        --volume bloom-ckpt --set data.path=/data/mr [--kubeconfig FILE] [--wait]
    orchestrate status JOB | logs JOB | down JOB

`create_job` plans and renders as for SSH and writes the job's manifests (validated) to
`<state>/jobs/<id>/k8s/`; the record (backend k8s, one NodeRecord per pod, where the job
lives in `scheduler_ref`) then goes through the same lifecycle, watch loop, guard, status and
down as ssh and slurm:

- stage: read the manifests back and validate them again (nothing is copied to nodes: code
  and launch scripts travel in the job's ConfigMap);
- start: create the ConfigMaps and the job object (a resumed attempt first deletes the last
  one and its pods; its containers run `launch.sh run resume`); `scheduler_job` is the job
  object's name; a refusal records FAILED with the API's reason;
- poll: the job object's status, the pods and the ends of their logs (k8s/status.py: pod
  phases -> rank states, `[slot] step=...` lines -> each rank's step and loss, the job's
  Failed / pending pods -> the verdict); an API that does not answer makes every node
  unreachable (the watch loop's node-lost timeout then fails the attempt);
- stop: delete the job object (Kubernetes sends SIGTERM; `launch.sh run` stops every rank)
  and its ConfigMaps, then wait until no pod is left;
- fetch: refused in one line (files live in the pods and on the claim).

Only k8s/api.py talks to the API server; none runs where orchestrate is developed
(docs/k8s.md says what is and is not tested).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from orchestrator.backends.base import Echo, Poll, stage_then_start
from orchestrator.config.inventory import Inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import JobSpec
from orchestrator.errors import JobError
from orchestrator.job.state import JobRecord, JobStatus, JobStore, NodeRecord
from orchestrator.k8s import api
from orchestrator.k8s.manifests import JOB_DIR, K8sOptions, job_manifests, k8s_name, resumed
from orchestrator.k8s.schema import validate
from orchestrator.k8s.status import poll_of
from orchestrator.remote.group import GroupResult, NodeGroup

MANIFEST_DIR = "k8s"  # <state>/jobs/<id>/k8s/: the job's manifests, in apply order


def create_job(inv: Inventory, spec: JobSpec, store: JobStore, launch_opts: Any,
               opts: K8sOptions, kubeconfig: Path | None) -> JobRecord:
    """Plan, render and validate the job's manifests, keep them in the job's local folder;
    record the job PENDING (backend k8s). Nothing is sent to the API server.

    Raises:
        ManifestError: a manifest is refused by its schema (no record is left).
    """
    from orchestrator.job.lifecycle import reserve_job_id
    from orchestrator.job.render import LaunchSpec
    from orchestrator.k8s.emit import emit

    plan = build_plan(inv, spec)
    job_id = reserve_job_id(store, spec.preset)
    launch = LaunchSpec(job_id=job_id, mode=launch_opts.mode, world_size=plan.world_size,
                        sched_host="", cluster_timeout=launch_opts.cluster_timeout,
                        entrypoint=launch_opts.entrypoint, stop_grace=launch_opts.stop_grace)
    manifests = job_manifests(plan, launch, opts)
    job_dir = store.job_dir(job_id)
    try:
        emit(manifests, job_dir / MANIFEST_DIR)
    except JobError:  # ManifestError too: refused before anything was written
        job_dir.rmdir()  # reserved, empty: no job was made
        raise
    job = manifests[-1]
    where = {"namespace": opts.namespace, "api_version": job["apiVersion"],
             "kind": job["kind"], "volume": opts.volume,
             "kubeconfig": str(kubeconfig.resolve()) if kubeconfig else None}
    now = time.time()
    nodes = tuple(NodeRecord(name=n.ranks.node.name, host=n.ranks.node.host,
                             rank_start=n.ranks.rank_start, rank_end=n.ranks.rank_end,
                             devices=n.ranks.node.devices, job_dir=JOB_DIR)
                  for n in plan.nodes)
    record = JobRecord(job_id=job_id, status=JobStatus.PENDING, created_at=now, updated_at=now,
                       inventory_path=str(inv.path.resolve()), inventory_digest=inv.digest,
                       preset=spec.preset, overrides=spec.overrides, mode=launch.mode,
                       world_size=plan.world_size, nodes=nodes,
                       entrypoint=launch_opts.entrypoint,
                       cluster_timeout=launch_opts.cluster_timeout,
                       stop_grace=launch_opts.stop_grace, backend="k8s",
                       scheduler_job=k8s_name(job_id), scheduler_ref=where)
    store.save(record)
    return record


def manifests_of(store: JobStore, record: JobRecord) -> list[dict[str, Any]]:
    """The job's manifests as create_job wrote them, each validated again (apply order)."""
    folder = store.job_dir(record.job_id) / MANIFEST_DIR
    paths = sorted(folder.glob("*.yaml"), key=lambda p: int(p.stem.rsplit("-", 2)[-2]))
    if not paths:
        raise JobError(f"job {record.job_id}: no manifests in {folder}")
    out = [yaml.safe_load(p.read_text()) for p in paths]
    for m in out:
        validate(m)
    return out


class K8sBackend:
    """A job object per attempt on a Kubernetes cluster; see the module docstring."""

    name = "k8s"
    node_files = False  # job folders live in the pods: no SSH, no `launch.sh` over the group

    def stage(self, record: JobRecord, group: NodeGroup,  # noqa: ARG002 - no nodes
              store: JobStore, echo: Echo) -> JobRecord:
        manifests = manifests_of(store, record)
        echo(f"{len(manifests)} Kubernetes object(s) validated: "
             + ", ".join(f"{m['kind']} {m['metadata']['name']}" for m in manifests))
        return record

    def launch(self, record: JobRecord, group: NodeGroup, store: JobStore,
               echo: Echo) -> JobRecord:
        """Validate the manifests, then create the objects."""
        return stage_then_start(self, record, group, store, echo)

    def start(self, record: JobRecord, group: NodeGroup,  # noqa: ARG002 - no nodes
              store: JobStore, resume: bool) -> JobRecord:
        """Create the objects; on a refusal record FAILED with the API's reason (JobError)."""
        ref = ref_of(record)
        try:
            manifests = manifests_of(store, record)
            if resume:  # the last attempt's object and pods must be gone first
                api.delete(ref)
                api.wait_pods_gone(ref, record.stop_grace + 60.0)
                manifests[-1] = resumed(manifests[-1], record.attempts)
            api.create(ref, manifests)
        except JobError as e:
            store.save(record.with_status(JobStatus.FAILED, str(e)).replace(
                cleaned=_cleanup(ref)))
            raise JobError(f"job {record.job_id} not started: {e}") from None
        record = record.with_status(
            JobStatus.LAUNCHING, f"{ref.kind} {ref.namespace}/{ref.name} created")
        store.save(record)
        return record

    def poll(self, record: JobRecord, group: NodeGroup,  # noqa: ARG002 - no nodes
             timeout: float) -> Poll:
        ref = ref_of(record)
        try:
            status = api.job_status(ref, timeout)
            pods = api.list_pods(ref, timeout)
        except JobError as e:  # the API does not answer: no node can be seen
            return Poll(reports=GroupResult({n.name: e for n in record.nodes}))
        logs = api.log_tails(ref, pods, timeout)
        return poll_of(record, ref.kind, ref.name, status, pods, logs)

    def stop(self, record: JobRecord, group: NodeGroup,  # noqa: ARG002 - no nodes
             only: Collection[str] | None, timeout: float) -> GroupResult[str]:
        """Delete the job object and its ConfigMaps, wait until its pods are gone; every
        node (pod) gets that one outcome."""
        ref = ref_of(record)
        outcome: str | BaseException = f"deleted {ref.kind} {ref.namespace}/{ref.name}"
        try:
            api.delete(ref)
            left = api.wait_pods_gone(ref, timeout)
            if left:
                outcome = JobError(f"pod(s) {', '.join(left[:4])} still there {timeout:.0f} s "
                                   f"after deleting {ref.kind} {ref.name}")
        except JobError as e:
            outcome = e
        return GroupResult({n.name: outcome for n in record.nodes
                            if only is None or n.name in only})

    def fetch(self, record: JobRecord, group: NodeGroup,  # noqa: ARG002 - no nodes
              node: str, relpath: str, local: Path) -> Path:  # noqa: ARG002
        ref = ref_of(record)
        raise JobError(f"job {record.job_id} runs on Kubernetes: {relpath} of {node} is inside "
                       f"its pod, not reachable from here; checkpoints and strategies are on "
                       f"the claim {ref.volume or '(--volume)'} under {ref.name}/")


def _cleanup(ref: api.K8sRef) -> bool:
    """After a failed create: delete what was created; whether nothing is left."""
    try:
        api.delete(ref)
    except JobError:
        return False
    return True


def ref_of(record: JobRecord) -> api.K8sRef:
    """Where the job lives, from its record (JobError for a record that does not say)."""
    where = record.scheduler_ref
    try:
        return api.K8sRef(job_id=record.job_id, name=str(record.scheduler_job),
                          namespace=str(where["namespace"]),
                          api_version=str(where["api_version"]), kind=str(where["kind"]),
                          kubeconfig=where.get("kubeconfig"), volume=where.get("volume"))
    except KeyError as e:
        raise JobError(f"job {record.job_id}: its record does not say where on Kubernetes it "
                       f"runs ({e.args[0]} missing from scheduler_ref)") from None
