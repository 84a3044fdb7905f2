"""Hang detection: a job whose ranks are alive but log nothing for --stall-timeout s is STALLED.

    probes = last_output(record, inv, forks, conns)      # node -> LastOutput (node's own clock)
    cause = find_stall(record, reports, probes, 1800)    # None, or "no rank logged for ..."

The time of a rank's last log line is the modification time of its `ranks/<r>/stdout.log`,
measured against the node's own clock (no clock skew between orchestrator and nodes). In a
synchronous data-parallel job one hung rank blocks every other rank in the next collective,
and only rank 0 prints step lines, so the job counts as stalled when the newest output of
*every* worker rank on every node is older than the timeout. The scheduler slot is ignored.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.job.nodes import NodeReport
from orchestrator.job.state import JobRecord
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport

DEFAULT_STALL_TIMEOUT = 1800.0  # first-step graph compile of a big model takes many minutes


@dataclass(frozen=True)
class LastOutput:
    """One node's clock and the mtime of each slot's log (unix seconds, node clock)."""

    now: float
    mtimes: Mapping[str, float]  # slot -> mtime of ranks/<slot>/stdout.log


def probe_command(job_dir: str) -> str:
    """Print the node's time, then `<mtime> <path>` per slot log (bash + coreutils stat)."""
    d = shlex.quote(job_dir)
    return (f"date +%s.%N; for f in {d}/ranks/*/stdout.log; do "
            '[ -f "$f" ] && stat -c "%Y %n" "$f"; done; true')


def parse_probe(text: str) -> LastOutput:
    lines = text.strip().splitlines()
    now = float(lines[0]) if lines else 0.0
    mtimes: dict[str, float] = {}
    for line in lines[1:]:
        when, _, path = line.partition(" ")
        parts = path.rsplit("/", 2)
        if len(parts) == 3 and parts[2] == "stdout.log":
            try:
                mtimes[parts[1]] = float(when)
            except ValueError:
                continue
    return LastOutput(now=now, mtimes=mtimes)


def last_output(record: JobRecord, group: NodeGroup) -> GroupResult[LastOutput]:
    """Ask every node of the job when each of its slots last wrote to its log."""
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> LastOutput:
        res = t.run(probe_command(by_name[t.node.name].job_dir), check=True, timeout=60)
        return parse_probe(res.stdout)

    return group.map(one, [n.name for n in record.nodes])


def find_stall(record: JobRecord, reports: Mapping[str, NodeReport | BaseException],
               probes: Mapping[str, LastOutput | BaseException], timeout: float) -> str | None:
    """The stall cause when every running worker rank has been silent for `timeout` s.

    None when any worker rank logged recently, when no worker rank is running, or when a
    node could not be asked (an unreachable node is the status loop's business, not a hang).
    """
    newest: tuple[float, str, str] | None = None  # (silence, node, slot) of the freshest rank
    running = 0
    for n in record.nodes:
        rep, probe = reports.get(n.name), probes.get(n.name)
        if not isinstance(rep, NodeReport) or not isinstance(probe, LastOutput):
            return None
        for s in rep.slots:
            if s.slot == "sched" or s.state != "running":
                continue
            running += 1
            mtime = probe.mtimes.get(s.slot)
            if mtime is None:
                return None  # no log yet: the rank is only starting
            silence = probe.now - mtime
            if newest is None or silence < newest[0]:
                newest = (silence, n.name, s.slot)
    if running == 0 or newest is None or newest[0] < timeout:
        return None
    silence, node, slot = newest
    step = _last_step(reports)
    return (f"stalled: no rank logged anything for {silence:.0f} s (--stall-timeout "
            f"{timeout:g}); freshest was rank {slot} on {node}"
            + (f", last step {step}" if step is not None else ""))


def _last_step(reports: Mapping[str, NodeReport | BaseException]) -> int | None:
    steps = [int(s.metrics["step"]) for r in reports.values() if isinstance(r, NodeReport)
             for s in r.slots if "step" in s.metrics]
    return max(steps) if steps else None
