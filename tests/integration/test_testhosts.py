"""tests/testhosts.sh itself: idempotent up, concurrent sets, nothing left after down."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import (
    SCRIPT,
    bring_up,
    leftovers,
    tear_down,
    why_no_testhosts,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def two_sets() -> list[Path]:
    reason = why_no_testhosts()
    if reason or os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback":
        pytest.skip(reason or "checks the netns variant (loopback variant selected)")
    states = [Path(tempfile.mkdtemp(prefix="oth-")) for _ in range(2)]
    yield states
    for s in states:
        tear_down(s)


def test_sets_coexist_and_down_leaves_nothing(two_sets: list[Path]) -> None:
    a_state, b_state = two_sets
    a = bring_up(a_state, 2, "netns")
    b = bring_up(b_state, 1, "netns")
    a_kh = a.known_hosts.read_text()
    assert a_kh.split()[0] != b.known_hosts.read_text().split()[0]  # different subnets
    again = bring_up(a_state, 2, "netns")  # idempotent: same hosts, same keys
    assert again.known_hosts.read_text() == a_kh
    assert a.ssh("th1", "hostname").stdout == "th1\n"
    assert b.ssh("th0", "hostname").stdout == "th0\n"
    assert leftovers(a_state)  # sanity: the check sees a running set
    tear_down(a_state)
    assert leftovers(a_state) == []
    assert not a_state.exists()
    assert b.ssh("th0", "hostname").stdout == "th0\n"  # the other set is untouched
    tear_down(b_state)
    assert leftovers(b_state) == []


def test_down_tolerates_partial_state(two_sets: list[Path]) -> None:
    state = two_sets[0]
    bring_up(state, 1, "netns")
    tag_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag_ns
    (state / "hosts" / "th0" / "pid").unlink()  # lose track of the sshd
    (state / "state").unlink()
    proc = subprocess.run(["bash", str(SCRIPT), "down", "--state", str(state)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(state) == []
    proc = subprocess.run(["bash", str(SCRIPT), "down", "--state", str(state)],
                          capture_output=True, text=True)
    assert proc.returncode == 0  # twice is fine
