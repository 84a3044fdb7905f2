"""`orchestrate up --wait [--max-restarts N] [--stall-timeout S]`: watch, and on a failure
tear down, re-check, and relaunch with --resume from the newest checkpoint complete on every rank.

    policy = RestartPolicy(max_restarts=2, stall_timeout=1800)
    record = supervise(record, inv, store, policy, recheck=lambda: None, conns=conns)

One attempt = launch .. every rank ended (or a failure / stall). When an attempt fails:

1. the job is stopped on every node (`launch.sh stop`) and recorded FAILED with the cause;
2. one entry is appended to `record.history` (attempt, start, end, status, cause, exit code,
   resumed step);
3. unless N restarts are used up, or the exit code is not one of `restart_on`, the nodes are
   re-checked (`recheck()`: a failure text stops here) and a new attempt starts on the same
   nodes (lifecycle.resume_job: `launch.sh start resume`); ranks see ORCHESTRATE_RESUME=1 and
   the bundled trainer runs with `--resume`, which picks the newest step complete (manifest +
   size + sha256) on every rank. Each rank's stdout.log keeps every attempt, each opened by
   an `== orchestrate attempt N ==` line.

With `exclude_after` K, a node on which K attempts in a row failed is left out of the next
attempt (data-parallel jobs, jobs/exclude.py: DP recomputed, global batch kept); when the job
cannot run without it, it stops with that reason.

Giving up leaves the job FAILED with "gave up after K attempt(s): <last cause>".
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.config.inventory import Inventory
from orchestrator.errors import JobError
from orchestrator.job.nodes import (
    POLL_TIMEOUT,
    Connections,
    NodeReport,
    fan_out,
    query_job,
)
from orchestrator.job.progress import refresh, status_table
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.transport import Transport

Echo = Callable[[str], None]
_LOST = re.compile(r"^node (\S+) unreachable")
_RESUMED = re.compile(r"resumed from step (\d+)|no checkpoint complete on every rank")


@dataclass(frozen=True)
class RestartPolicy:
    """When `supervise` relaunches a failed job."""

    max_restarts: int = 0
    restart_on: frozenset[int] | None = None  # exit codes worth a restart; None: any failure
    stall_timeout: float | None = None  # seconds without output -> STALLED (None: never)
    node_lost_timeout: float = 60.0  # a node unreachable this long fails the attempt
    interval: float = 2.0  # seconds between polls
    exclude_after: int = 0  # a node on which this many attempts in a row failed is left out

    @property
    def poll_timeout(self) -> float:
        """Seconds a node may take to answer one poll: a partitioned node (SSH connection
        open, nothing comes back) is noticed within about the node-lost timeout, never less
        than 10 s (a loaded node answers slowly), never more than the usual 60 s."""
        return min(POLL_TIMEOUT, max(10.0, self.node_lost_timeout))


def failure_code(reports: Mapping[str, NodeReport | BaseException]) -> int | None:
    """Exit code of the job's first failure (supervisor record first), None if unknown."""
    firsts = sorted(r.first_failure for r in reports.values()
                    if isinstance(r, NodeReport) and r.first_failure is not None)
    if firsts:
        return min(firsts, key=lambda f: f[2])[1]
    for r in reports.values():
        if isinstance(r, NodeReport):
            for s in r.slots:
                if s.failed and s.exit_code is not None:
                    return s.exit_code
    return None


def failure_node(reports: Mapping[str, NodeReport | BaseException], cause: str) -> str | None:
    """The node an attempt failed on: the one lost, else the one whose supervisor recorded
    the earliest failure, else one with a failed slot (None: a stall, or unknown)."""
    if m := _LOST.match(cause):
        return m.group(1)
    firsts = sorted((r.first_failure[2], name) for name, r in reports.items()
                    if isinstance(r, NodeReport) and r.first_failure is not None)
    if firsts:
        return firsts[0][1]
    for name, r in reports.items():
        if isinstance(r, NodeReport) and any(s.failed for s in r.slots):
            return name
    return None


