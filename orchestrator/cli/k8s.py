"""`orchestrate up --backend k8s`: Kubernetes manifests (AscendJob / Volcano) of a job.

    orchestrate up --backend k8s --emit out/ -i inventories/12node.yaml -c 65b \\
        --image registry/bloom:latest --volume bloom-ckpt --set data.path=/data/alpaca-mr
    kubectl apply -f out/

Without --emit, the manifests are applied through the `kubernetes` client with the kubeconfig
(--kubeconfig, else $KUBECONFIG / ~/.kube/config); `status`, `logs` and `down` of such a job
ask the API server (orchestrator/k8s/api.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


@dataclass(frozen=True)
class K8sArgs:
    """The k8s options of `up`, as given (None: not given)."""

    emit: Path | None
    image: str | None
    volume: str | None
    namespace: str
    queue: str
    ring_controller: str
    kubeconfig: Path | None

    def given(self) -> list[str]:
        """The k8s-only options given (refused with another backend)."""
        names = {"--emit": self.emit, "--image": self.image, "--volume": self.volume,
                 "--kubeconfig": self.kubeconfig}
        return [n for n, v in names.items() if v is not None]


def k8s_options(f: Any) -> Any:
    """The options `up --backend k8s` takes."""
    opts = [
        click.option("--emit", type=click.Path(path_type=Path), default=None, metavar="DIR",
                     help="--backend k8s: write the job's manifests (YAML, validated against "
                          "the CRD schemas) to DIR for `kubectl apply -f DIR`; apply nothing."),
        click.option("--image", default=None,
                     help="--backend k8s: container image with python and MindSpore (the "
                          "model package comes in a ConfigMap)."),
        click.option("--volume", default=None, metavar="CLAIM",
                     help="--backend k8s: PersistentVolumeClaim for checkpoints and "
                          "strategies (the pods' output/, subPath <job>)."),
        click.option("--namespace", default="default", show_default=True,
                     help="--backend k8s: namespace of the job's objects."),
        click.option("--queue", default="default", show_default=True,
                     help="--backend k8s: Volcano queue."),
        click.option("--ring-controller", default="ascend-910b", show_default=True,
                     help="--backend k8s: value of the `ring-controller.atlas` label."),
        click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False),
                     default=None,
                     help="--backend k8s without --emit: kubeconfig to apply with (default: "
                          "$KUBECONFIG, ~/.kube/config)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def up_k8s(inv: Any, spec: Any, mode: str, args: K8sArgs, launch_opts: Any,
           state_dir: Path) -> None:
    """Plan and render as for SSH, build the manifests, validate them, then write or apply."""
    from orchestrator.cli.job_common import store_for
    from orchestrator.config.plan import build_plan
    from orchestrator.errors import JobError
    from orchestrator.job.render import LaunchSpec
    from orchestrator.job.state import new_job_id
    from orchestrator.k8s.manifests import K8sOptions, job_manifests, k8s_name

    missing = [n for n, v in (("--image", args.image), ("--volume", args.volume)) if not v]
    if missing:
        raise JobError(f"--backend k8s needs {' and '.join(missing)} (container image; "
                       "PersistentVolumeClaim for checkpoints)")
    assert args.image is not None and args.volume is not None
    if inv.fault_tolerance is not None:
        raise JobError(f"{inv.path}: fault_tolerance: not supported with --backend k8s (the "
                       "scheduler's address is the operator's; remove the key for this job)")
    from orchestrator.job.dataset import looks_local

    data = str(spec.value("data.path") or "")
    if entrypoint_free(launch_opts) and looks_local(data):
        raise JobError(f"data.path {data!r}: with --backend k8s nothing is staged; give the "
                       "absolute path of a MindRecord folder inside the pods (image or volume)")
    plan = build_plan(inv, spec)
    store = store_for(state_dir)
    job_id = new_job_id(spec.preset, set(store.ids()))
    launch = LaunchSpec(job_id=job_id, mode=mode, world_size=plan.world_size, sched_host="",
                        cluster_timeout=launch_opts.cluster_timeout,
                        entrypoint=launch_opts.entrypoint, stop_grace=launch_opts.stop_grace)
    manifests = job_manifests(plan, launch, K8sOptions(
        image=args.image, volume=args.volume, namespace=args.namespace, queue=args.queue,
        ring_controller=args.ring_controller))
    what = (f"job {job_id}: {plan.world_size} ranks on {len(plan.nodes)} pod(s), {mode} mode, "
            f"Kubernetes name {k8s_name(job_id)}")
    if args.emit is not None:
        from orchestrator.k8s.emit import emit, too_big_for_client_apply

        for path in emit(manifests, args.emit):
            click.echo(f"wrote {path}")
        for name in too_big_for_client_apply(manifests):
            click.echo(f"warning: {name} is over 256 KiB: use `kubectl apply --server-side -f "
                       f"{args.emit}` (client-side apply cannot annotate it)", err=True)
        click.echo(f"{what}; apply with `kubectl apply -f {args.emit}`")
        return
    from orchestrator.k8s.api import apply

    ref = apply(manifests, args.kubeconfig, store.job_dir(job_id))
    click.echo(f"{what}: applied to namespace {ref.namespace}. Follow it with `orchestrate "
               f"status {job_id}`, stop it with `orchestrate down {job_id}`.")


def entrypoint_free(launch_opts: Any) -> bool:
    """The ranks run the bundled trainer (no --entrypoint), so they read data.path."""
    return launch_opts.entrypoint is None


def k8s_ref(state_dir: Path, job_id: str | None) -> Any:
    """The K8sRef of a job `up --backend k8s` applied, else None (an SSH job)."""
    if not job_id:
        return None
    from orchestrator.cli.job_common import store_for
    from orchestrator.k8s.api import load_ref

    store = store_for(state_dir)
    return load_ref(store.job_dir(job_id)) if store.job_dir(job_id).is_dir() else None


def status_k8s(ref: Any, as_json: bool) -> None:
    """`status JOB` of a Kubernetes job: the job object's status and its pods' phases."""
    import json

    from orchestrator.k8s.api import job_state, pod_phases

    state, pods = job_state(ref), pod_phases(ref)
    if as_json:
        click.echo(json.dumps({"job_id": ref.job_id, "backend": "k8s", "status": state,
                               "pods": pods}, indent=2, default=str))
        return
    conditions = state.get("conditions") or []
    last = conditions[-1].get("type", "?") if conditions else state.get("state", {}).get(
        "phase", "no status yet")
    click.echo(f"job {ref.job_id}: {ref.kind} {ref.namespace}/{ref.name}: {last}")
    for name, phase in sorted(pods.items()):
        click.echo(f"  {name}: {phase}")


def logs_k8s(ref: Any, tail: int) -> None:
    """`logs JOB` of a Kubernetes job: each pod's `ascend` container, prefixed [pod]."""
    from orchestrator.k8s.api import pod_logs

    for pod, text in pod_logs(ref, tail):
        for line in text.splitlines():
            click.echo(f"[{pod}] {line}")


def down_k8s(ref: Any) -> None:
    """`down JOB` of a Kubernetes job: delete the job object and its ConfigMaps."""
    from orchestrator.k8s.api import delete

    delete(ref)
    click.echo(f"job {ref.job_id}: deleted {ref.kind} {ref.namespace}/{ref.name} and its "
               "ConfigMaps")
