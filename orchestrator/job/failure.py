"""A job's failure as data: which node, which rank, what exit code, when, and why.

    failure = first_failure(reports)          # from the nodes' `launch.sh status` reports
    failure.node, failure.rank, failure.exit_code, failure.at, failure.cause
    record = record.failed_with(failure)      # FAILED, message = failure.describe()

Everything that decides on a failure (the watch loop's restart and exclude policy, the
history of attempts, `status --json`) reads these fields; `describe()` is only for people.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Cause = Literal["exit", "vanished", "node-lost", "stalled", "other"]
SCHED = "sched"  # the slot of the msrun scheduler (launch.sh status)


@dataclass(frozen=True)
class Failure:
    """Why an attempt of a job ended badly."""

    cause: Cause  # exit: non-zero exit; vanished: gone without an exit code;
    #               node-lost: unreachable too long; stalled: silent too long
    node: str | None = None  # node name (None: the job as a whole, e.g. a stall)
    rank: str | None = None  # global rank as text, "sched" for the scheduler, None: n/a
    exit_code: int | None = None
    at: float = 0.0  # unix time the node recorded (or we noticed) it
    detail: str = ""  # what a person needs beyond the fields (the unreachable error, ...)

    def describe(self) -> str:
        """One line, e.g. `rank 3 on node1 exited 137`."""
        what = "scheduler" if self.rank == SCHED else f"rank {self.rank}"
        if self.cause == "exit":
            why = f": {self.detail}" if self.detail else ""  # the rank's own `error:` line
            return f"{what} on {self.node} exited {self.exit_code}{why}"
        if self.cause == "vanished":
            return f"{what} on {self.node} vanished without an exit code"
        if self.cause == "node-lost":
            return f"node {self.node} {self.detail}"
        return self.detail or self.cause

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Failure | None:
        if not d:
            return None
        return cls(cause=d.get("cause", "other"), node=d.get("node"), rank=d.get("rank"),
                   exit_code=d.get("exit_code"), at=float(d.get("at", 0.0)),
                   detail=str(d.get("detail", "")))


def node_lost(node: str, seconds: float, timeout: float, error: str) -> Failure:
    """A node that stayed unreachable for `seconds` (the --node-lost-timeout `timeout`)."""
    return Failure("node-lost", node=node, at=time.time(),
                   detail=f"unreachable for {seconds:.0f} s (--node-lost-timeout {timeout:g}): "
                          f"{error}")


def stalled(text: str) -> Failure:
    return Failure("stalled", at=time.time(), detail=text)


def first_failure(reports: Mapping[str, Any]) -> Failure | None:
    """The job's first failure in `reports` (node name -> NodeReport | exception).

    The supervisors' own record of the first failure (with its time) wins over slots they
    stopped since; else the first failed slot; None when no rank failed.
    """
    from orchestrator.job.nodes import NodeReport

    ok = {name: r for name, r in reports.items() if isinstance(r, NodeReport)}
    firsts = sorted((r.first_failure[2], name, r.first_failure) for name, r in ok.items()
                    if r.first_failure is not None)
    if firsts:
        at, name, (slot, code, _) = firsts[0]
        return Failure("exit", node=name, rank=slot, exit_code=code, at=at,
                       detail=next((s.error for s in ok[name].slots if s.slot == slot), ""))
    for name, r in ok.items():
        for s in r.slots:
            if s.failed:
                if s.state == "exited":
                    return Failure("exit", node=name, rank=s.slot, exit_code=s.exit_code,
                                   at=time.time(), detail=s.error)
                return Failure("vanished", node=name, rank=s.slot, at=time.time())
    return None
