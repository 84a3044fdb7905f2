"""Load (slow): many hosts, many cycles, nothing leaks.

1. 32 test hosts x 2 ranks of a trivial rank command: `up`, `status` polled POLLS times
   (each a CLI run over 32 SSH connections; was a fixed ~30 s of polls), `down`.
2. 20 `up`/`down` cycles in a row on 8 hosts, in this process (library calls, one
   `NodeGroup` per cycle as the CLI does): afterwards no job process and no extra sshd
   session on any host, no node still marked busy, this process's open file descriptors and
   resident memory flat (numbers printed with -s).

Each part brings up its own set of test hosts (own state dir, torn down, leftovers checked).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.faults.helpers import SLEEPER, orch, record
from tests.integration.conftest import (
    TestHosts,
    bring_up,
    leftovers,
    tear_down,
    why_no_testhosts,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]
POLLS = 5  # status rounds on the 32 hosts: every one sees all 64 ranks running


def _hosts(n: int) -> Iterator[TestHosts]:
    reason = why_no_testhosts()
    if reason:
        pytest.skip(reason)
    variant = "loopback" if os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback" else "netns"
    state = Path(tempfile.mkdtemp(prefix="oth-load-"))
    try:
        yield bring_up(state, n, variant)
    finally:
        tear_down(state)
        left = leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"test hosts left behind: {left}"


def _inventory(hosts: TestHosts, tmp: Path, devices: int) -> Path:
    doc = yaml.safe_load(hosts.inventory.read_text())
    doc["defaults"]["devices"] = devices
    path = tmp / "inv.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path



def test_32_hosts_x_2_ranks_up_status_down(tmp_path: Path) -> None:
    for hosts in _hosts(32):
        inv = _inventory(hosts, tmp_path, 2)
        state = tmp_path / "state"
        t0 = time.monotonic()
        orch(state, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--stop-grace", "1",
             "--set", "data.path=",
             "--entrypoint", SLEEPER, timeout=300)
        t_up = time.monotonic() - t0
        job_id = record(state)["job_id"]
        polls: list[float] = []
        while len(polls) < POLLS:
            t1 = time.monotonic()
            doc = json.loads(orch(state, "status", job_id, "--json").stdout)
            polls.append(time.monotonic() - t1)
            assert doc["status"] == "RUNNING"
            ranks = [r for n in doc["nodes"] for r in n["ranks"]]
            assert len(ranks) == 64 and all(r["state"] == "running" for r in ranks)
        t2 = time.monotonic()
        down = orch(state, "down", job_id, "--yes", timeout=300)
        t_down = time.monotonic() - t2
        assert f"job {job_id} CANCELLED" in down.stdout
        print(f"\n32 hosts x 2 ranks: up {t_up:.1f} s, {len(polls)} status polls "
              f"(median {sorted(polls)[len(polls) // 2]:.2f} s), down {t_down:.1f} s")
        for name in hosts.names:
            res = hosts.ssh(name, f"grep -lzxF ORCHESTRATE_JOB_ID={job_id} /proc/[0-9]*/environ"
                                  " 2>/dev/null | grep -v self || true")
            assert res.stdout.strip() == "", f"job left on {name}: {res.stdout}"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_20_up_down_cycles_on_8_hosts_leak_nothing(tmp_path: Path) -> None:
    from orchestrator.config.inventory import load_inventory
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.lifecycle import UpOptions, create_job, launch
    from orchestrator.job.state import JobStatus, JobStore
    from orchestrator.job.teardown import stop_job
    from orchestrator.remote.group import NodeGroup

    for hosts in _hosts(8):
        inv = load_inventory(_inventory(hosts, tmp_path, 2))
        spec = load_job_spec("tiny", ("data.path=",))  # trivial ranks: nothing to prepare
        store = JobStore(tmp_path / "state")
        opts = UpOptions(entrypoint=SLEEPER, stop_grace=1)
        sshd_before = {n: hosts.ssh(n, "pgrep -c sshd").stdout.strip() for n in hosts.names}
        samples = []
        t0 = time.monotonic()
        for cycle in range(20):
            with NodeGroup(inv, inv.in_rank_order()) as group:
                rec = create_job(inv, spec, store, opts, group)
                rec = launch(rec, group, store, echo=lambda _m: None)
                assert rec.status is JobStatus.RUNNING
            with NodeGroup(inv, warm=False) as group:
                rec, failed = stop_job(rec, group, store)
            assert not failed and rec.status is JobStatus.CANCELLED
            samples.append((cycle, _fds(), _rss_kb()))
        elapsed = time.monotonic() - t0
        print(f"\n20 cycles on 8 hosts x 2 ranks: {elapsed:.1f} s; (cycle, fds, rss KiB): "
              f"{samples[1]} -> {samples[4]} -> {samples[-1]}")
        # Warm after a few cycles: descriptors flat, memory within 16 MiB.
        assert samples[-1][1] <= samples[4][1], samples
        assert samples[-1][2] - samples[4][2] < 16 * 1024, samples
        for name in hosts.names:
            def left(name: str = name, hosts: TestHosts = hosts) -> str:
                return hosts.ssh(name, "grep -lza ORCHESTRATE_JOB_ID= /proc/[0-9]*/environ "
                                       "2>/dev/null | grep -v self || true").stdout.strip()

            deadline = time.monotonic() + 30  # poll: `down` verified, exits may still settle
            while (found := left()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert found == "", f"job processes left on {name}: {found}"
            busy = hosts.ssh(name, f"test -e {hosts.state}/work/jobs/ACTIVE && echo busy || true")
            assert busy.stdout.strip() == "", f"{name} still marked busy"
            # The sshd count seen by a probe session is what it was before: no session of ours
            # left open.
            assert hosts.ssh(name, "pgrep -c sshd").stdout.strip() == sshd_before[name]
