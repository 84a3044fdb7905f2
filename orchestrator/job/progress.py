"""Job progress: status as JSON or a rich table, and the live watch loop of `up --wait`.

    record, reports = refresh(record, inv, store, stall_timeout=1800)   # one poll
    record = watch(record, inv, store)     # polls the nodes until the job ends
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from orchestrator.config.inventory import Inventory
from orchestrator.job.nodes import (
    POLL_TIMEOUT,
    Connections,
    NodeReport,
    SlotReport,
    derive_status,
    query_job,
)
from orchestrator.job.render import SCHED_SLOT
from orchestrator.job.state import JobRecord, JobStatus, JobStore

Reports = Mapping[str, "NodeReport | BaseException"]


def failure_reason(reports: Reports) -> str:
    """`rank 3 on node1 exited 137` for the first failed slot (or '' if none failed).

    The supervisors' own record of the first failure wins over slots they stopped since.
    """
    firsts = sorted((r.first_failure[2], name, r.first_failure[:2]) for name, r in reports.items()
                    if isinstance(r, NodeReport) and r.first_failure is not None)
    if firsts:
        _, name, (slot, code) = firsts[0]
        what = "scheduler" if slot == SCHED_SLOT else f"rank {slot}"
        return f"{what} on {name} exited {code}"
    for name, r in reports.items():
        if isinstance(r, NodeReport):
            for s in r.slots:
                if s.failed:
                    what = "scheduler" if s.slot == "sched" else f"rank {s.slot}"
                    how = f"exited {s.exit_code}" if s.state == "exited" else \
                        "vanished without an exit code"
                    return f"{what} on {name} {how}"
    return ""


def refresh(record: JobRecord, inv: Inventory, store: JobStore, forks: int = 64,
            conns: Connections | None = None, stall_timeout: float | None = None,
            poll_timeout: float = POLL_TIMEOUT) -> tuple[JobRecord, Reports]:
    """Ask the nodes, derive the status, write it back when it changed.

    With `stall_timeout`, a running job whose ranks all stayed silent that long is STALLED
    (jobs/stall.py; one more round trip per node), and RUNNING again once a rank logs;
    without, a STALLED record stays STALLED while its ranks run.
    A job whose every rank exited 0 is SUCCEEDED and `cleaned` (nothing of it is left).
    """
    reports = query_job(record, inv, forks, conns, poll_timeout)
    status = derive_status(record, reports)
    message = record.message
    if status is not record.status:
        message = failure_reason(reports) if status is JobStatus.FAILED else ""
    everyone = all(isinstance(r, NodeReport) for r in reports.values())
    if stall_timeout is not None and status is JobStatus.RUNNING and everyone:
        from orchestrator.job.stall import find_stall, last_output

        cause = find_stall(record, reports, last_output(record, inv, forks, conns),
                           stall_timeout)
        if cause:
            status, message = JobStatus.STALLED, cause
        elif record.status is JobStatus.STALLED:
            message = ""
    elif stall_timeout is None and status is JobStatus.RUNNING \
            and record.status is JobStatus.STALLED:
        status = JobStatus.STALLED  # not judged here (the guard): keep what a watcher found
    if status is not record.status or message != record.message:
        record = record.with_status(status, message)
        if status is JobStatus.SUCCEEDED:
            record = record.replace(cleaned=True)
        store.save(record)
    return record, reports


def _slot_json(s: SlotReport) -> dict[str, Any]:
    return {"rank": int(s.slot) if s.slot.isdigit() else s.slot, "state": s.state,
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
            "created_at": record.created_at, "updated_at": record.updated_at, "nodes": nodes}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def status_table(record: JobRecord, reports: Reports) -> Any:
    """A rich Table: one row per node (ranks alive/total, step, loss, tokens/s, exits)."""
    from rich.table import Table

    title = (f"job {record.job_id}  {record.status.value}  "
             f"({record.mode}, {record.world_size} ranks)")
    if record.message:
        title += f"\n{record.message}"
    table = Table(title=title, title_justify="left")
    for col in ("node", "ranks", "alive", "step", "loss", "tokens/s", "exited"):
        table.add_column(col, justify="right" if col not in ("node", "exited") else "left")
    for n in record.nodes:
        r = reports.get(n.name)
        ranks = f"{n.rank_start}-{n.rank_end - 1}"
        if not isinstance(r, NodeReport):
            table.add_row(n.name, ranks, "?", "-", "-", "-", f"unreachable: {str(r)[:60]}")
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
                      exited or ("-" if r.staged else "not staged"))
    return table


def watch(record: JobRecord, inv: Inventory, store: JobStore, interval: float = 2.0,
          forks: int = 64, console: Any = None, conns: Connections | None = None,
          stall_timeout: float | None = None) -> JobRecord:
    """Poll the nodes and show live progress until the job ends (`status --watch`,
    `resume --wait`).

    STALLED is shown when every rank stayed silent for `stall_timeout` s (the job may recover,
    so the watch goes on). When a rank fails, the job is stopped on every node at once
    (teardown.stop_failed_job). KeyboardInterrupt propagates (the caller prints how to
    re-attach).
    """
    from rich.console import Console
    from rich.live import Live

    from orchestrator.job.teardown import stop_failed_job

    console = console or Console()
    record, reports = refresh(record, inv, store, forks, conns, stall_timeout)
    with Live(status_table(record, reports), console=console, refresh_per_second=4,
              transient=False) as live:
        while not record.status.is_terminal():
            time.sleep(interval)
            record, reports = refresh(record, inv, store, forks, conns, stall_timeout)
            live.update(status_table(record, reports))
        if record.status is JobStatus.FAILED and not record.cleaned:
            record = stop_failed_job(record, inv, store, reports, forks, conns)
            _, reports = refresh(record, inv, store, forks, conns)
            live.update(status_table(record, reports))
    if not console.is_terminal:
        console.line()  # Live leaves the last frame without a newline when not on a terminal
    return record
