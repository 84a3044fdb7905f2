"""The state folder: per-user default, trusted records only, local launch scripts only from
the job's own folder (issue 14 item 5, docs/security.md).

    python -m pytest tests/unit/test_statedir.py -q
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.errors import JobError
from orchestrator.job.state import JobRecord, JobStatus, JobStore, NodeRecord
from orchestrator.job.statedir import default_state_dir


def _record(job_dir: str, inventory: str, job_id: str = "tiny-abcd") -> JobRecord:
    now = time.time()
    return JobRecord(job_id=job_id, status=JobStatus.RUNNING, created_at=now, updated_at=now,
                     inventory_path=inventory, inventory_digest="", preset="tiny",
                     overrides=(), mode="msrun", world_size=1,
                     nodes=(NodeRecord("local", "127.0.0.1", 0, 1, (0,), job_dir),))


def test_default_is_the_users_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_state_dir() == tmp_path / ".local" / "state" / "orchestrate"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "orchestrate"
    monkeypatch.setenv("XDG_STATE_HOME", "relative")  # not absolute: ignored, as the spec says
    assert default_state_dir() == tmp_path / ".local" / "state" / "orchestrate"


def test_an_old_dot_orchestrate_is_not_read_and_a_notice_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATE_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    JobStore(Path(".orchestrate")).save(_record("/w/jobs/tiny-abcd", "inv.yaml"))
    res = CliRunner().invoke(cli, ["status", "tiny-abcd"])
    assert res.exit_code == 1
    note, error = res.output.strip().splitlines()
    assert note == (f"note: ./.orchestrate (the old default state folder) is not read; job "
                    f"records live in {tmp_path}/xdg/orchestrate (--state-dir .orchestrate "
                    "reads the old one)")
    assert error.startswith(f"Error: no job 'tiny-abcd' in {tmp_path}/xdg/orchestrate/jobs")


@pytest.mark.parametrize("what", ["record", "jobs", "state"])
def test_group_or_world_writable_records_are_refused(tmp_path: Path, what: str) -> None:
    store = JobStore(tmp_path / "state")
    store.save(_record("/w/jobs/tiny-abcd", "inv.yaml"))
    target = {"record": store.path("tiny-abcd"), "jobs": store.jobs_dir,
              "state": store.state_dir}[what]
    assert store.load("tiny-abcd").job_id == "tiny-abcd"
    target.chmod(target.stat().st_mode | 0o002)
    with pytest.raises(JobError, match=rf"^{target}: not trusted: writable by group or others "
                                       r"\(mode [0-7]+; chmod go-w"):
        store.load("tiny-abcd")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_record_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "state")
    store.save(_record("/w/jobs/tiny-abcd", "inv.yaml"))
    os.chown(store.path("tiny-abcd"), 4242, 4242)
    with pytest.raises(JobError, match="not trusted: owned by uid 4242"):
        store.load("tiny-abcd")


def test_a_symlinked_record_is_refused(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "state")
    store.save(_record("/w/jobs/tiny-abcd", "inv.yaml", job_id="tiny-real"))
    store.path("tiny-abcd").symlink_to(store.path("tiny-real"))
    with pytest.raises(JobError, match="unreadable job record"):
        store.load("tiny-abcd")


def test_a_planted_record_cannot_run_a_local_launch_script(tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "launch.sh").write_text(f"touch {marker}\necho nojob\n")
    inv = tmp_path / "local.yaml"
    inv.write_text(f"nodes: [{{name: local, host: 127.0.0.1, connection: local, "
                   f"workdir: {tmp_path / 'work'}}}]\n")
    state = tmp_path / "state"
    JobStore(state).save(_record(str(evil), str(inv)))
    for argv in (["status", "tiny-abcd"], ["down", "tiny-abcd", "--yes"],
                 ["logs", "tiny-abcd"]):
        res = CliRunner().invoke(cli, [*argv, "--state-dir", str(state)])
        assert res.exit_code == 1, res.output
        assert f"has job folder '{evil}' in its record, not {tmp_path}/work/jobs/tiny-abcd; " \
               "refusing to run its launch.sh" in res.output
    assert not marker.exists()
