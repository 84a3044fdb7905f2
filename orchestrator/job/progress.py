"""Job progress: one poll of the nodes (`refresh`), and its views as JSON or a rich table.

    record, reports = refresh(record, group, store, stall_timeout=1800)   # one poll
    print(status_json(record, reports)); console.print(status_table(record, reports))

The loop that polls until the job ends is job/watch.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.job import failure as failures
from orchestrator.job.nodes import POLL_TIMEOUT, NodeReport, SlotReport, derive_status
from orchestrator.job.render import SCHED_SLOT
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.group import NodeGroup
from orchestrator.untrusted import scrub, to_int

Reports = Mapping[str, "NodeReport | BaseException"]


def refresh(record: JobRecord, group: NodeGroup, store: JobStore,
            stall_timeout: float | None = None,
            poll_timeout: float = POLL_TIMEOUT) -> tuple[JobRecord, Reports]:
    """Ask the nodes, derive the status, write it back when it changed.

    With `stall_timeout`, a running job whose ranks all stayed silent that long is STALLED
    (jobs/stall.py; one more round trip per node), and RUNNING again once a rank logs;
    without, a STALLED record stays STALLED while its ranks run.
    A job whose every rank exited 0 is SUCCEEDED and `cleaned` (nothing of it is left).
    """
    from orchestrator.backends import backend_for

    backend = backend_for(record)
    poll = backend.poll(record, group, poll_timeout)
    reports = poll.reports
    status = derive_status(record, reports)
    message = record.message
    failure = record.failure
    if status is not record.status:
        failure = failures.first_failure(reports) if status is JobStatus.FAILED else None
        message = failure.describe() if failure else ""
    if poll.verdict is not None:  # the scheduler knows more (pending reason, time limit)
        status, message = poll.verdict
        if status is not JobStatus.FAILED:
            failure = None
    everyone = all(isinstance(r, NodeReport) for r in reports.values())
    if stall_timeout is not None and status is JobStatus.RUNNING and everyone \
            and backend.node_files:  # the stall probe reads the ranks' logs on the nodes
        from orchestrator.job.stall import find_stall, last_output

        cause = find_stall(record, reports, last_output(record, group), stall_timeout)
        if cause:
            failure = failures.stalled(cause)
            status, message = JobStatus.STALLED, cause
        elif record.status is JobStatus.STALLED:
            message, failure = "", None
    elif stall_timeout is None and status is JobStatus.RUNNING \
            and record.status is JobStatus.STALLED:
        status = JobStatus.STALLED  # not judged here (the guard): keep what a watcher found
    if status is not record.status or message != record.message:
        record = record.with_status(status, message).replace(failure=failure)
        if status is JobStatus.SUCCEEDED:
            record = record.replace(cleaned=True)
        store.save(record)
    return record, reports


def _slot_json(s: SlotReport) -> dict[str, Any]:
    return {"rank": to_int(s.slot) if to_int(s.slot) is not None else s.slot, "state": s.state,
            "exit_code": s.exit_code, "pid": s.pid,
            "step": int(s.metrics["step"]) if "step" in s.metrics else None,
            "loss": s.metrics.get("loss"), "lr": s.metrics.get("lr"),
            "tokens_per_s": s.metrics.get("tokens_per_s")}


def status_json(record: JobRecord, reports: Reports) -> dict[str, Any]:
    nodes = []
    for n in record.nodes:
        r = reports.get(n.name)
        entry: dict[str, Any] = {"name": n.name, "host": n.host, "rank_start": n.rank_start,
                                 "rank_end": n.rank_end, "job_dir": n.job_dir}
        if isinstance(r, NodeReport):
            entry.update(reachable=True, staged=r.staged, supervisor=r.supervisor,
                         ranks=[_slot_json(s) for s in r.slots if s.slot != SCHED_SLOT])
            sched = [_slot_json(s) for s in r.slots if s.slot == SCHED_SLOT]
            if sched:
                entry["scheduler"] = sched[0]
        else:
            entry.update(reachable=False, error=str(r) if r is not None else "not asked",
                         ranks=[])
        nodes.append(entry)
    return {"job_id": record.job_id, "status": record.status.value, "attempts": record.attempts,
            "mode": record.mode, "world_size": record.world_size, "preset": record.preset,
            "overrides": list(record.overrides), "message": record.message,
            "failure": record.failure.to_json() if record.failure else None,
            "created_at": record.created_at, "updated_at": record.updated_at,
            "backend": record.backend, "scheduler_job": record.scheduler_job, "nodes": nodes}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def status_table(record: JobRecord, reports: Reports) -> Any:
    """A rich Table: one row per node (ranks alive/total, step, loss, tokens/s, exits)."""
    from rich.table import Table
    from rich.text import Text

    where = f", {record.backend} job {record.scheduler_job}" if record.scheduler_job else ""
    title = (f"job {record.job_id}  {record.status.value}  "
             f"({record.mode}, {record.world_size} ranks{where})")
    if record.message:
        title += f"\n{record.message}"
    # node strings (messages, errors, slot names) are text, never rich markup
    table = Table(title=Text(scrub(title)), title_justify="left")
    for col in ("node", "ranks", "alive", "step", "loss", "tokens/s", "exited"):
        table.add_column(col, justify="right" if col not in ("node", "exited") else "left")
    for n in record.nodes:
        r = reports.get(n.name)
        ranks = f"{n.rank_start}-{n.rank_end - 1}"
        if not isinstance(r, NodeReport):
            table.add_row(n.name, ranks, "?", "-", "-", "-",
                          Text(scrub(f"unreachable: {str(r)[:60]}")))
            continue
        workers = [s for s in r.slots if s.slot != "sched"]
        alive = sum(s.state == "running" for s in workers)
        steps = [s.metrics["step"] for s in workers if "step" in s.metrics]
        losses = [s.metrics["loss"] for s in workers if "loss" in s.metrics]
        tps = [s.metrics["tokens_per_s"] for s in workers if "tokens_per_s" in s.metrics]
        exited = ", ".join(f"{s.slot}:{s.exit_code if s.state == 'exited' else 'lost'}"
                           for s in r.slots if s.state in ("exited", "lost"))
        table.add_row(n.name, ranks, f"{alive}/{len(workers)}",
                      _fmt(max(steps) if steps else None, ".0f"),
                      _fmt(sum(losses) / len(losses) if losses else None, ".4f"),
                      _fmt(sum(tps) if tps else None, ".1f"),
                      Text(scrub(exited)) if exited else ("-" if r.staged else "not staged"))
    return table
