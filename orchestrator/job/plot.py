"""`orchestrate plot`: loss and tokens/s against step, one line per attempt, from the ranks' logs.

    series = parse_series(text)       # [Attempt(steps, loss, tokens_per_s), ...]
    plot_job(record, group, Path("loss.png"))

An attempt starts at each marker line of the launch script (`orchestrate resume`) or where
the step count goes backwards. Loss is taken from
rank 0's lines (every data-parallel rank logs the same loss); tokens/s is summed over ranks.
matplotlib is an optional extra: `pip install 'orchestrate[plot]'`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import JobError
from orchestrator.job.nodes import parse_metrics
from orchestrator.job.state import JobRecord
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.transport import Transport


@dataclass
class Attempt:
    steps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)


def parse_series(text: str) -> list[Attempt]:
    """Split a rank's log into attempts: at each `== orchestrate attempt N ==` marker the
    launch script writes, and where the step count goes backwards."""
    attempts: list[Attempt] = []
    last = None
    for line in text.splitlines():
        if line.startswith("== orchestrate attempt "):
            last = None  # the launch script marks where each attempt starts
            continue
        m = parse_metrics(line)
        if "step" not in m or "loss" not in m:
            continue
        if last is None or m["step"] <= last:
            attempts.append(Attempt())
        last = m["step"]
        a = attempts[-1]
        a.steps.append(m["step"])
        a.loss.append(m["loss"])
        a.tokens_per_s.append(m.get("tokens_per_s", float("nan")))
    return attempts


def _read_logs(record: JobRecord, group: NodeGroup) -> dict[str, str]:
    """rank -> its stdout.log text, from every node."""
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> dict[str, str]:
        n = by_name[t.node.name]
        out = {}
        for r in n.ranks:
            log = shlex.quote(f"{n.job_dir}/ranks/{r}/stdout.log")
            res = t.run(f"grep -a -e 'step=' -e '^== orchestrate attempt ' {log} 2>/dev/null "
                        "|| true", check=True, timeout=120)
            out[str(r)] = res.stdout
        return out

    results = group.map(one, [n.name for n in record.nodes])
    logs: dict[str, str] = {}
    for name, r in results.items():
        if isinstance(r, BaseException):
            raise JobError(f"[{name}] cannot read logs: {r}")
        logs.update(r)
    return logs


def render_plot(job_id: str, logs: Mapping[str, str], output: Path) -> Path:
    """Draw loss (top) and summed tokens/s (bottom) against step for every attempt."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JobError("plot needs matplotlib: pip install 'orchestrate[plot]' "
                       "(or pip install matplotlib)") from None
    per_rank = {r: parse_series(text) for r, text in logs.items()}
    first = per_rank.get("0") or next((s for s in per_rank.values() if s), [])
    if not first:
        raise JobError(f"job {job_id}: no `step=… loss=…` lines in the ranks' logs yet")
    fig, (ax_loss, ax_tps) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for i, a in enumerate(first):
        ax_loss.plot(a.steps, a.loss, label=f"attempt {i + 1}")
        totals: dict[float, float] = {}
        for series in per_rank.values():
            if i < len(series):
                for s, v in zip(series[i].steps, series[i].tokens_per_s, strict=True):
                    if v == v:  # not NaN
                        totals[s] = totals.get(s, 0.0) + v
        if totals:
            xs = sorted(totals)
            ax_tps.plot(xs, [totals[x] for x in xs], label=f"attempt {i + 1}")
    ax_loss.set_ylabel("loss (rank 0)")
    ax_tps.set_ylabel("tokens/s (summed over logging ranks)")
    ax_tps.set_xlabel("step")
    ax_loss.set_title(f"job {job_id}")
    ax_loss.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def plot_job(record: JobRecord, group: NodeGroup, output: Path) -> Path:
    return render_plot(record.job_id, _read_logs(record, group), output)
