"""The one watch loop: `up --wait`, `resume --wait` and `status --watch`.

    policy = WatchPolicy(max_restarts=2, stall_timeout=1800)          # up/resume --wait
    record = watch(record, group, store, policy, recheck=check_again)
    record = watch(record, group, store, WatchPolicy(act=False))      # status --watch

Every `interval` s the nodes are asked (progress.refresh) and a live table is shown, until
the job ends. A watcher that does not `act` (status --watch) only looks: a lost node is shown
as unreachable, STALLED as stalled, and stopping a failed job is left to its guard or `down`.
An acting watcher ends an attempt when a rank fails, a node stays unreachable for
`node_lost_timeout` s or (with `stall_timeout`) every rank stays silent that long; then

1. the job is stopped on every node that answers (`launch.sh stop`) and recorded FAILED with
   its Failure (job/failure.py: node, rank, exit code, time, cause);
2. one entry is appended to `record.history` (attempt, start, end, status, cause, exit code,
   node, resumed step);
3. unless `max_restarts` restarts are used up (0, the default, is the policy "never"), or
   the exit code is not one of `restart_on`, the nodes are re-checked (`recheck()`: any
   problem stops here) and a new attempt starts on the same nodes (lifecycle.resume_job:
   `launch.sh start resume`); ranks see ORCHESTRATE_RESUME=1 and the bundled trainer runs
   with `--resume` (newest step complete on every rank). Each rank's stdout.log keeps every
   attempt, each opened by an `== orchestrate attempt N ==` line.

With `exclude_after` K, a node on which K attempts in a row failed is left out of the next
attempt (data-parallel jobs, job/exclude.py: DP recomputed, global batch kept); when the job
cannot run without it, it stops with that reason. Giving up leaves the job FAILED with
"gave up after K attempt(s): <last cause>". KeyboardInterrupt propagates (the job keeps
running: the caller says how to re-attach).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from orchestrate_bloom.ckpt import layout as ck

from orchestrator.errors import JobError
from orchestrator.job import failure as failures
from orchestrator.job.nodes import POLL_TIMEOUT, NodeReport
from orchestrator.job.progress import Reports, refresh, status_table
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.group import NodeGroup, cause
from orchestrator.remote.transport import Transport

Echo = Callable[[str], None]
Recheck = Callable[[], Mapping[str, str]]  # node -> what its check found wrong ({}: all ok)
Show = Callable[[JobRecord, Reports], None]  # called after every poll


@dataclass(frozen=True)
class WatchPolicy:
    """What the watch loop does besides showing progress."""

    act: bool = True  # False: only look (status --watch); no stop, no node-lost, no restart
    max_restarts: int = 0  # restarts after a failure; 0: never
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


def node_to_exclude(history: Sequence[Mapping[str, Any]], after: int) -> str | None:
    """The node on which each of the last `after` attempts failed (None: none, or off)."""
    if after < 1 or len(history) < after:
        return None
    last = history[-after:]
    node = last[0].get("node")
    if node and all(h.get("node") == node and h.get("status") == "FAILED" for h in last):
        return str(node)
    return None


def resumed_step(record: JobRecord, group: NodeGroup) -> int | None:
    """The step the current attempt resumed from, as its first rank recorded it
    (`ranks/<r>/resumed.json`, checkpoint.record_resumed; launch.sh clears it for each
    attempt): 0 from scratch, None: not a resumed attempt or nothing recorded (yet)."""
    from orchestrator.backends import backend_for

    if record.attempts < 2 or not backend_for(record).node_files:
        return None
    first = record.nodes[0]
    path = shlex.quote(f"{first.job_dir}/ranks/{first.rank_start}/resumed.json")

    def one(t: Transport) -> str:
        res = t.run(f"head -c {ck.RESUMED_MAX_BYTES} {path} 2>/dev/null; true", check=False,
                    timeout=60)
        return res.stdout

    for out in group.map(one, [first.name]).succeeded.values():
        return ck.parse_resumed(out)
    return None


def _poll_attempt(record: JobRecord, group: NodeGroup, store: JobStore, policy: WatchPolicy,
                  show: Show) -> tuple[JobRecord, Reports]:
    """Poll until the attempt ends (or, when acting, stalls); the record is terminal or
    STALLED on return. An acting watcher fails the attempt when a node stays unreachable
    for `policy.node_lost_timeout` s (its ranks may be dead or cut off: it cannot finish)."""
    unreachable_since: dict[str, float] = {}
    while True:
        asked = time.time()
        record, reports = refresh(record, group, store, policy.stall_timeout,
                                  policy.poll_timeout)
        now = time.time()
        for name, rep in reports.items():
            if not isinstance(rep, BaseException):
                unreachable_since.pop(name, None)
                continue
            since = unreachable_since.setdefault(name, asked)  # last seen before
            if policy.act and now - since >= policy.node_lost_timeout \
                    and not record.status.is_terminal():
                record = record.failed_with(failures.node_lost(
                    name, now - since, policy.node_lost_timeout, cause(rep)))
                store.save(record)
                break
        show(record, reports)
        if record.status.is_terminal() or (policy.act and record.status is JobStatus.STALLED):
            return record, reports
        time.sleep(policy.interval)


def _end_attempt(record: JobRecord, group: NodeGroup, store: JobStore, policy: WatchPolicy,
                 reports: Reports, show: Show) -> tuple[JobRecord, dict[str, Any]]:
    """Stop a failed or stalled attempt where the nodes answer; its history entry."""
    from orchestrator.backends import backend_for
    from orchestrator.job.teardown import teardown_failed

    answered = [n for n, r in reports.items() if isinstance(r, NodeReport)]
    resumed = resumed_step(record, group) if record.nodes[0].name in answered else None
    failure = record.failure
    entry = {"cause": record.message, "exit_code": failure.exit_code if failure else None,
             "node": failure.node if failure and record.status is JobStatus.FAILED else None,
             "resumed_step": resumed, "failure": failure.to_json() if failure else None}
    if record.status in (JobStatus.FAILED, JobStatus.STALLED):
        reason = entry["cause"] = record.message or "a rank failed"
        # A node that did not answer is left for later: a stop would only hang there.
        record = teardown_failed(record, group, store, reason, only=answered)
        # Show the stop; a node that did not answer is not asked again (another timeout).
        asked = record.replace(nodes=tuple(n for n in record.nodes if n.name in answered))
        again = backend_for(asked).poll(asked, group, policy.poll_timeout)
        reports = {**reports, **again.reports}
        show(record, reports)
    return record, entry


@contextmanager
def _live_table(record: JobRecord, console: Any) -> Iterator[Show]:
    """A rich Live table updated by each call of the yielded Show."""
    from rich.live import Live

    with Live(status_table(record, {}), console=console, refresh_per_second=4,
              transient=False) as live:
        yield lambda r, reports: live.update(status_table(r, reports))
    if not console.is_terminal:
        console.line()  # Live leaves the last frame without a newline when not on a tty


def watch(record: JobRecord, group: NodeGroup, store: JobStore, policy: WatchPolicy,
          recheck: Recheck = dict, echo: Echo = print, console: Any = None,
          show: Show | None = None) -> JobRecord:
    """Watch the job until it ends, acting and restarting per `policy`; the final record.

    `show(record, reports)` is called after every poll (default: a live rich table on
    `console`; `status --watch --json` prints one JSON object per poll instead).
    """
    from rich.console import Console

    console = console or Console()
    while True:
        started = time.time()
        with nullcontext(show) if show is not None else _live_table(record, console) as view:
            record, reports = _poll_attempt(record, group, store, policy, view)
            if policy.act:
                record, entry = _end_attempt(record, group, store, policy, reports, view)
        if not policy.act:
            return record
        record = record.replace(history=(*record.history, {
            "attempt": record.attempts, "started_at": started, "ended_at": time.time(),
            "status": record.status.value, **entry}))
        store.save(record)
        if record.status is not JobStatus.FAILED:
            return record
        record, again = _restart(record, group, store, policy, recheck, entry, echo)
        if not again:
            return record


def _give_up(record: JobRecord, store: JobStore, why: str) -> tuple[JobRecord, bool]:
    record = record.with_status(JobStatus.FAILED, why)
    store.save(record)
    return record, False


def _restart(record: JobRecord, group: NodeGroup, store: JobStore, policy: WatchPolicy,
             recheck: Recheck, entry: Mapping[str, Any], echo: Echo) -> tuple[JobRecord, bool]:
    """Start the next attempt if the policy allows; (record, whether one started)."""
    last, code = str(entry["cause"]), entry["exit_code"]
    used = record.attempts - 1
    if used >= policy.max_restarts:
        if policy.max_restarts > 0:
            return _give_up(record, store, f"gave up after {record.attempts} attempt(s): {last}")
        return record, False
    if policy.restart_on is not None and code not in policy.restart_on:
        return _give_up(record, store, f"{last} (exit code {code} not in "
                                       "--restart-on-exit-codes; not restarted)")
    echo(f"attempt {record.attempts} failed: {last}; restarting ({used + 1} of "
         f"{policy.max_restarts}) from the newest complete checkpoint")
    bad = node_to_exclude(record.history, policy.exclude_after)
    problems = {n: p for n, p in recheck().items() if n != bad}  # `bad` is being left out
    if problems:
        found = "; ".join(f"[{n}] {p}" for n, p in problems.items())
        return _give_up(record, store, f"not restarted: check failed ({found}); last cause: "
                                       f"{last}")
    if not record.cleaned and bad is None:  # a node unreachable at teardown: stop there
        from orchestrator.job.teardown import teardown_failed

        record = teardown_failed(record, group, store, last,
                                 timeout=max(30.0, policy.poll_timeout))
    started = time.time()
    try:
        if bad is not None and any(n.name == bad for n in record.nodes):
            return _relaunch_without(record, group, store, bad, policy, echo), True
        from orchestrator.job.lifecycle import resume_job

        return resume_job(record, group, store, policy.poll_timeout), True
    except JobError as e:
        record = store.load(record.job_id).with_status(
            JobStatus.FAILED, f"not restarted: {e}; last cause: {last}")
        record = record.replace(history=(*record.history, {
            "attempt": record.attempts, "started_at": started, "ended_at": time.time(),
            "status": record.status.value, "cause": str(e), "exit_code": None,
            "resumed_step": None, "node": None}))
        store.save(record)
        return record, False


def _relaunch_without(record: JobRecord, group: NodeGroup, store: JobStore, node: str,
                      policy: WatchPolicy, echo: Echo) -> JobRecord:
    """The next attempt without `node` (job/exclude.py); JobError when the layout won't fit."""
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.exclude import plan_exclusion, relaunch_without

    try:
        excl = plan_exclusion(record, load_job_spec(record.preset, record.overrides), [node])
    except JobError as e:
        raise JobError(f"{node} failed {policy.exclude_after} attempt(s) in a row and the job "
                       f"cannot run without it: {e}") from e
    echo(f"{node} failed {policy.exclude_after} attempt(s) in a row: leaving it out")
    return relaunch_without(record, group, store, excl, echo)
