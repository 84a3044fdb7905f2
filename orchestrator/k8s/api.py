"""The thin live path: apply a job's manifests, read its status and logs, delete it, through
the official `kubernetes` client (`pip install 'orchestrate[k8s]'`).

    ref = apply(manifests, kubeconfig=None, job_dir=store.job_dir(job_id))  # writes k8s.json
    ref = load_ref(job_dir); job_state(ref); pod_logs(ref, tail=50); delete(ref)

NOT TESTED against a live API server (none runs where orchestrate is developed): the calls
are the client's documented ones (CoreV1Api, CustomObjectsApi), kept few and direct. What is
tested is everything before them: the manifests and their validation (schema.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrate_bloom.fileio import write_atomic

from orchestrator.errors import JobError
from orchestrator.k8s.schema import crd_plural, validate

REF_FILE = "k8s.json"


@dataclass(frozen=True)
class K8sRef:
    """Where an applied job lives: enough for status, logs and down."""

    job_id: str
    namespace: str
    api_version: str  # of the job object, e.g. mindxdl.gitee.com/v1
    kind: str  # AscendJob | Job
    name: str
    kubeconfig: str | None  # None: $KUBECONFIG / ~/.kube/config


def _client(kubeconfig: str | None) -> Any:
    try:
        import kubernetes  # the optional extra
    except ImportError:
        raise JobError("--backend k8s without --emit needs the kubernetes client: "
                       "pip install 'orchestrate[k8s]' (or use --emit DIR and kubectl)") from None
    try:
        kubernetes.config.load_kube_config(config_file=kubeconfig)
    except Exception as e:  # noqa: BLE001 - the client raises several unrelated types
        raise JobError(f"kubeconfig {kubeconfig or '(default)'}: {e}") from None
    return kubernetes.client


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs); any failure (API status, connection, TLS) as one JobError line."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - ApiException, urllib3 and ssl errors alike
        reason = getattr(e, "reason", None) or (str(e).splitlines() or [type(e).__name__])[0]
        status = getattr(e, "status", None)
        raise JobError(f"{what}: {f'{status} ' if status else ''}{reason}") from None


def _raise(e: Exception) -> None:
    raise e


def apply(manifests: Sequence[dict[str, Any]], kubeconfig: Path | None, job_dir: Path) -> K8sRef:
    """Validate, then create every object in order; the job's K8sRef (saved in job_dir)."""
    for m in manifests:
        validate(m)
    job = manifests[-1]
    meta = job["metadata"]
    ref = K8sRef(job_id=meta["labels"]["orchestrate/job"], namespace=meta["namespace"],
                 api_version=job["apiVersion"], kind=job["kind"], name=meta["name"],
                 kubeconfig=str(kubeconfig) if kubeconfig else None)
    client = _client(ref.kubeconfig)
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    for m in manifests:
        ns, what = m["metadata"]["namespace"], f"creating {m['kind']} {m['metadata']['name']}"
        if m["kind"] == "ConfigMap":
            _call(what, core.create_namespaced_config_map, ns, m)
        else:
            group, version = m["apiVersion"].split("/")
            _call(what, custom.create_namespaced_custom_object, group, version, ns,
                  crd_plural(m["apiVersion"], m["kind"]), m)
    write_atomic(job_dir / REF_FILE, json.dumps(asdict(ref), indent=2) + "\n", 0o644)
    return ref


def load_ref(job_dir: Path) -> K8sRef | None:
    """The K8sRef of a job applied by `up --backend k8s`, None for any other job."""
    path = job_dir / REF_FILE
    if not path.is_file():
        return None
    return K8sRef(**json.loads(path.read_text()))


def job_state(ref: K8sRef) -> dict[str, Any]:
    """The job object's status as the operator / Volcano reports it (conditions, phase)."""
    client = _client(ref.kubeconfig)
    group, version = ref.api_version.split("/")
    obj = _call(f"{ref.kind} {ref.name}", client.CustomObjectsApi().get_namespaced_custom_object,
                group, version, ref.namespace, crd_plural(ref.api_version, ref.kind), ref.name)
    return dict(obj.get("status") or {})


def pod_logs(ref: K8sRef, tail: int) -> Iterator[tuple[str, str]]:
    """(pod name, its container `ascend`'s last `tail` lines) for every pod of the job."""
    client = _client(ref.kubeconfig)
    core = client.CoreV1Api()
    what = f"logs of {ref.kind} {ref.name}"
    pods = _call(what, core.list_namespaced_pod, ref.namespace,
                 label_selector=f"orchestrate/job={ref.name}")
    for pod in pods.items:
        yield pod.metadata.name, _call(what, core.read_namespaced_pod_log, pod.metadata.name,
                                       ref.namespace, container="ascend", tail_lines=tail)


def delete(ref: K8sRef) -> None:
    """Delete the job object (its pods go with it) and the job's ConfigMaps."""
    client = _client(ref.kubeconfig)
    group, version = ref.api_version.split("/")
    try:
        client.CustomObjectsApi().delete_namespaced_custom_object(
            group, version, ref.namespace, crd_plural(ref.api_version, ref.kind), ref.name)
    except Exception as e:  # noqa: BLE001 - as _call, but a 404 (already gone) is fine
        if getattr(e, "status", None) != 404:
            _call(f"deleting {ref.kind} {ref.name}", _raise, e)
    _call(f"deleting the ConfigMaps of {ref.name}",
          client.CoreV1Api().delete_collection_namespaced_config_map, ref.namespace,
          label_selector=f"orchestrate/job={ref.name}")


def pod_phases(ref: K8sRef) -> dict[str, str]:
    """pod name -> phase (Pending, Running, Succeeded, Failed) for every pod of the job."""
    client = _client(ref.kubeconfig)
    pods = _call(f"pods of {ref.kind} {ref.name}", client.CoreV1Api().list_namespaced_pod,
                 ref.namespace, label_selector=f"orchestrate/job={ref.name}")
    return {p.metadata.name: p.status.phase for p in pods.items}