def node_to_exclude(history: Sequence[Mapping[str, Any]], after: int) -> str | None:
    """The node on which each of the last `after` attempts failed (None: none, or off)."""
    if after < 1 or len(history) < after:
        return None
    last = history[-after:]
    node = last[0].get("node")
    if node and all(h.get("node") == node and h.get("status") == "FAILED" for h in last):
        return str(node)
    return None


def resumed_step(record: JobRecord, inv: Inventory, forks: int = 64,
                 conns: Connections | None = None) -> int | None:
    """The step the current attempt resumed from, read from the ranks' logs (0: from scratch,
    None: not a resumed attempt or nothing logged yet)."""
    if record.attempts < 2:
        return None
    first = record.nodes[0]

    def one(t: Transport) -> str:
        log = shlex.quote(f"{first.job_dir}/ranks/{first.rank_start}/stdout.log")
        res = t.run("grep -a -E 'resumed from step [0-9]+|no checkpoint complete on every "
                    f"rank|^== orchestrate attempt ' {log} "
                    "2>/dev/null; true", check=False, timeout=60)
        return res.stdout

    for out in fan_out(inv, [inv.node(first.name)], one, forks, conns).values():
        if not isinstance(out, str):
            continue
        current = out.split("== orchestrate attempt ")[-1]  # this attempt's lines only
        if m := _RESUMED.search(current):
            return int(m.group(1)) if m.group(1) else 0
    return None


def _watch_attempt(record: JobRecord, inv: Inventory, store: JobStore, policy: RestartPolicy,
                   forks: int, conns: Connections | None, live: Any,
                   ) -> tuple[JobRecord, Mapping[str, NodeReport | BaseException]]:
    """Poll until the attempt ends or stalls; the record is terminal or STALLED on return.

    A node that stays unreachable for `policy.node_lost_timeout` s fails the attempt (its
    ranks may be dead or cut off; either way the job cannot finish).
    """
    unreachable_since: dict[str, float] = {}
    while True:
        asked = time.time()
        record, reports = refresh(record, inv, store, forks, conns, policy.stall_timeout,
                                  policy.poll_timeout)
        now = time.time()
        for name, rep in reports.items():
            if not isinstance(rep, BaseException):
                unreachable_since.pop(name, None)
                continue
            since = unreachable_since.setdefault(name, asked)  # last seen before
            if now - since >= policy.node_lost_timeout and not record.status.is_terminal():
                text = str(rep).removeprefix(f"[{name}] ")
                record = record.with_status(
                    JobStatus.FAILED, f"node {name} unreachable for {now - since:.0f} s "
                                      f"(--node-lost-timeout {policy.node_lost_timeout:g}): "
                                      f"{text}")
                store.save(record)
                break
        live.update(status_table(record, reports))
        if record.status.is_terminal() or record.status is JobStatus.STALLED:
            return record, reports
        time.sleep(policy.interval)


def _entry(record: JobRecord, started: float, cause: str, code: int | None,
           resumed: int | None, node: str | None = None) -> dict[str, Any]:
    return {"attempt": record.attempts, "started_at": started, "ended_at": time.time(),
            "status": record.status.value, "cause": cause, "exit_code": code,
            "resumed_step": resumed, "node": node}


def _relaunch_without(record: JobRecord, inv: Inventory, store: JobStore, node: str,
                      policy: RestartPolicy, forks: int, conns: Connections | None,
                      echo: Echo) -> JobRecord:
    """The next attempt without `node` (jobs/exclude.py); JobError when the layout won't fit."""
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.exclude import plan_exclusion, relaunch_without

    try:
        excl = plan_exclusion(record, load_job_spec(record.preset, record.overrides), [node])
    except JobError as e:
        raise JobError(f"{node} failed {policy.exclude_after} attempt(s) in a row and the job "
                       f"cannot run without it: {e}") from e
    echo(f"{node} failed {policy.exclude_after} attempt(s) in a row: leaving it out")
    return relaunch_without(record, inv, store, excl, forks, conns, echo)


