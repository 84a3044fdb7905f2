"""Pure logic of hang detection (jobs/stall.py) and the restart loop's helpers (jobs/restart.py)."""

from __future__ import annotations

from orchestrator.job.failure import first_failure
from orchestrator.job.nodes import parse_status
from orchestrator.job.stall import LastOutput, find_stall, parse_probe
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord


def _record() -> JobRecord:
    return JobRecord(job_id="tiny-abcd", status=JobStatus.RUNNING, created_at=0.0,
                     updated_at=0.0, inventory_path="/i.yaml", inventory_digest="d",
                     preset="tiny", overrides=(), mode="msrun", world_size=2,
                     nodes=(NodeRecord(name="a", host="h1", rank_start=0, rank_end=1,
                                       devices=(0,), job_dir="/w/jobs/tiny-abcd"),
                            NodeRecord(name="b", host="h2", rank_start=1, rank_end=2,
                                       devices=(0,), job_dir="/w/jobs/tiny-abcd")))


RUNNING_A = "supervisor running\nslot sched running - 9\nslot 0 running - 10\n" \
            "last 0 step=12 loss=2.5\n"
RUNNING_B = "supervisor running\nslot 1 running - 11\n"


def test_parse_probe_reads_node_clock_and_slot_mtimes() -> None:
    out = parse_probe("1000.25\n990 /w/jobs/x/ranks/0/stdout.log\n"
                      "980 /w/jobs/x/ranks/sched/stdout.log\ngarbage\n")
    assert out.now == 1000.25 and out.mtimes == {"0": 990.0, "sched": 980.0}


def test_stalled_only_when_every_running_rank_is_silent() -> None:
    rec = _record()
    reports = {"a": parse_status("a", RUNNING_A), "b": parse_status("b", RUNNING_B)}
    fresh = {"a": LastOutput(1000.0, {"0": 999.0, "sched": 100.0}),
             "b": LastOutput(1000.0, {"1": 100.0})}
    assert find_stall(rec, reports, fresh, 60) is None  # rank 0 logged 1 s ago
    silent = {"a": LastOutput(1000.0, {"0": 900.0, "sched": 999.0}),
              "b": LastOutput(1000.0, {"1": 800.0})}
    cause = find_stall(rec, reports, silent, 60)
    assert cause is not None and cause.startswith("stalled: no rank logged anything for 100 s")
    assert "rank 0 on a" in cause and "last step 12" in cause  # the scheduler does not count
    assert find_stall(rec, reports, silent, 120) is None


def test_no_stall_verdict_without_every_node_or_before_logs_exist() -> None:
    rec = _record()
    reports = {"a": parse_status("a", RUNNING_A), "b": parse_status("b", RUNNING_B)}
    silent_a = LastOutput(1000.0, {"0": 0.0})
    assert find_stall(rec, reports, {"a": silent_a, "b": OSError("down")}, 60) is None
    assert find_stall(rec, reports, {"a": silent_a, "b": LastOutput(1000.0, {})}, 60) is None
    ended = {"a": parse_status("a", "supervisor exited\nslot 0 exited 0 10\n"),
             "b": parse_status("b", "supervisor exited\nslot 1 exited 0 11\n")}
    assert find_stall(rec, ended, {"a": silent_a, "b": LastOutput(1000.0, {"1": 0.0})},
                      60) is None


def test_first_failure_prefers_the_first_recorded_failure() -> None:
    a = parse_status("a", "supervisor exited\nfirst_failure 0 137 200.5\nslot 0 exited 137 10\n")
    b = parse_status("b", "supervisor exited\nfirst_failure 1 3 100.0\nslot 1 exited 3 11\n")
    f = first_failure({"a": a, "b": b})
    assert f is not None and (f.cause, f.node, f.rank, f.exit_code, f.at) == (
        "exit", "b", "1", 3, 100.0)
    assert f.describe() == "rank 1 on b exited 3"
    lost = parse_status("b", "supervisor exited\nslot 1 exited 9 11\n")
    f = first_failure({"b": lost, "a": OSError("x")})
    assert f is not None and (f.node, f.exit_code) == ("b", 9)
    gone = parse_status("c", "supervisor exited\nslot sched lost - 11\n")
    f = first_failure({"c": gone})
    assert f is not None and f.describe() == "scheduler on c vanished without an exit code"
    assert first_failure({"a": parse_status("a", "supervisor running\nslot 0 running - 1\n")}) \
        is None


def test_failure_round_trips_through_the_record() -> None:
    from orchestrator.job.failure import Failure, node_lost

    f = node_lost("b", 61.2, 60, "[b] timed out")
    rec = _record().failed_with(f)
    assert rec.status is JobStatus.FAILED and rec.failure == f
    assert rec.message == "node b unreachable for 61 s (--node-lost-timeout 60): [b] timed out"
    again = JobRecord.from_json(rec.to_json())
    assert again.failure == f and isinstance(again.failure, Failure)
    assert again.with_status(JobStatus.RUNNING).failure is None  # a new attempt forgets it


def test_history_round_trips_through_json() -> None:
    rec = _record().replace(history=({"attempt": 1, "status": "FAILED", "exit_code": 137,
                                      "cause": "rank 1 on b exited 137", "resumed_step": None},))
    back = JobRecord.from_json(rec.to_json())
    assert back.history == rec.history and back.status is JobStatus.RUNNING
    old = rec.to_json()
    del old["history"]  # records written before restarts existed
    assert JobRecord.from_json(old).history == ()
