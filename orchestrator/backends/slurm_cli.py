"""Slurm's own commands, run on this machine (a login node): sbatch, scontrol, scancel, squeue.

    job_id = sbatch(Path("slurm.sbatch"), conf)      # "12"
    job = job_state("12", conf)                      # SlurmJob(state="PENDING", reason=...)
    scancel("12", conf); wait_gone("12", conf, timeout=30)

`conf` is the inventory's `slurm_conf` (exported as SLURM_CONF), None for Slurm's default.
Every failure is a JobError of one line naming the command and what Slurm said.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import JobError

TIMEOUT = 30.0  # seconds one Slurm command may take
# Slurm states after which the job holds no node any more.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                     "SUSPENDED", "RESV_DEL_HOLD"})
# Pending reasons that no amount of waiting fixes here (a node of the job down or drained, a
# partition down, a limit the job exceeds): the job is failed instead of waiting forever.
UNSCHEDULABLE = ("ReqNodeNotAvail", "NodeDown", "PartitionDown", "PartitionInactive",
                 "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount", "InvalidQOS",
                 "AccountNotAllowed", "QOSNotAllowed", "BadConstraints",
                 "DependencyNeverSatisfied")


@dataclass(frozen=True)
class SlurmJob:
    """What `scontrol show job` says of one job."""

    job_id: str
    state: str  # JobState, e.g. PENDING, RUNNING, COMPLETED, TIMEOUT
    reason: str  # Reason, e.g. Resources, Priority, ReqNodeNotAvail (None: "None")
    exit_code: str  # ExitCode, "code:signal"
    nodes: str  # NodeList (compressed, e.g. th[0-1])
    batch_host: str = ""  # BatchHost: the node the batch script (and its output) is on

    @property
    def unschedulable(self) -> bool:
        """Pending for a reason that waiting does not fix (e.g. a requested node is down)."""
        return self.state in WAITING and self.reason.startswith(UNSCHEDULABLE)

    def describe(self) -> str:
        """`slurm job 12 PENDING (ReqNodeNotAvail, UnavailableNodes:th1)`."""
        reason = self.reason.replace("_", " ")  # `scontrol -o` writes spaces as underscores
        why = f" ({reason})" if reason and reason != "None" else ""
        code = f", exit code {self.exit_code}" if self.state in ENDED - {"COMPLETED",
                                                                        "CANCELLED"} else ""
        return f"slurm job {self.job_id} {self.state}{why}{code}"


def run_slurm(args: list[str], conf: Path | None,
              timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command with SLURM_CONF set; JobError when it is missing or hangs."""
    env = dict(os.environ)
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    try:
        return subprocess.run(args, capture_output=True, text=True, env=env, check=False,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise JobError(f"slurm: `{args[0]}` not found on this machine (install the Slurm "
                       "client: slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise JobError(f"slurm: `{' '.join(args)}` did not answer in {timeout:.0f} s "
                       "(is slurmctld up?)") from None


def _error_line(stderr: str) -> str:
    """The line that says why, from Slurm's stderr (its last `error:` line, else the last)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln]
    return errors[0] if errors else (lines[-1] if lines else "no output")


def sbatch(script: Path, conf: Path | None) -> str:
    """Submit the batch script; its Slurm job id."""
    proc = run_slurm(["sbatch", "--parsable", str(script)], conf)
    if proc.returncode != 0:
        raise JobError(f"slurm: sbatch refused {script.name}: {_error_line(proc.stderr)}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise JobError(f"slurm: sbatch printed no job id: {proc.stdout.strip()!r}")
    return job_id


def check_partition(name: str, conf: Path | None) -> None:
    """JobError unless the partition exists and is UP (asked before anything is staged)."""
    proc = run_slurm(["scontrol", "show", "partition", "-o", name], conf)
    if proc.returncode != 0:
        raise JobError(f"slurm: invalid partition specified: {name} "
                       f"({_error_line(proc.stderr + proc.stdout)})")
    state = parse_show_job(proc.stdout).get("State", "UP")
    if state != "UP":
        raise JobError(f"slurm: partition {name} is {state}")


def parse_show_job(text: str) -> dict[str, str]:
    """`scontrol show job -o` (one line of KEY=VALUE words) as a dict."""
    out: dict[str, str] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if eq and key not in out:
            out[key] = value
    return out


def job_state(job_id: str, conf: Path | None) -> SlurmJob | None:
    """The job as slurmctld sees it; None once it forgot it (MinJobAge after the end)."""
    proc = run_slurm(["scontrol", "show", "job", "-o", job_id], conf)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise JobError(f"slurm: scontrol show job {job_id}: {_error_line(proc.stderr)}")
    fields = parse_show_job(proc.stdout)
    if "JobState" not in fields:
        return None
    return SlurmJob(job_id=job_id, state=fields["JobState"], reason=fields.get("Reason", ""),
                    exit_code=fields.get("ExitCode", ""), nodes=fields.get("NodeList", ""),
                    batch_host=fields.get("BatchHost", ""))


def in_queue(job_id: str, conf: Path | None) -> bool:
    """Whether `squeue` still lists the job (pending, running or completing)."""
    proc = run_slurm(["squeue", "-h", "-j", job_id, "-o", "%i"], conf)
    return proc.returncode == 0 and job_id in proc.stdout.split()


def scancel(job_id: str, conf: Path | None) -> None:
    """Cancel the job (a job that already ended is fine)."""
    proc = run_slurm(["scancel", job_id], conf)
    if proc.returncode != 0 and "already completing or completed" not in proc.stderr \
            and "Invalid job id" not in proc.stderr:
        raise JobError(f"slurm: scancel {job_id}: {_error_line(proc.stderr)}")


def wait_gone(job_id: str, conf: Path | None, timeout: float) -> bool:
    """Wait until squeue no longer lists the job; whether it is gone."""
    deadline = time.monotonic() + timeout
    while in_queue(job_id, conf):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
