"""Parsing `launch.sh status` output and deriving a job's status from the nodes' reports."""

from __future__ import annotations

import time

from orchestrator.errors import ConnectError
from orchestrator.job.failure import first_failure
from orchestrator.job.nodes import derive_status, parse_metrics, parse_status
from orchestrator.job.progress import status_json
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord

RUNNING_A = """supervisor running
slot sched running - 101
slot 0 running - 102
last 0 step=120 loss=2.3141 lr=1.0e-04 tokens_per_s=3120.5 elapsed_s=61.2
slot 1 running - 103
last 1 [rank 1] step=120 loss=2.3150 lr=1.0e-04 tokens_per_s=3100.0 elapsed_s=61.3
"""
DONE_B = """supervisor exited
slot 2 exited 0 201
last 2 step=200 loss=1.9 tokens_per_s=10
slot 3 exited 0 202
"""
FAILED_B = """supervisor exited
first_failure 3 1 1795881302.25
slot 2 exited 143 201
slot 3 exited 1 202
"""


def _record(status: JobStatus = JobStatus.RUNNING) -> JobRecord:
    now = time.time()
    return JobRecord(job_id="tiny-abcd", status=status, created_at=now, updated_at=now,
                     inventory_path="inv.yaml", inventory_digest="", preset="tiny", overrides=(),
                     mode="msrun", world_size=4,
                     nodes=(NodeRecord("a", "10.0.0.1", 0, 2, (0, 1), "/w/jobs/tiny-abcd"),
                            NodeRecord("b", "10.0.0.2", 2, 4, (0, 1), "/w/jobs/tiny-abcd")))


def test_parse_metrics() -> None:
    assert parse_metrics("step=120 loss=2.3141 lr=1.0e-04 tokens_per_s=3120.5 elapsed_s=61.2") \
        == {"step": 120.0, "loss": 2.3141, "lr": 1e-4, "tokens_per_s": 3120.5, "elapsed_s": 61.2}
    assert parse_metrics("INFO nothing here") == {}


def test_parse_status() -> None:
    a = parse_status("a", RUNNING_A)
    assert a.supervisor == "running" and a.staged and a.first_failure is None
    assert [(s.slot, s.state, s.pid) for s in a.slots] == [
        ("sched", "running", 101), ("0", "running", 102), ("1", "running", 103)]
    assert a.slots[2].metrics["loss"] == 2.315
    assert not parse_status("a", "nojob\n").staged
    b = parse_status("b", FAILED_B)
    assert b.first_failure == ("3", 1, 1795881302.25)
    assert b.slots[1].failed and b.slots[0].exit_code == 143


def test_derive_status() -> None:
    rec = _record()
    a, done, failed = (parse_status("a", RUNNING_A), parse_status("b", DONE_B),
                       parse_status("b", FAILED_B))
    assert derive_status(rec, {"a": a, "b": done}) is JobStatus.RUNNING
    assert derive_status(rec, {"a": a, "b": failed}) is JobStatus.FAILED
    finished_a = parse_status("a", RUNNING_A.replace("running", "exited").replace(" - ", " 0 "))
    assert derive_status(rec, {"a": finished_a, "b": done}) is JobStatus.SUCCEEDED
    # An unreachable node keeps the job from being called SUCCEEDED.
    assert derive_status(rec, {"a": finished_a, "b": ConnectError("b", "refused")}) \
        is JobStatus.RUNNING
    # CANCELLED and FAILED are sticky whatever the nodes say.
    assert derive_status(_record(JobStatus.CANCELLED), {"a": a}) is JobStatus.CANCELLED
    lost = parse_status("b", "supervisor exited\nslot 2 lost - 201\nslot 3 exited 0 202\n")
    assert derive_status(rec, {"a": a, "b": lost}) is JobStatus.FAILED


def test_failure_reason_prefers_the_supervisors_first_failure() -> None:
    f = first_failure({"b": parse_status("b", FAILED_B)})
    assert f is not None and f.describe() == "rank 3 on b exited 1"
    assert first_failure({"a": parse_status("a", RUNNING_A)}) is None


def test_status_json_shape() -> None:
    rec = _record()
    doc = status_json(rec, {"a": parse_status("a", RUNNING_A),
                            "b": ConnectError("b", "connection refused")})
    assert doc["job_id"] == "tiny-abcd" and doc["status"] == "RUNNING" and doc["attempts"] == 1
    a, b = doc["nodes"]
    assert a["scheduler"]["state"] == "running"
    assert [(r["rank"], r["state"], r["step"], r["loss"]) for r in a["ranks"]] == [
        (0, "running", 120, 2.3141), (1, "running", 120, 2.315)]
    assert b["reachable"] is False and "refused" in b["error"]


def test_plot_series_split_into_attempts() -> None:
    from orchestrator.job.plot import parse_series

    text = ("step=1 loss=3.0 tokens_per_s=10\nnoise\nstep=2 loss=2.5 tokens_per_s=11\n"
            "step=2 loss=2.6 tokens_per_s=9\nstep=3 loss=2.4\n")
    first, second = parse_series(text)
    assert first.steps == [1, 2] and first.loss == [3.0, 2.5]
    assert second.steps == [2, 3] and second.tokens_per_s[0] == 9
    marked = ("== orchestrate attempt 1 ==\nstep=5 loss=1\n"
              "== orchestrate attempt 2 ==\nstep=6 loss=1\n")
    assert [a.steps for a in parse_series(marked)] == [[5], [6]]


def test_a_failed_rank_s_error_line_is_the_failure_s_detail() -> None:
    """A rank's own reason (the trainer's last `error:` line, reported by `launch.sh status`
    for an exited rank) reaches the record's failure and message; scrubbed and bounded like any
    node output; a rank without one keeps the plain message."""
    reason = ("data.path='/d' holds samples of 65 token ids, model.seq_length=32 needs 33 "
              "(prepare-data --seq-length 32, or --set model.seq_length=64)")
    b = parse_status("b", FAILED_B + f"error 3 {reason}\nerror 9 not a slot\n")
    assert [s.error for s in b.slots] == ["", reason]
    failure = first_failure({"b": b})
    assert failure is not None and failure.detail == reason
    assert failure.describe() == f"rank 3 on b exited 1: {reason}"
    hostile = parse_status("b", FAILED_B + "error 3 \x1b[31mred\x07 " + "x" * 5000 + "\n"
                           + "error 3 " + "y" * 1000 + "\n")
    assert hostile.slots[1].error == "y" * 400  # the longest kept; control chars never reach it
    odd = parse_status("b", FAILED_B + "error 3 \x1b[31mred\n")
    assert odd.slots[1].error == "\ufffd[31mred"
    plain = first_failure({"b": parse_status("b", FAILED_B)})
    assert plain is not None and plain.describe() == "rank 3 on b exited 1"
