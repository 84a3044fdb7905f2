"""Hostile input, property-based: job records and rank tables never raise a traceback.

Any JSON document stored as a job record loads or raises JobError in one line naming the file;
any JSON (mostly rank-table shaped) given to `ranktable check`/`merge` parses or raises
RankTableError in one line; merging parsed tables never raises anything else.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import JobError, RankTableError
from orchestrator.hccl.check import parse_table
from orchestrator.hccl.ranktable import merge_tables
from orchestrator.job.state import JobStore
from tests.tools.examples import examples

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False), st.text(max_size=12))
json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=5)),
    max_leaves=25)

_GOOD_RECORD = {
    "job_id": "tiny-abcd", "status": "RUNNING", "created_at": 1.0, "updated_at": 2.0,
    "inventory_path": "/i.yaml", "inventory_digest": "d", "preset": "tiny", "overrides": [],
    "mode": "msrun", "world_size": 2, "attempts": 1, "history": [],
    "nodes": [{"name": "a", "host": "10.0.0.1", "rank_start": 0, "rank_end": 2,
               "devices": [0, 1], "job_dir": "/w/jobs/tiny-abcd", "pids": {}}]}


def _mutations() -> st.SearchStrategy[dict]:  # type: ignore[type-arg]
    """The good record with some fields replaced by anything, or removed."""
    keys = st.sampled_from(sorted(_GOOD_RECORD))
    return st.lists(st.tuples(keys, st.one_of(st.just("<drop>"), json_values)), max_size=4).map(
        lambda edits: {k: v for k, v in {**_GOOD_RECORD, **dict(edits)}.items()
                       if v != "<drop>"})


def _load(tmp: Path, doc: object) -> None:
    store = JobStore(tmp)
    store.jobs_dir.mkdir(parents=True, exist_ok=True)
    store.path("tiny-abcd").write_text(json.dumps(doc))
    try:
        store.load("tiny-abcd")
    except JobError as e:
        text = str(e)
        assert text.startswith(str(store.path("tiny-abcd"))) and "\n" not in text, text


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(json_values, _mutations()))
def test_any_job_record_loads_or_fails_in_one_line(tmp_path: Path, doc: object) -> None:
    _load(tmp_path, doc)


def _table_docs() -> st.SearchStrategy[object]:
    device = st.fixed_dictionaries({"device_id": st.one_of(st.text(max_size=3), st.integers()),
                                    "device_ip": st.one_of(st.text(max_size=16), st.integers()),
                                    "rank_id": st.one_of(st.text(max_size=3), st.integers())})
    server = st.fixed_dictionaries({"server_id": st.text(max_size=16),
                                    "device": st.lists(device, max_size=3)})
    table = st.fixed_dictionaries({"version": st.sampled_from(["1.0", "1.2", "2", ""]),
                                   "server_count": st.one_of(st.text(max_size=3),
                                                             st.integers()),
                                   "server_list": st.lists(server, max_size=3),
                                   "status": st.sampled_from(["completed", "x"])})
    return st.one_of(table, json_values)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_table_docs(), min_size=1, max_size=3))
def test_any_rank_tables_check_and_merge_or_fail_in_one_line(docs: list[object]) -> None:
    tables = []
    for i, doc in enumerate(docs):
        try:
            tables.append(parse_table(json.dumps(doc), f"t{i}.json"))
        except RankTableError as e:
            assert str(e).startswith(f"t{i}.json: ") and "\n" not in str(e), str(e)
    if tables:
        try:
            merge_tables(tables)
        except RankTableError as e:
            assert "\n" not in str(e), str(e)
