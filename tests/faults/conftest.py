"""Fault-injection fixtures: the integration test hosts (session), plus helpers every case uses.

The session fixture `testhosts` and the autouse `no_user_ssh_config` come from
tests/integration/conftest.py (imported, so `python -m pytest tests/faults` works alone).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.faults.helpers import HOSTS, REAL_SETS, REAL_STEPS, Reference, heal, orch, record
from tests.integration.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    TestHosts,
    netns_hosts,
    no_user_ssh_config,
    testhosts,
)


def _th0_th1_inventory(testhosts: TestHosts, factory: pytest.TempPathFactory,  # noqa: F811
                       devices: int, name: str) -> Path:
    """th0 and th1 from the test hosts' own inventory, `devices` CPU ranks each."""
    doc = yaml.safe_load(testhosts.inventory.read_text())
    doc["defaults"]["devices"] = devices
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] in HOSTS]
    path = factory.mktemp("inv") / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def two_hosts(testhosts: TestHosts, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """An inventory of th0 and th1 with 2 CPU ranks each (from the test hosts' own)."""
    return _th0_th1_inventory(testhosts, tmp_path_factory, 2, "two.yaml")


@pytest.fixture(scope="module")
def one_rank_each(testhosts: TestHosts,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory of th0 and th1 with 1 CPU rank each (the real-trainer cases)."""
    return _th0_th1_inventory(testhosts, tmp_path_factory, 1, "one_each.yaml")


@pytest.fixture
def state(tmp_path: Path, testhosts: TestHosts) -> Iterator[Path]:  # noqa: F811
    """A state dir; every job recorded there is brought down after the test, hosts restarted."""
    yield tmp_path / "state"
    for name in HOSTS:
        if testhosts.variant == "netns":
            heal(testhosts, name)  # idempotent: a test may have cut one off
        testhosts.start(name)  # idempotent: a test may have stopped one
    for rec in (tmp_path / "state" / "jobs").glob("*.json"):
        orch(tmp_path / "state", "down", rec.stem, "--yes", "-i",
             str(testhosts.inventory), check=False)


@pytest.fixture(scope="session")
def seed_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped seed tasks as a local data.path."""
    from tests.model.data_helpers import seed_records

    path = tmp_path_factory.mktemp("data") / "seed.json"
    path.write_text(json.dumps(seed_records()))
    return path


@pytest.fixture(scope="session")
def reference_run(testhosts: TestHosts, seed_json: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """One uninterrupted REAL_SETS run (saving only at its end), shared by the real-trainer
    cases instead of one reference job per module; brought down after the session."""
    state = tmp_path_factory.mktemp("reference") / "state"
    inv = _th0_th1_inventory(testhosts, tmp_path_factory, 1, "one_each.yaml")
    orch(state, "up", "-i", str(inv), *REAL_SETS, "--set", f"data.path={seed_json}",
         "--set", "train.save_steps=1000", "--wait")
    job = record(state)
    try:
        assert job["status"] == "SUCCEEDED", job
        node = job["nodes"][0]
        res = testhosts.ssh(node["name"], f"cat {node['job_dir']}/output/checkpoint/rank_0/"
                                          f"bloom_rank_0-{REAL_STEPS}.json")
        assert res.returncode == 0, res.stderr
        yield Reference(job["job_id"], float(json.loads(res.stdout)["loss"]))
    finally:
        orch(state, "down", job["job_id"], "--yes", check=False)
