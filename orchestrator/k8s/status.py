"""What a Kubernetes job's pods and job object say, as the reports and verdict every backend
gives the watch loop (backends/base.py Poll). Pure: no API call here (api.py makes them).

    poll = poll_of(record, "AscendJob", "tiny-k3f9", job_status, pods)   # backends/base.Poll
    reports = pod_reports(record, pods)            # pods: the client's V1Pod objects

A pod is one inventory node (the record's nodes in rank order): worker pod i (its name ends
in `-<i>`, as the ascend-operator and Volcano name them: `<job>-worker-<i>`) runs the ranks
of node i; the msrun scheduler pod (`<job>-scheduler-0`) is node 0's `sched` slot, as over
SSH. Every rank of a pod takes its pod's state: Pending -> pending, Running -> running
(exiting once deleted), Succeeded -> exited 0, Failed -> exited with the container's exit
code (`launch.sh run`: the first failed rank's code ends every slot), Unknown -> the node is
unreachable (its kubelet does not answer). A node without a pod (not created yet, or gone)
is all pending. Each rank's step and loss come from the last `[slot] step=...` line at the end
of its pod's log (read bounded by api.log_tails).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.backends.base import Poll
from orchestrator.errors import JobError
from orchestrator.job.nodes import NodeReport, SlotReport, derive_status, parse_metrics
from orchestrator.job.render import SCHED_SLOT
from orchestrator.job.state import JobRecord, JobStatus
from orchestrator.remote.group import GroupResult
from orchestrator.untrusted import lines, scrub, shown

_INDEX = re.compile(r"-(scheduler|worker)-([0-9]{1,6})\Z")
_PREFIXED = re.compile(r"\[([0-9]{1,6}|sched)\] (.*)\Z")
CONTAINER = "ascend"  # the container every pod of ours runs (manifests._container)
_ASCEND_FAILED = {"Failed"}  # AscendJob condition types (kubeflow's JobConditionType)
_VOLCANO_FAILED = {"Failed", "Aborted", "Aborting", "Terminated", "Terminating"}
_VOLCANO_PENDING = {"Pending"}


def pod_index(name: str) -> tuple[str, int] | None:
    """(role, index) from a pod's name (`<job>-worker-3` -> ("worker", 3)); None: not ours."""
    m = _INDEX.search(name)
    return (m.group(1), int(m.group(2))) if m else None


def _container_exit(pod: Any) -> tuple[int | None, float | None]:
    """The `ascend` container's exit code and finish time, once it terminated."""
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        term = cs.state.terminated if cs.name == CONTAINER and cs.state else None
        if term is not None:
            at = term.finished_at.timestamp() if term.finished_at else None
            return int(term.exit_code), at
    return None, None


def _slot_state(pod: Any) -> tuple[str, int | None]:
    """(state, exit code) every slot of the pod is in (SlotReport.state vocabulary)."""
    phase = pod.status.phase if pod.status else None
    code, _ = _container_exit(pod)
    if code is not None:
        return "exited", code
    if phase == "Succeeded":
        return "exited", 0
    if phase == "Failed":
        return "lost", None  # failed without a terminated container (evicted, OOM-killed pod)
    if phase == "Running":
        return ("exiting" if pod.metadata.deletion_timestamp else "running"), None
    return "pending", None


Failed = tuple[str, int, float]  # (slot, exit code, unix time): NodeReport.first_failure


def slot_metrics(log: str) -> dict[str, dict[str, float]]:
    """pod-local slot -> the metrics of its last trainer line in a pod's log (`launch.sh run`
    prefixes each rank's line with `[slot]`: `[1] step=120 loss=2.3141 ...`)."""
    out: dict[str, dict[str, float]] = {}
    for line in lines(log):
        m = _PREFIXED.match(line)
        if m and "step=" in m.group(2):
            metrics = parse_metrics(m.group(2))
            if "step" in metrics:
                out[m.group(1)] = metrics
    return out


def _slots(pod: Any, names: Sequence[str], log: str) -> tuple[list[SlotReport], Failed | None]:
    """The slots `names` in the pod's state (all pending without a pod), each with its last
    step line's metrics from the pod's log; the pod's failure."""
    state, code = _slot_state(pod) if pod is not None else ("pending", None)
    local = [SCHED_SLOT] if list(names) == [SCHED_SLOT] else [str(i) for i in range(len(names))]
    metrics = slot_metrics(log)
    slots = [SlotReport(slot=s, state=state, exit_code=code, pid=None,
                        metrics=metrics.get(local[i], {})) for i, s in enumerate(names)]
    _, at = _container_exit(pod) if pod is not None else (None, None)
    failure = (names[0], code, at) if code not in (None, 0) and at is not None else None
    return slots, failure


