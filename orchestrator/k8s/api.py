"""The thin live path: apply a job's manifests, read its status and logs, delete it, through
the official `kubernetes` client (`pip install 'orchestrate[k8s]'`).

    ref = K8sRef(job_id, namespace, api_version, kind, name, kubeconfig, volume)
    create(ref, manifests)                                # ConfigMaps (kept if there), job object
    status = job_status(ref); pods = list_pods(ref)       # backends/k8s.py poll
    logs = log_tails(ref, pods)                           # pod -> its log's end (step lines)
    delete(ref); left = wait_pods_gone(ref, timeout=60)   # backends/k8s.py stop
    for pod, text in pod_logs(ref, tail=50): ...          # `orchestrate logs`

NOT TESTED against a live API server (none runs where orchestrate is developed): the calls
are the client's documented ones (CoreV1Api, CustomObjectsApi), kept few and direct. What is
tested is everything before and after them: the manifests and their validation
(schema.py), what pods and job objects mean (status.py), and every call failing in one line
against a kubeconfig whose server does not answer (tests/unit/test_k8s_backend.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import JobError
from orchestrator.k8s.schema import crd_plural, validate

REQUEST_TIMEOUT = 60.0  # seconds one API request may take
LOG_TAIL_LINES = 200  # of a pod's log, read by each poll for the ranks' last step line
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class K8sRef:
    """Where an applied job lives: enough for status, logs and down (kept in the job record's
    `scheduler_ref`, backends/k8s.py ref_of)."""

    job_id: str
    namespace: str
    api_version: str  # of the job object, e.g. mindxdl.gitee.com/v1
    kind: str  # AscendJob | Job
    name: str
    kubeconfig: str | None  # None: $KUBECONFIG / ~/.kube/config
    volume: str | None = None  # the PersistentVolumeClaim holding output/ (checkpoints)


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
    # One try per request: a server that does not answer is one error line now (the watch
    # loop polls again), not urllib3's retries with a warning each on stderr.
    config = kubernetes.client.Configuration.get_default_copy()
    config.retries = False
    kubernetes.client.Configuration.set_default(config)
    return kubernetes.client


def _call(what: str, fn: Any, *args: Any, ok: frozenset[int] | set[int] = frozenset(),
          **kwargs: Any) -> Any:
    """fn(*args, **kwargs); any failure (API status, connection, TLS) as one JobError line,
    but None for an API status in `ok` (404: gone, 409: already there)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - ApiException, urllib3 and ssl errors alike
        if getattr(e, "status", None) in ok:
            return None
        reason = getattr(e, "reason", None) or (str(e).splitlines() or [type(e).__name__])[0]
        status = getattr(e, "status", None)
        raise JobError(f"{what}: {f'{status} ' if status else ''}{reason}") from None


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.partition("/")
    return group, version


def create(ref: K8sRef, manifests: Sequence[dict[str, Any]]) -> None:
    """Validate, then create every object in order (a ConfigMap already there is kept: the
    same job's files, e.g. of the attempt before)."""
    for m in manifests:
        validate(m)
    client = _client(ref.kubeconfig)
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    for m in manifests:
        ns, what = m["metadata"]["namespace"], f"creating {m['kind']} {m['metadata']['name']}"
        if m["kind"] == "ConfigMap":
            _call(what, core.create_namespaced_config_map, ns, m, ok={409})
        else:
            group, version = _group_version(m["apiVersion"])
            _call(what, custom.create_namespaced_custom_object, group, version, ns,
                  crd_plural(m["apiVersion"], m["kind"]), m)


def job_status(ref: K8sRef, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any] | None:
    """The job object's `status` as the operator / Volcano writes it ({}: none yet);
    None when the object does not exist."""
    client = _client(ref.kubeconfig)
    group, version = _group_version(ref.api_version)
    obj = _call(f"reading {ref.kind} {ref.name}",
                client.CustomObjectsApi().get_namespaced_custom_object, group, version,
                ref.namespace, crd_plural(ref.api_version, ref.kind), ref.name, ok={404},
                _request_timeout=timeout)
    if obj is None:
        return None
    status = obj.get("status") if isinstance(obj, dict) else None
    return dict(status) if isinstance(status, dict) else {}


def list_pods(ref: K8sRef, timeout: float = REQUEST_TIMEOUT) -> list[Any]:
    """The job's pods (the client's V1Pod objects), by the label every pod of ours has."""
    client = _client(ref.kubeconfig)
    pods = _call(f"listing the pods of {ref.kind} {ref.name}",
                 client.CoreV1Api().list_namespaced_pod, ref.namespace,
                 label_selector=f"orchestrate/job={ref.name}", _request_timeout=timeout)
    return list(pods.items)


def wait_pods_gone(ref: K8sRef, timeout: float) -> list[str]:
    """Wait up to `timeout` s until no pod of the job is left; the names still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p.metadata.name for p in list_pods(ref)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(1.0)


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


def log_tails(ref: K8sRef, pods: Sequence[Any], timeout: float = REQUEST_TIMEOUT
              ) -> dict[str, str]:
    """pod name -> the end of its `ascend` container's log (at most LOG_TAIL_LINES lines and
    LOG_TAIL_BYTES bytes), for the pods that started; a log that cannot be read is left out
    (its ranks show no step)."""
    client = _client(ref.kubeconfig)
    core = client.CoreV1Api()
    out: dict[str, str] = {}
    for pod in pods:
        if pod.status is None or pod.status.phase not in ("Running", "Succeeded", "Failed"):
            continue
        try:
            text = _call(f"log of pod {pod.metadata.name}", core.read_namespaced_pod_log,
                         pod.metadata.name, ref.namespace, container="ascend",
                         tail_lines=LOG_TAIL_LINES, limit_bytes=LOG_TAIL_BYTES,
                         _request_timeout=timeout)
        except JobError:
            continue
        if isinstance(text, str):
            out[pod.metadata.name] = text
    return out


def delete(ref: K8sRef) -> None:
    """Delete the job object (its pods go with it: SIGTERM, the grace, SIGKILL) and the job's
    ConfigMaps; what is already gone is fine."""
    client = _client(ref.kubeconfig)
    group, version = _group_version(ref.api_version)
    _call(f"deleting {ref.kind} {ref.name}",
          client.CustomObjectsApi().delete_namespaced_custom_object, group, version,
          ref.namespace, crd_plural(ref.api_version, ref.kind), ref.name,
          propagation_policy="Background", ok={404})
    _call(f"deleting the ConfigMaps of {ref.name}",
          client.CoreV1Api().delete_collection_namespaced_config_map, ref.namespace,
          label_selector=f"orchestrate/job={ref.name}")
