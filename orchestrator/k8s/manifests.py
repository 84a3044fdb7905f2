"""Kubernetes manifests of one job, built from the same plan and rendered launch as SSH.

    manifests = job_manifests(plan, launch, K8sOptions(image="reg/bloom:1", volume="ckpt"))

msrun mode: a ConfigMap `<job>-files` (launch scripts, job.yaml, env.sh and the model package
as code.tar.gz) and an AscendJob (mindxdl.gitee.com/v1) with a Scheduler and `nodes` Worker pods;
each worker's ranks are MS_NODE_RANK * MS_LOCAL_WORKER + i, from the operator's environment,
through the msrun launch template's own rank rules (render.render_pod_launch).
Rank-table mode: the same ConfigMap, a `rings-config-<job>` ConfigMap (hccl.json "status":
"initializing", filled by the platform) mounted at /user/serverid/devindex/config and a Volcano
Job (batch.volcano.sh/v1alpha1) whose pods wait for "completed"; ranks VC_TASK_INDEX * n + i.
Every pod copies the ConfigMap into an emptyDir job folder and runs `launch.sh run` (the
one foreground mode, as a Slurm task; `run resume` in a resumed attempt, `resumed()`);
output/checkpoint and output/strategy are subPaths `<job>/checkpoint`, `<job>/strategy` of the
PersistentVolumeClaim the user names. Nothing here validates or writes: see emit.py and schema.py.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from orchestrate_bloom.ckpt import layout as checkpoint

from orchestrator.config.plan import Plan
from orchestrator.errors import JobError
from orchestrator.job.render import (
    K8S_TABLE_DIR,
    LaunchSpec,
    render_env,
    render_job_yaml,
    render_pod_launch,
    stamp_job_id,
)
from orchestrator.job.stage import code_tree

# What goes to the volume: the checkpoint layout's folders (orchestrate_bloom.ckpt.layout),
# each a subPath <job>/<folder>; the rest of output/ (log links) stays in the pod.
_OUT = PurePosixPath("output")
OUTPUT_DIRS = (checkpoint.rank_dir(_OUT, 0).parent.name, checkpoint.strategy_dir(_OUT).name)
CODE_TAR = "code.tar.gz"  # the model package in the files ConfigMap (binaryData)
NPU_RESOURCE = "huawei.com/Ascend910"
OPERATOR_PORT = 2222  # the ascend-operator finds the scheduler port by this container port
CONFIG_DIR = "/orchestrate/config"  # the ConfigMap, read-only
JOB_DIR = "/orchestrate/job"  # emptyDir: the job folder launch.sh runs in
Manifest = dict[str, Any]
Files = tuple[Manifest, dict[str, str]]  # the files ConfigMap, key -> path in the job folder
STOP_MARGIN = 20  # s Kubernetes waits beyond the launch's own SIGTERM->SIGKILL grace


@dataclass(frozen=True)
class PodShape:
    """What every worker pod of the job gets."""

    npus: int  # huawei.com/Ascend910 per worker pod (0: a CPU job)
    grace: int  # terminationGracePeriodSeconds: the launch's stop grace + STOP_MARGIN


@dataclass(frozen=True)
class K8sOptions:
    """What `up --backend k8s` needs beyond plan and launch."""

    image: str  # container image with python, MindSpore and the job's dependencies
    volume: str  # PersistentVolumeClaim for output/ (checkpoints, strategies), subPath <job>
    namespace: str = "default"
    queue: str = "default"  # Volcano queue
    ring_controller: str = "ascend-910b"  # `ring-controller.atlas` label value


def k8s_name(job_id: str) -> str:
    """The job's object name: its id with '.' (as in `7.1b-k3f9`) made '-' (DNS-1123)."""
    return job_id.replace(".", "-").lower()


def job_manifests(plan: Plan, launch: LaunchSpec, opts: K8sOptions) -> list[Manifest]:
    """Every object of the job, ConfigMaps first (the order `kubectl apply` should take)."""
    per_pod = _devices_per_pod(plan)
    python = plan.nodes[0].ranks.node.python
    roles = ("scheduler", "worker") if launch.mode == "msrun" else ("worker",)
    launches = {role: render_pod_launch(launch, role, per_pod, python) for role in roles}
    files = files_configmap(plan, launch, opts, launches)
    name = k8s_name(launch.job_id)
    npus = per_pod if str(plan.spec.value("train.device_target")) == "Ascend" else 0
    pods = PodShape(npus=npus, grace=launch.stop_grace + STOP_MARGIN)
    if launch.mode == "msrun":
        return [files[0], ascend_job(name, opts, len(plan.nodes), pods, files)]
    return [files[0], rings_configmap(name, opts),
            volcano_job(name, opts, len(plan.nodes), pods, files)]