def supervise(record: JobRecord, inv: Inventory, store: JobStore, policy: RestartPolicy,
              recheck: Callable[[], str | None] = lambda: None, forks: int = 64,
              conns: Connections | None = None, echo: Echo = print,
              console: Any = None) -> JobRecord:
    """Watch the running job until it ends, restarting it per `policy`; the final record.

    KeyboardInterrupt propagates while watching (the job keeps running: detach).
    """
    from rich.console import Console
    from rich.live import Live

    from orchestrator.job.lifecycle import resume_job
    from orchestrator.job.teardown import teardown_failed

    console = console or Console()
    started = time.time()
    while True:
        with Live(status_table(record, {}), console=console, refresh_per_second=4,
                  transient=False) as live:
            record, reports = _watch_attempt(record, inv, store, policy, forks, conns, live)
            answered = {n for n, r in reports.items() if isinstance(r, NodeReport)}
            resumed = resumed_step(record, inv, forks, conns) \
                if record.nodes[0].name in answered else None
            code = failure_code(reports)
            cause = record.message
            blamed = failure_node(reports, cause) if record.status is JobStatus.FAILED else None
            if record.status in (JobStatus.FAILED, JobStatus.STALLED):
                cause = record.message or "a rank failed"
                # A node that did not answer is left for later: a stop would only hang there.
                reachable = [n for n, r in reports.items() if isinstance(r, NodeReport)]
                record = teardown_failed(record, inv, store, cause, forks, conns,
                                         only=reachable)
                # Show the stop; a node that did not answer is not asked again (it would
                # only cost another timeout).
                asked = record.replace(nodes=tuple(n for n in record.nodes if n.name in answered))
                reports = {**reports, **query_job(asked, inv, forks, conns, policy.poll_timeout)}
                live.update(status_table(record, reports))
        if not console.is_terminal:
            console.line()
        record = record.replace(history=(*record.history,
                                         _entry(record, started, cause, code, resumed,
                                                blamed)))
        store.save(record)
        if record.status is not JobStatus.FAILED:
            return record
        restarts_used = record.attempts - 1
        if restarts_used >= policy.max_restarts:
            if policy.max_restarts > 0:
                record = record.with_status(
                    JobStatus.FAILED, f"gave up after {record.attempts} attempt(s): {cause}")
                store.save(record)
            return record
        if policy.restart_on is not None and code not in policy.restart_on:
            record = record.with_status(
                JobStatus.FAILED, f"{cause} (exit code {code} not in --restart-on-exit-codes; "
                                  "not restarted)")
            store.save(record)
            return record
        echo(f"attempt {record.attempts} failed: {cause}; restarting "
             f"({restarts_used + 1} of {policy.max_restarts}) from the newest complete "
             "checkpoint")
        bad = node_to_exclude(record.history, policy.exclude_after)
        problem = recheck()
        if problem and bad is not None:  # the node being left out need not pass the check
            problem = "; ".join(p for p in problem.split("; ") if not p.startswith(f"[{bad}]"))
        if problem:
            record = record.with_status(JobStatus.FAILED,
                                        f"not restarted: check failed ({problem}); last cause: "
                                        f"{cause}")
            store.save(record)
            return record
        if not record.cleaned and bad is None:  # a node unreachable at teardown: stop there
            record = teardown_failed(record, inv, store, cause, forks, conns,
                                     timeout=max(30.0, policy.poll_timeout))
        started = time.time()
        try:
            if bad is not None and any(n.name == bad for n in record.nodes):
                record = _relaunch_without(record, inv, store, bad, policy, forks, conns, echo)
            else:
                record = resume_job(record, inv, store, forks, conns, policy.poll_timeout)
        except JobError as e:
            record = store.load(record.job_id)
            why = f"not restarted: {e}; last cause: {cause}"
            record = record.with_status(JobStatus.FAILED, why)
            record = record.replace(history=(*record.history,
                                             _entry(record, started, str(e), None, None)))
            store.save(record)
            return record
