"""Where job records live, and which records are trusted.

    default_state_dir()      # $XDG_STATE_HOME/orchestrate, else ~/.local/state/orchestrate
    check_trusted(path, st)  # JobError unless ours and not group/world-writable
    check_local_job_dir(record_node_job_dir, workdir, job_id, node)

The state folder is per user (XDG state home), never the working directory: a `.orchestrate/`
planted in a cloned or shared repository is not read (a one-line notice says so when one is
there; `--state-dir .orchestrate` or ORCHESTRATE_STATE_DIR reads it on purpose). Records and
their folders are honoured only when they belong to the user and are not group/world-writable,
as OpenSSH treats its config; a `connection: local` node's launch script runs only from the
job's own folder, `<workdir>/jobs/<job id>` of the inventory (docs/security.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.errors import JobError

STATE_ENV = "ORCHESTRATE_STATE_DIR"
OLD_DEFAULT = Path(".orchestrate")


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/orchestrate (when absolute), else ~/.local/state/orchestrate."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "orchestrate"


def old_state_notice(chosen: Path) -> str | None:
    """One line when ./.orchestrate (the old default) holds job records and is not the folder
    in use (`inventories/local.yaml` keeps its node workdir in ./.orchestrate/local: no note)."""
    old_jobs = OLD_DEFAULT / "jobs"
    if not old_jobs.is_dir() or OLD_DEFAULT.resolve() == chosen.resolve() \
            or not any(old_jobs.glob("*.json")):
        return None
    return (f"note: ./{OLD_DEFAULT} (the old default state folder) is not read; job records "
            f"live in {chosen} (--state-dir {OLD_DEFAULT} reads the old one)")


def check_trusted(path: Path, st: os.stat_result) -> None:
    """JobError unless `path` (its stat `st`) belongs to us and is not group/world-writable."""
    if st.st_uid != os.geteuid():
        raise JobError(f"{path}: not trusted: owned by uid {st.st_uid}, not by you "
                       f"(uid {os.geteuid()})")
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
                                   and st.st_uid == 0):
        raise JobError(f"{path}: not trusted: writable by group or others "
                       f"(mode {stat.S_IMODE(st.st_mode):o}; chmod go-w {path})")


def check_local_job_dir(job_dir: str, workdir: str, job_id: str, node: str) -> None:
    """A local node's job folder must be `<workdir>/jobs/<job_id>` of the inventory: a record
    pointing anywhere else never gets its `launch.sh` run on this machine."""
    want = os.path.realpath(os.path.join(os.path.expanduser(workdir), "jobs", job_id))
    if os.path.realpath(os.path.expanduser(job_dir)) != want:
        raise JobError(f"job {job_id}: node {node} (connection: local) has job folder "
                       f"{job_dir!r} in its record, not {want}; refusing to run its launch.sh")
