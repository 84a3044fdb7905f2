"""JobStatus, JobRecord round trips, JobStore atomic writes and `latest`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.errors import JobError
from orchestrator.job.state import (
    TERMINAL,
    JobRecord,
    JobStatus,
    JobStore,
    NodeRecord,
    new_job_id,
    valid_job_id,
)


def _record(job_id: str = "tiny-abcd", status: JobStatus = JobStatus.RUNNING,
            created: float | None = None) -> JobRecord:
    now = created if created is not None else time.time()
    return JobRecord(job_id=job_id, status=status, created_at=now, updated_at=now,
                     inventory_path="/x/inv.yaml", inventory_digest="d" * 64, preset="tiny",
                     overrides=("train.steps=5",), mode="msrun", world_size=4,
                     nodes=(NodeRecord(name="a", host="10.0.0.1", rank_start=0, rank_end=2,
                                       devices=(0, 1), job_dir="/w/jobs/tiny-abcd",
                                       pids={"sched": 10, "0": 11, "1": 12}),
                            NodeRecord(name="b", host="10.0.0.2", rank_start=2, rank_end=4,
                                       devices=(0, 1), job_dir="/w/jobs/tiny-abcd")),
                     sched_host="10.0.0.1", sched_port=23456)


def test_terminal_states() -> None:
    assert TERMINAL == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert not JobStatus.RUNNING.is_terminal() and JobStatus.CANCELLED.is_terminal()
    assert [s.value for s in JobStatus] == ["PENDING", "LAUNCHING", "RUNNING", "STALLED",
                                            "SUCCEEDED", "FAILED", "CANCELLED"]


def test_record_round_trips_through_json() -> None:
    r = _record()
    again = JobRecord.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r
    assert again.node("b").ranks == range(2, 4) and again.node("10.0.0.1").name == "a"
    with pytest.raises(JobError, match="no node 'c'"):
        r.node("c")


def test_with_status_is_a_copy() -> None:
    r = _record()
    failed = r.with_status(JobStatus.FAILED, "rank 1 exited 3")
    assert r.status is JobStatus.RUNNING and failed.status is JobStatus.FAILED
    assert failed.message == "rank 1 exited 3" and failed.updated_at >= r.updated_at


def test_store_saves_atomically_and_resolves_latest(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    first = _record("tiny-aaaa", created=100.0)
    store.save(first)
    store.save(_record("tiny-bbbb", created=200.0))
    store.save(_record("tiny-cccc", JobStatus.PENDING, created=300.0))  # a dry run
    assert store.ids() == ["tiny-aaaa", "tiny-bbbb", "tiny-cccc"]
    assert store.resolve(None) == "tiny-bbbb"
    assert store.resolve("latest") == "tiny-bbbb"
    assert store.resolve("tiny-aaaa") == "tiny-aaaa"
    assert store.load("tiny-aaaa") == first  # every field back as saved
    assert json.loads(store.path("tiny-aaaa").read_text()) == first.to_json()
    assert not list((tmp_path / "jobs").glob("*.tmp")), "no temp files left behind"
    store.save(store.load("tiny-aaaa").with_status(JobStatus.CANCELLED))
    assert store.load("tiny-aaaa").status is JobStatus.CANCELLED


def test_store_errors_name_the_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    with pytest.raises(JobError, match="no jobs in"):
        store.resolve(None)
    with pytest.raises(JobError, match="no job 'tiny-zzzz'"):
        store.load("tiny-zzzz")
    with pytest.raises(JobError, match="not a job id"):
        store.load("../etc/passwd")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "tiny-bad1.json").write_text("{not json")
    with pytest.raises(JobError, match="unreadable job record"):
        store.load("tiny-bad1")


def test_job_ids_are_short_typable_and_unique() -> None:
    taken: set[str] = set()
    for _ in range(200):
        job_id = new_job_id("tiny", taken)
        assert valid_job_id(job_id) and job_id.startswith("tiny-") and len(job_id) == 9
        assert job_id not in taken
        taken.add(job_id)
    assert new_job_id("/path/to/My Preset.yaml").startswith("my-preset-")
    assert new_job_id("7.1b").startswith("7.1b-")
