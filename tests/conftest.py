"""Shared fixtures: keep the developer's ~/.ssh/config and state out of every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests (and the CLI children they start) keep job records in `.orchestrate` of their working
# directory, as before the per-user default (~/.local/state/orchestrate, issue 14); the tests
# of that default unset this variable.
os.environ.setdefault("ORCHESTRATE_STATE_DIR", ".orchestrate")


@pytest.fixture
def repo() -> Path:
    return REPO
