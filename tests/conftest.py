"""Shared fixtures: keep the developer's ~/.ssh/config and state out of every test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tests.tools.examples  # noqa: F401 - registers the "ci" hypothesis profile (tests/run.sh)

if TYPE_CHECKING:
    from tests.tools.dryrun import DryRuns

REPO = Path(__file__).resolve().parent.parent
# Tests (and the CLI children they start) keep job records in `.orchestrate` of their working
# directory, as before the per-user default (~/.local/state/orchestrate, issue 14); the tests
# of that default unset this variable.
os.environ.setdefault("ORCHESTRATE_STATE_DIR", ".orchestrate")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> DryRuns:
    """Compile-only dry runs (tests/tools/dryrun.py), each layout compiled once per session and
    shared read-only by tests/model/test_train_dryrun.py and
    tests/integration/test_collect_dryrun.py (they compiled MP=2 and MP=2 x PP=2 twice)."""
    from tests.tools.dryrun import DryRuns

    return DryRuns(tmp_path_factory.mktemp("dryruns"))
