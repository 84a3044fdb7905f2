"""Ask a job's nodes how their ranks are, and parse `launch.sh status`.

    with NodeGroup(inv, forks=64) as group:         # orchestrator/remote/group.py
        reports = query_job(record, group)           # node name -> NodeReport | exception
    status = derive_status(record, reports)
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.job.state import JobRecord, JobStatus
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport
from orchestrator.untrusted import lines, scrub, to_int

MAX_ERROR = 400  # characters of a failed rank's `error:` line kept in the record
_FIELD = re.compile(r"\b(step|loss|lr|tokens_per_s|elapsed_s)=([-+0-9.eEinfa]+)")


@dataclass(frozen=True)
class SlotReport:
    """One rank (or the scheduler) as the node sees it now."""

    slot: str  # global rank as text, or "sched"
    state: str  # pending | running | exiting (dead, code not yet recorded) | exited | lost
    exit_code: int | None
    pid: int | None
    metrics: Mapping[str, float]  # last trainer log line: step, loss, lr, tokens_per_s, ...
    error: str = ""  # a failed rank's last `error: ...` line (its reason), scrubbed, bounded

    @property
    def failed(self) -> bool:
        return self.state == "lost" or (self.state == "exited" and self.exit_code != 0)


@dataclass(frozen=True)
class NodeReport:
    node: str
    staged: bool  # launch.sh exists on the node
    supervisor: str  # running | exited | none
    slots: tuple[SlotReport, ...]
    # (slot, exit code, unix time) of the node's first failure not caused by a stop
    first_failure: tuple[str, int, float] | None = None


def parse_metrics(line: str) -> dict[str, float]:
    """`step=120 loss=2.3141 lr=1.0e-04 tokens_per_s=3120.5` -> floats (unparsable: skipped)."""
    out: dict[str, float] = {}
    for key, value in _FIELD.findall(line):
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def parse_status(node: str, text: str) -> NodeReport:
    """Parse the output of `launch.sh status` (or `nojob`)."""
    supervisor = "none"
    first_failure: tuple[str, int, float] | None = None
    slots: dict[str, dict[str, object]] = {}
    order: list[str] = []
    staged = True
    for line in lines(text):
        parts = line.split(" ", 2)
        if parts[0] == "nojob":
            staged = False
        elif parts[0] == "supervisor" and len(parts) > 1:
            supervisor = parts[1]
        elif parts[0] == "first_failure" and len(parts) == 3:
            code, _, when = parts[2].partition(" ")
            if (exit_code := to_int(code, signed=True)) is not None:
                try:
                    at = float(when)
                except ValueError:
                    at = 0.0
                first_failure = (parts[1], exit_code, at)
        elif parts[0] == "slot":
            fields = line.split()
            if len(fields) == 5:
                slot, state, code, pid = fields[1:5]
                slots[slot] = {"state": state,
                               "exit_code": to_int(code, signed=True),
                               "pid": to_int(pid), "metrics": {}}
                order.append(slot)
        elif parts[0] == "last" and len(parts) == 3 and parts[1] in slots:
            slots[parts[1]]["metrics"] = parse_metrics(parts[2])
        elif parts[0] == "error" and len(parts) == 3 and parts[1] in slots:
            slots[parts[1]]["error"] = scrub(parts[2].strip())[:MAX_ERROR]
    return NodeReport(node=node, staged=staged, supervisor=supervisor,
                      first_failure=first_failure, slots=tuple(
        SlotReport(slot=s, state=str(slots[s]["state"]), exit_code=slots[s]["exit_code"],  # type: ignore[arg-type]
                   pid=slots[s]["pid"], metrics=slots[s]["metrics"],  # type: ignore[arg-type]
                   error=str(slots[s].get("error", "")))
        for s in order))


def launch_command(job_dir: str, sub: str) -> str:
    """`bash <job dir>/launch.sh SUB`, or `echo nojob` when the node was never staged."""
    script = shlex.quote(f"{job_dir}/launch.sh")
    return f"if [ -f {script} ]; then bash {script} {sub}; else echo nojob; fi"


POLL_TIMEOUT = 60.0  # seconds one `launch.sh status` may take before the node is unreachable


def query_job(record: JobRecord, group: NodeGroup, timeout: float = POLL_TIMEOUT,
              ) -> GroupResult[NodeReport]:
    """Ask every node of the job for its ranks' state (never trusts the record).

    A node that does not answer within `timeout` s (a network partition leaves the SSH
    connection open but silent) is reported as an exception.
    """
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> NodeReport:
        res = t.run(launch_command(by_name[t.node.name].job_dir, "status"), check=True,
                    timeout=timeout)
        return parse_status(t.node.name, res.stdout)

    return group.map(one, [n.name for n in record.nodes])


def derive_status(record: JobRecord, reports: Mapping[str, NodeReport | BaseException]
                  ) -> JobStatus:
    """The job's status from what the nodes say now (CANCELLED and FAILED are sticky)."""
    if record.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        return record.status
    ok = [r for r in reports.values() if isinstance(r, NodeReport)]
    slots = [s for r in ok for s in r.slots]
    if any(s.failed for s in slots):
        return JobStatus.FAILED
    if any(s.state in ("running", "exiting") for s in slots):
        return JobStatus.RUNNING
    expected = sum(n.rank_end - n.rank_start for n in record.nodes)
    ranks_done = [s for s in slots if s.slot != "sched" and s.state == "exited"]
    if len(ok) == len(record.nodes) and len(ranks_done) == expected and expected > 0:
        return JobStatus.SUCCEEDED
    return record.status
