"""`orchestrate up --backend k8s`: Kubernetes manifests (AscendJob / Volcano) of a job.

    orchestrate up --backend k8s --emit out/ -i inventories/12node.yaml -c 65b \\
        --image registry/bloom:latest --volume bloom-ckpt --set data.path=/data/alpaca-mr
    kubectl apply -f out/

Without --emit, the job is recorded and started through the Kubernetes backend
(orchestrator/backends/k8s.py: the same lifecycle, watch loop, guard, status and down as ssh
and slurm) with the kubeconfig (--kubeconfig, else $KUBECONFIG / ~/.kube/config);
`orchestrate logs JOB` reads the pods' logs from the API server (logs_k8s).
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


def up_k8s(inv: Any, spec: Any, args: K8sArgs, launch_opts: Any, state_dir: Path,
           follow: Any) -> None:
    """Plan and render as for SSH, build the manifests, validate them, then write them
    (--emit) or record the job and start it through the Kubernetes backend; `follow(record,
    group, store)` then leaves the guard or watches (as for ssh and slurm)."""
    from orchestrator.cli.job_common import store_for
    from orchestrator.errors import JobError
    from orchestrator.job.dataset import looks_local
    from orchestrator.k8s.manifests import K8sOptions

    missing = [n for n, v in (("--image", args.image), ("--volume", args.volume)) if not v]
    if missing:
        raise JobError(f"--backend k8s needs {' and '.join(missing)} (container image; "
                       "PersistentVolumeClaim for checkpoints)")
    assert args.image is not None and args.volume is not None
    if inv.fault_tolerance is not None:
        raise JobError(f"{inv.path}: fault_tolerance: not supported with --backend k8s (the "
                       "scheduler's address is the operator's; remove the key for this job)")
    data = str(spec.value("data.path") or "")
    if launch_opts.entrypoint is None and looks_local(data):
        raise JobError(f"data.path {data!r}: with --backend k8s nothing is staged; give the "
                       "absolute path of a MindRecord folder inside the pods (image or volume)")
    opts = K8sOptions(image=args.image, volume=args.volume, namespace=args.namespace,
                      queue=args.queue, ring_controller=args.ring_controller)
    if args.emit is not None:
        _emit(inv, spec, launch_opts, opts, args.emit, store_for(state_dir))
        return
    _apply(inv, spec, launch_opts, opts, args.kubeconfig, store_for(state_dir), follow)


def _emit(inv: Any, spec: Any, launch_opts: Any, opts: Any, out: Path, store: Any) -> None:
    """`--emit DIR`: the validated manifests as YAML for `kubectl apply -f DIR`; no record."""
    from orchestrator.config.plan import build_plan
    from orchestrator.job.render import LaunchSpec
    from orchestrator.job.state import new_job_id
    from orchestrator.k8s.emit import emit, too_big_for_client_apply
    from orchestrator.k8s.manifests import job_manifests, k8s_name

    plan = build_plan(inv, spec)
    job_id = new_job_id(spec.preset, set(store.ids()))
    launch = LaunchSpec(job_id=job_id, mode=launch_opts.mode, world_size=plan.world_size,
                        sched_host="", cluster_timeout=launch_opts.cluster_timeout,
                        entrypoint=launch_opts.entrypoint, stop_grace=launch_opts.stop_grace)
    manifests = job_manifests(plan, launch, opts)
    for path in emit(manifests, out):
        click.echo(f"wrote {path}")
    for name in too_big_for_client_apply(manifests):
        click.echo(f"warning: {name} is over 256 KiB: use `kubectl apply --server-side -f "
                   f"{out}` (client-side apply cannot annotate it)", err=True)
    click.echo(f"job {job_id}: {plan.world_size} ranks on {len(plan.nodes)} pod(s), "
               f"{launch_opts.mode} mode, Kubernetes name {k8s_name(job_id)}; apply with "
               f"`kubectl apply -f {out}`")


def _apply(inv: Any, spec: Any, launch_opts: Any, opts: Any, kubeconfig: Path | None,
           store: Any, follow: Any) -> None:
    """Record the job, then stage + start it through the backend (lifecycle.launch)."""
    from orchestrator.backends import job_group
    from orchestrator.backends.k8s import create_job
    from orchestrator.cli.job_common import launch_then

    record = create_job(inv, spec, store, launch_opts, opts, kubeconfig)
    click.echo(f"job {record.job_id}: {record.world_size} ranks on {len(record.nodes)} pod(s), "
               f"{record.mode} mode, Kubernetes {record.scheduler_ref['kind']} "
               f"{record.scheduler_ref['namespace']}/{record.scheduler_job}")
    with job_group(record, inv) as group:
        launch_then(record, group, store, lambda r: follow(r, group, store))


def logs_k8s(record: Any, tail: int) -> None:
    """`logs JOB` of a Kubernetes job: each pod's `ascend` container, prefixed [pod] (the
    lines of `launch.sh run` already carry their slot: `[pod] [slot] ...`)."""
    from orchestrator.backends.k8s import ref_of
    from orchestrator.k8s.api import pod_logs
    from orchestrator.untrusted import scrub

    for pod, text in pod_logs(ref_of(record), tail):
        for line in text.splitlines():
            click.echo(scrub(f"[{pod}] {line}"))