def pod_reports(record: JobRecord, pods: Sequence[Any], logs: Mapping[str, str] | None = None
                ) -> GroupResult[NodeReport]:
    """node name -> NodeReport (or JobError when its pod's node does not answer); `logs`:
    pod name -> the end of its log (api.log_tails), for each rank's step and loss."""
    workers: dict[int, Any] = {}
    sched: Any = None
    for pod in pods:
        where = pod_index(pod.metadata.name)
        if where is not None and where[0] == "scheduler":
            sched = pod
        elif where is not None:
            workers[where[1]] = pod
    out: dict[str, NodeReport | BaseException] = {}
    for i, node in enumerate(record.nodes):
        has_sched = i == 0 and record.mode == "msrun"
        mine = [(workers.get(i), [str(r) for r in node.ranks])]
        mine += [(sched, [SCHED_SLOT])] if has_sched else []
        unknown = [p.metadata.name for p, _ in mine
                   if p is not None and p.status and p.status.phase == "Unknown"]
        if unknown:
            out[node.name] = JobError(f"pod {scrub(unknown[0])}: phase Unknown (its node "
                                      "does not answer)")
            continue
        slots: list[SlotReport] = []
        first: Failed | None = None
        for pod, names in mine:
            log = (logs or {}).get(pod.metadata.name, "") if pod is not None else ""
            more, failure = _slots(pod, names, log)
            slots += more
            first = first or failure
        alive = any(s.state in ("running", "exiting") for s in slots)
        ended = any(s.state in ("exited", "lost") for s in slots)
        out[node.name] = NodeReport(
            node=node.name, staged=True, first_failure=first, slots=tuple(slots),
            supervisor="running" if alive else "exited" if ended else "none")
    return GroupResult(out)


def _unschedulable(pods: Sequence[Any]) -> str | None:
    """The scheduler's reason a pod is not placed (`Unschedulable: 0/4 nodes ...`)."""
    for pod in pods:
        for cond in (pod.status.conditions or []) if pod.status else []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return shown(f"{cond.reason or 'not scheduled'}: {cond.message or ''}"
                             .strip(": "))
    return None


def job_phase(kind: str, status: Mapping[str, Any] | None) -> str | None:
    """The job object's own state: AscendJob's newest true condition type, Volcano's
    state.phase; None when the object has no status yet (or is gone)."""
    if not status:
        return None
    if kind == "AscendJob":
        true = [c for c in status.get("conditions") or []
                if isinstance(c, Mapping) and str(c.get("status")) == "True"]
        return scrub(str(true[-1].get("type")))[:40] if true else None
    phase = (status.get("state") or {}).get("phase") if isinstance(status.get("state"),
                                                                   Mapping) else None
    return scrub(str(phase))[:40] if phase else None


def _reason(kind: str, status: Mapping[str, Any]) -> str:
    if kind == "AscendJob":
        conds = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
        last = conds[-1] if conds else {}
        text = f"{last.get('reason') or ''}: {last.get('message') or ''}".strip(": ")
    else:
        state = status.get("state") or {}
        text = f"{state.get('reason') or ''}: {state.get('message') or ''}".strip(": ")
    return shown(text)


def job_verdict(record: JobRecord, kind: str, name: str, status: Mapping[str, Any] | None,
                pods: Sequence[Any], reports: GroupResult[NodeReport]
                ) -> tuple[JobStatus, str] | None:
    """What the job object adds to the ranks' own status (None: the ranks decide).

    Args:
        status: the job object's `status` ({} before the controller wrote one; None: the
            object does not exist).
    """
    if record.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        return None
    ranks = derive_status(record, reports)
    what = f"{kind} {name}"
    if status is None:
        if ranks is JobStatus.SUCCEEDED:
            return None
        return JobStatus.FAILED, f"{what} is gone (deleted outside orchestrate?)"
    phase = job_phase(kind, status)
    if ranks in (JobStatus.FAILED, JobStatus.SUCCEEDED):
        return None  # a rank's own failure names more than the job object's
    failed = _ASCEND_FAILED if kind == "AscendJob" else _VOLCANO_FAILED
    if phase in failed:
        reason = _reason(kind, status)
        return JobStatus.FAILED, f"{what} {phase}" + (f": {reason}" if reason else "")
    started = any(s.state != "pending" for r in reports.values() if isinstance(r, NodeReport)
                  for s in r.slots)
    if phase in ("Succeeded", "Completed") and not started:
        return JobStatus.SUCCEEDED, f"{what} {phase} (its pods are gone)"
    if not started:
        why = _unschedulable(pods)
        if not pods:
            return JobStatus.PENDING, f"{what}: waiting for its pods"
        placed = sum(1 for p in pods if p.spec is not None and p.spec.node_name)
        return JobStatus.PENDING, (f"{what}: {placed} of {len(pods)} pod(s) placed"
                                   + (f" ({why})" if why else ""))
    return None


def poll_of(record: JobRecord, kind: str, name: str, status: Mapping[str, Any] | None,
            pods: Sequence[Any], logs: Mapping[str, str] | None = None) -> Poll:
    """The Poll of one look at the job object (`status`, None: gone), its pods and the ends
    of their logs."""
    reports = pod_reports(record, pods, logs)
    return Poll(reports=reports, verdict=job_verdict(record, kind, name, status, pods, reports),
                scheduler_state=job_phase(kind, status))
