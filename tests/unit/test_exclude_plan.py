"""Pure planning of `resume --exclude-node` (jobs/exclude.py): layout, global batch, refusals."""

from __future__ import annotations

import pytest

from orchestrator.config.presets import load_job_spec
from orchestrator.errors import JobError
from orchestrator.job.exclude import plan_exclusion
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord


def _record(ranks_per_node: tuple[int, ...], overrides: tuple[str, ...] = ()) -> JobRecord:
    nodes, start = [], 0
    for i, k in enumerate(ranks_per_node):
        nodes.append(NodeRecord(name=f"n{i}", host=f"10.0.0.{i + 1}", rank_start=start,
                                rank_end=start + k, devices=tuple(range(k)),
                                job_dir="/w/jobs/tiny-abcd"))
        start += k
    return JobRecord(job_id="tiny-abcd", status=JobStatus.FAILED, created_at=0.0,
                     updated_at=0.0, inventory_path="/i.yaml", inventory_digest="d",
                     preset="tiny", overrides=overrides, mode="msrun", world_size=start,
                     nodes=tuple(nodes))


def test_keeps_global_batch_by_raising_micro_batch_num() -> None:
    rec = _record((2, 2), ("train.steps=40",))
    excl = plan_exclusion(rec, load_job_spec("tiny", rec.overrides), ["n1"])
    assert excl.excluded == ("n1",) and excl.remaining == ("n0",)
    assert excl.world == (4, 2) and excl.data_parallel == (4, 2)
    assert excl.global_batch == (32, 32)  # tiny: micro_batch_size 8 x 1 x 4 ranks
    assert excl.overrides == ("train.steps=40", "parallel.data_parallel=2",
                              "parallel.micro_batch_num=2")
    assert "global batch kept at 32" in excl.notes[1] and "x2" in excl.notes[1]
    spec = load_job_spec("tiny", excl.overrides)  # the new overrides are a valid preset
    assert spec.parallel.global_batch_size == 32


def test_host_names_a_node_and_scale_says_how_the_batch_shrinks() -> None:
    rec = _record((1, 1, 1))
    excl = plan_exclusion(rec, load_job_spec("tiny"), ["10.0.0.3"], keep_global_batch=False)
    assert excl.excluded == ("n2",) and excl.global_batch == (24, 16)
    assert "global batch 24 -> 16" in excl.notes[1]
    assert "parallel.micro_batch_num=2" not in excl.overrides


def test_global_batch_that_cannot_be_kept_is_refused_with_numbers() -> None:
    rec = _record((1, 1, 1), ("parallel.micro_batch_size=3",))
    with pytest.raises(JobError, match=r"global batch of 9 samples .* --global-batch scale"):
        plan_exclusion(rec, load_job_spec("tiny", rec.overrides), ["n0"])


def test_refusals_name_the_reason() -> None:
    rec = _record((2, 2))
    with pytest.raises(JobError, match="leaves no node"):
        plan_exclusion(rec, load_job_spec("tiny"), ["n0", "n1"])
    with pytest.raises(JobError, match="has no node 'n9'"):
        plan_exclusion(rec, load_job_spec("tiny"), ["n9"])
    mp = load_job_spec("tiny", ("parallel.model_parallel=2", "train.device_target=Ascend"))
    with pytest.raises(JobError, match=r"model/pipeline parallel \(model_parallel=2"):
        plan_exclusion(rec, mp, ["n1"])


def test_excluded_and_stray_nodes_round_trip_through_json() -> None:
    rec = _record((2, 2)).replace(excluded=("n2",), stray=(_record((1,)).nodes[0],),
                                  cleaned=True, stop_grace=3)
    again = JobRecord.from_json(rec.to_json())
    assert again.excluded == ("n2",) and again.stray == rec.stray
    assert again.cleaned and again.stop_grace == 3


def test_restart_loop_blames_a_node_and_excludes_after_k_in_a_row() -> None:
    from orchestrator.job.failure import first_failure, node_lost, stalled
    from orchestrator.job.nodes import parse_status
    from orchestrator.job.watch import node_to_exclude

    reports = {"a": parse_status("a", "supervisor exited\nfirst_failure 1 3 20.5\n"),
               "b": parse_status("b", "supervisor exited\nfirst_failure 2 137 10.0\n")}
    first = first_failure(reports)
    assert first is not None and first.node == "b"  # the earliest failure
    assert node_lost("c", 9, 5, "timeout").node == "c"
    assert stalled("stalled: no rank logged anything").node is None
    fail_b = {"status": "FAILED", "node": "b"}
    assert node_to_exclude([fail_b, fail_b], 2) == "b"
    assert node_to_exclude([fail_b], 2) is None
    assert node_to_exclude([{"status": "FAILED", "node": "a"}, fail_b], 2) is None
    assert node_to_exclude([fail_b, fail_b], 0) is None  # off
