"""The Slurm backend's pure parts: inventory keys, the rendered sbatch script, Slurm's
`scontrol show job` line, and how Slurm's state combines with the ranks' own status."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.backends import get_backend
from orchestrator.backends.slurm import render_batch, verdict
from orchestrator.backends.slurm_cli import SlurmJob, _error_line, parse_show_job
from orchestrator.config.inventory import parse_inventory
from orchestrator.errors import InventoryError, JobError
from orchestrator.job.nodes import parse_status
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord
from orchestrator.remote.group import GroupResult

NODES = "nodes:\n  - {name: th0, host: 10.0.0.2}\n  - {name: th1, host: 10.0.0.3}\n"


def _record(status: JobStatus = JobStatus.LAUNCHING) -> JobRecord:
    nodes = tuple(NodeRecord(name=f"th{i}", host=f"10.0.0.{i + 2}", rank_start=2 * i,
                             rank_end=2 * i + 2, devices=(0, 1), job_dir=f"/w/jobs/tiny-ab{i}x")
                  for i in range(2))
    return JobRecord(job_id="tiny-abcd", status=status, created_at=0.0, updated_at=0.0,
                     inventory_path="inv.yaml", inventory_digest="", preset="tiny",
                     overrides=(), mode="msrun", world_size=4, nodes=nodes, backend="slurm",
                     scheduler_job="12")


def test_scheduler_keys_parse_and_default_to_ssh() -> None:
    inv = parse_inventory("backend: slurm\npartition: gpu\naccount: p42\nqos: low\n"
                          "time: '1-00:30:00'\nslurm_conf: conf/slurm.conf\n" + NODES,
                          "/inv/cluster.yaml")
    s = inv.scheduler
    assert (s.backend, s.partition, s.account, s.qos, s.time) == ("slurm", "gpu", "p42", "low",
                                                                 "1-00:30:00")
    assert s.slurm_conf == Path("/inv/conf/slurm.conf")
    assert s.sbatch_options() == ["--partition=gpu", "--account=p42", "--qos=low",
                                  "--time=1-00:30:00"]
    assert parse_inventory(NODES).scheduler.backend == "ssh"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("backend: lsf\n", "backend", "'lsf'"),
    ("partition: 'a b'\n", "partition", "'a b'"),
    ("time: soon\n", "time", "'soon'"),
    ("qos: [x]\n", "qos", "['x']"),
])
def test_bad_scheduler_key_names_file_key_value(text: str, key: str, fragment: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(text + NODES, "c.yaml")
    msg = str(e.value)
    assert "c.yaml" in msg and key in msg and fragment in msg and "\n" not in msg


def test_batch_script_pins_nodes_and_runs_each_nodes_launch(tmp_path: Path) -> None:
    inv = parse_inventory("backend: slurm\npartition: debug\ntime: 30\n" + NODES)
    text = render_batch(_record(), inv.scheduler, {"th0": "10.0.0.2", "th1": "10.0.0.3"})
    assert "#SBATCH --nodelist=th0,th1\n" in text and "#SBATCH --nodes=2\n" in text
    assert "#SBATCH --partition=debug\n" in text and "#SBATCH --time=30\n" in text
    assert "#SBATCH --output=/w/jobs/tiny-ab0x/slurm-%j.out\n" in text
    assert "1) planned=th1 dir=/w/jobs/tiny-ab1x ;;" in text
    script = tmp_path / "b.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_batch_script_refuses_relative_job_folder() -> None:
    record = _record()
    record = record.replace(nodes=(record.nodes[0].__class__(**{
        **record.nodes[0].__dict__, "job_dir": "~/run/jobs/x"}), record.nodes[1]))
    with pytest.raises(JobError, match="th0"):
        render_batch(record, parse_inventory(NODES).scheduler, {})


def test_show_job_line_and_error_line() -> None:
    f = parse_show_job("JobId=12 JobName=x JobState=PENDING Reason=Resources Dependency=(null)"
                       " ExitCode=0:0 NodeList=(null)")
    assert (f["JobState"], f["Reason"], f["ExitCode"]) == ("PENDING", "Resources", "0:0")
    err = ("sbatch: error: invalid partition specified: nope\n"
           "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert _error_line(err) == "invalid partition specified: nope"


def _reports(th0: str, th1: str) -> GroupResult:
    return GroupResult({"th0": parse_status("th0", th0), "th1": parse_status("th1", th1)})


PENDING_SLOTS = "supervisor none\nslot 0 pending - -\nslot 1 pending - -\n"
RUNNING = "supervisor running\nslot 0 running - 10\nslot 1 running - 11\n"
DONE = "supervisor exited\nslot 0 exited 0 10\nslot 1 exited 0 11\n"


def test_pending_job_shows_slurm_reason() -> None:
    job = SlurmJob("12", "PENDING", "Resources", "0:0", "")
    status, why = verdict(_record(), job, _reports(PENDING_SLOTS, PENDING_SLOTS)) or (None, "")
    assert status is JobStatus.PENDING and why == "slurm job 12 PENDING (Resources)"


def test_pending_on_a_down_node_fails_naming_it() -> None:
    job = SlurmJob("12", "PENDING", "ReqNodeNotAvail,_UnavailableNodes:th1", "0:0", "")
    status, why = verdict(_record(), job, _reports(PENDING_SLOTS, PENDING_SLOTS)) or (None, "")
    assert status is JobStatus.FAILED
    assert why == ("slurm job 12 PENDING (ReqNodeNotAvail, UnavailableNodes:th1): Slurm "
                   "cannot schedule it")


def test_running_ranks_and_finished_ranks_decide_themselves() -> None:
    job = SlurmJob("12", "RUNNING", "None", "0:0", "th[0-1]")
    assert verdict(_record(), job, _reports(RUNNING, RUNNING)) is None
    done = SlurmJob("12", "COMPLETED", "None", "0:0", "th[0-1]")
    assert verdict(_record(JobStatus.RUNNING), done, _reports(DONE, DONE)) is None


def test_slurm_end_before_ranks_finished_is_failed_naming_the_state() -> None:
    job = SlurmJob("12", "FAILED", "NonZeroExitCode", "3:0", "th[0-1]")
    status, why = verdict(_record(), job, _reports(PENDING_SLOTS, PENDING_SLOTS)) or (None, "")
    assert status is JobStatus.FAILED
    assert why.startswith("slurm job 12 FAILED (NonZeroExitCode), exit code 3:0 before")
    assert "th0:/w/jobs/tiny-ab0x/slurm-12.out" in why


def test_time_limit_names_timeout_over_the_killed_ranks() -> None:
    killed = "supervisor exited\nslot 0 exited 143 10\nslot 1 exited 143 11\n"
    job = SlurmJob("12", "TIMEOUT", "TimeLimit", "0:15", "th[0-1]")
    status, why = verdict(_record(JobStatus.RUNNING), job, _reports(killed, killed)) or (None, "")
    assert status is JobStatus.FAILED and why.startswith("slurm job 12 TIMEOUT (TimeLimit)")


def test_ranks_killed_while_slurm_completes_wait_for_slurms_end_state() -> None:
    """While Slurm kills the step (COMPLETING) the ranks look failed ("vanished"): the
    record waits for Slurm's end state, which names the cause."""
    killed = "supervisor exited\nslot 0 exited 143 10\nslot 1 - - 11\n"
    ending = SlurmJob("12", "COMPLETING", "TimeLimit", "0:15", "th[0-1]")
    status, why = verdict(_record(JobStatus.RUNNING), ending, _reports(killed, killed)) \
        or (None, "")
    assert status is JobStatus.RUNNING
    assert why == "slurm job 12 COMPLETING (TimeLimit): Slurm is ending it"
    ended = SlurmJob("12", "TIMEOUT", "TimeLimit", "0:15", "th[0-1]")
    status, why = verdict(_record(JobStatus.RUNNING), ended, _reports(killed, killed)) \
        or (None, "")
    assert status is JobStatus.FAILED and why.startswith("slurm job 12 TIMEOUT (TimeLimit)")


def test_cancelled_record_stays_cancelled() -> None:
    job = SlurmJob("12", "CANCELLED", "None", "0:15", "th[0-1]")
    assert verdict(_record(JobStatus.CANCELLED), job, _reports(DONE, DONE)) is None


def test_backends_by_name() -> None:
    assert [get_backend(n).name for n in ("ssh", "slurm", "k8s")] == ["ssh", "slurm", "k8s"]
    with pytest.raises(JobError, match=r"backend 'pbs' cannot run jobs from here \(backends: "
                                       r"ssh, slurm, k8s\)"):
        get_backend("pbs")