def _devices_per_pod(plan: Plan) -> int:
    counts = {n.ranks.node.name: n.ranks.node.device_count for n in plan.nodes}
    first, n = next(iter(counts.items()))
    for node, count in counts.items():
        if count != n:
            raise JobError(f"node {node} has {count} devices, node {first} {n}: one Kubernetes "
                           "pod template needs the same device count on every node")
    return n


def _env_text(plan: Plan) -> str | None:
    envs = {n.ranks.node.name: dict(n.ranks.node.env) for n in plan.nodes}
    first, env = next(iter(envs.items()))
    for node, other in envs.items():
        if other != env:
            raise JobError(f"node {node} has another `env:` than node {first}: every pod of a "
                           "Kubernetes job gets the same environment")
    return render_env(env) if env else None


def files_configmap(plan: Plan, launch: LaunchSpec, opts: K8sOptions,
                    launches: dict[str, str]) -> tuple[Manifest, dict[str, str]]:
    """ConfigMap `<job>-files`: launch-<role>.sh, job.yaml, env.sh as text, the model package
    as code.tar.gz (binaryData; keeps the object under the 256 KiB of the annotation
    client-side `kubectl apply` writes); and the path in the pod of each key but the
    launches."""
    data: dict[str, str] = {f"launch-{role}.sh": text for role, text in launches.items()}
    data["job.yaml"] = stamp_job_id(render_job_yaml(plan), launch.job_id)
    paths = {"job.yaml": "job.yaml", CODE_TAR: CODE_TAR}
    env = _env_text(plan)
    if env is not None:
        data["env.sh"] = env
        paths["env.sh"] = "env.sh"
    out: Manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": _meta(f"{k8s_name(launch.job_id)}-files", opts, launch.job_id),
                     "data": data,
                     "binaryData": {CODE_TAR: base64.b64encode(code_tarball()).decode()}}
    return out, paths


def code_tarball() -> bytes:
    """The model package as `code/orchestrate_bloom/...` in a tar.gz that depends only on the
    files' paths, modes and contents (same code, same bytes, same manifest)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in code_tree().files:
            raw = f.source.read_bytes()
            info = tarfile.TarInfo(f"code/{f.rel}")
            info.size, info.mode, info.mtime = len(raw), f.mode, 0
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def rings_configmap(name: str, opts: K8sOptions) -> Manifest:
    """The platform's rank table slot: hccl.json "initializing" until every pod is placed."""
    meta = _meta(f"rings-config-{name}", opts, name)
    meta["labels"]["ring-controller.atlas"] = opts.ring_controller
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {"hccl.json": '{\n    "status": "initializing"\n}\n'}}


def _meta(name: str, opts: K8sOptions, job_id: str) -> Manifest:
    labels = {"app.kubernetes.io/managed-by": "orchestrate", "orchestrate/job": k8s_name(job_id)}
    return {"name": name, "namespace": opts.namespace, "labels": labels}


def _items(paths: dict[str, str], role: str) -> list[dict[str, str]]:
    """ConfigMap keys -> paths in the job folder: this role's launch is launch.sh."""
    return [{"key": f"launch-{role}.sh", "path": "launch.sh"},
            *({"key": k, "path": p} for k, p in paths.items())]


def pod_command(attempt: int = 1) -> list[str]:
    """The container's command: copy the ConfigMap into the job folder, then `launch.sh run`;
    from attempt 2 on `run resume` (the trainer continues from the claim's checkpoints), the
    pod's fresh job folder told the attempt before, so its logs' attempt marker is the job's."""
    resume = (f"echo {attempt - 1} >{JOB_DIR}/attempt; exec bash {JOB_DIR}/launch.sh run resume"
              if attempt > 1 else f"exec bash {JOB_DIR}/launch.sh run")
    script = (f"set -e; cd {CONFIG_DIR}; tar -xzf {CODE_TAR} -C {JOB_DIR}; cp -L launch.sh "
              f"job.yaml $(ls env.sh 2>/dev/null) {JOB_DIR}/; {resume}")
    return ["/bin/bash", "-c", script]


def pod_templates(job: Manifest) -> list[Manifest]:
    """The pod templates of a job object (AscendJob replicas, Volcano tasks)."""
    spec = job["spec"]
    if job["kind"] == "AscendJob":
        return [r["template"] for r in spec["replicaSpecs"].values()]
    return [t["template"] for t in spec["tasks"]]


def resumed(job: Manifest, attempt: int) -> Manifest:
    """A copy of the job object for `attempt` (>= 2): its containers run `launch.sh run
    resume`."""
    out = copy.deepcopy(job)
    for tpl in pod_templates(out):
        for c in tpl["spec"]["containers"]:
            c["command"] = pod_command(attempt)
    return out


def _container(name: str, opts: K8sOptions, npus: int,
               extra_mounts: list[Manifest]) -> Manifest:
    c: Manifest = {
        "name": "ascend",
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "command": pod_command(),
        "ports": [{"containerPort": OPERATOR_PORT, "name": "ascendjob-port"}],
        "volumeMounts": [
            {"name": "files", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "job", "mountPath": JOB_DIR},
            *({"name": "output", "mountPath": f"{JOB_DIR}/output/{d}", "subPath": f"{name}/{d}"}
              for d in OUTPUT_DIRS),
            *extra_mounts,
        ],
    }
    if npus:
        c["resources"] = {"requests": {NPU_RESOURCE: npus}, "limits": {NPU_RESOURCE: npus}}
        # The devices the device plugin gave the pod, for the Ascend Docker Runtime.
        c["env"] = [{"name": "ASCEND_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{NPU_RESOURCE}']"}}}]
    return c


def _pod(name: str, opts: K8sOptions, files: Files, role: str, npus: int, grace: int,
         extra_volumes: list[Manifest], extra_mounts: list[Manifest]) -> Manifest:
    container = _container(name, opts, npus, extra_mounts)
    return {
        "metadata": {"labels": {"ring-controller.atlas": opts.ring_controller,
                                "orchestrate/job": name, "orchestrate/role": role}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
            "volumes": [
                {"name": "files", "configMap": {"name": files[0]["metadata"]["name"],
                                                "items": _items(files[1], role)}},
                {"name": "job", "emptyDir": {}},
                {"name": "output", "persistentVolumeClaim": {"claimName": opts.volume}},
                *extra_volumes,
            ],
        },
    }


def _job_meta(name: str, opts: K8sOptions, framework: bool) -> Manifest:
    meta = _meta(name, opts, name)
    meta["labels"]["ring-controller.atlas"] = opts.ring_controller
    if framework:
        meta["labels"]["framework"] = "mindspore"
    return meta


def ascend_job(name: str, opts: K8sOptions, nodes: int, pods: PodShape, files: Files) -> Manifest:
    """The msrun-mode AscendJob: one Scheduler pod and `nodes` Worker pods, gang-scheduled."""
    def replica(role: str, replicas: int, n: int) -> Manifest:
        return {"replicas": replicas, "restartPolicy": "Never",
                "template": _pod(name, opts, files, role, n, pods.grace, [], [])}

    return {
        "apiVersion": "mindxdl.gitee.com/v1",
        "kind": "AscendJob",
        "metadata": _job_meta(name, opts, framework=True),
        "spec": {
            "schedulerName": "volcano",
            "runPolicy": {"schedulingPolicy": {"minAvailable": nodes + 1, "queue": opts.queue}},
            "successPolicy": "AllWorkers",
            "replicaSpecs": {"Scheduler": replica("scheduler", 1, 0),
                             "Worker": replica("worker", nodes, pods.npus)},
        },
    }


def volcano_job(name: str, opts: K8sOptions, nodes: int, pods: PodShape,
                files: Files) -> Manifest:
    """The rank-table-mode Volcano Job: `nodes` pods, the platform's hccl.json mounted."""
    table = [{"name": "ascend-config", "configMap": {"name": f"rings-config-{name}"}}]
    mount = [{"name": "ascend-config", "mountPath": K8S_TABLE_DIR}]
    return {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": _job_meta(name, opts, framework=False),
        "spec": {
            "minAvailable": nodes,
            "schedulerName": "volcano",
            "queue": opts.queue,
            "maxRetry": 0,
            "plugins": {"env": [], "svc": []},  # env: VC_TASK_INDEX in every pod
            "policies": [{"event": "PodEvicted", "action": "AbortJob"},
                         {"event": "PodFailed", "action": "AbortJob"}],
            "tasks": [{"name": "worker", "replicas": nodes,
                       "template": _pod(name, opts, files, "worker", pods.npus, pods.grace,
                                        table, mount)}],
        },
    }
