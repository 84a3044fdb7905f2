"""Job records: the JobStatus enum, the frozen JobRecord and the atomic JSON JobStore.

    store = JobStore(default_state_dir())      # orchestrator/job/statedir.py
    record = store.load(store.resolve(None))      # the latest job
    store.save(record.with_status(JobStatus.RUNNING))

Records live in `<state_dir>/jobs/<job_id>.json`; the rendered files of a job live next to
it in `<state_dir>/jobs/<job_id>/`. `status` always asks the nodes; a record is only what
we last saw.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrate_bloom.fileio import write_atomic

from orchestrator.errors import JobError
from orchestrator.job.failure import Failure
from orchestrator.job.statedir import check_trusted

RECORD_VERSION = 1
_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: readable aloud
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,40}\Z")


class JobStatus(enum.Enum):
    """Lifecycle of a job, in order (SkyPilot's job_lib.JobStatus)."""

    PENDING = "PENDING"
    """Recorded and rendered; nothing staged or started yet."""
    LAUNCHING = "LAUNCHING"
    """Staging files and starting ranks on the nodes."""
    RUNNING = "RUNNING"
    """Every node started its ranks; at least one is still running."""
    STALLED = "STALLED"
    """Ranks alive but no rank logged anything for --stall-timeout s (see jobs/stall.py)."""
    SUCCEEDED = "SUCCEEDED"
    """Every rank exited 0."""
    FAILED = "FAILED"
    """A rank exited non-zero or vanished, or staging/starting failed."""
    CANCELLED = "CANCELLED"
    """Stopped by `orchestrate down` (or Ctrl-C during `up`)."""

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_STARTING = frozenset({JobStatus.PENDING, JobStatus.LAUNCHING, JobStatus.RUNNING})


@dataclass(frozen=True)
class NodeRecord:
    """One node's part of a job."""

    name: str  # inventory node name
    host: str  # address (rank table server_id)
    rank_start: int  # first global rank on the node
    rank_end: int  # exclusive
    devices: tuple[int, ...]  # local device ids, one per rank
    job_dir: str  # job folder on the node (absolute once staged)
    pids: Mapping[str, int] = field(default_factory=dict)  # slot ("0", "sched", ...) -> pid

    @property
    def ranks(self) -> range:
        return range(self.rank_start, self.rank_end)


@dataclass(frozen=True)
class JobRecord:
    """What `up` decided and what we last saw of a job."""

    job_id: str
    status: JobStatus
    created_at: float  # unix seconds
    updated_at: float
    inventory_path: str
    inventory_digest: str  # sha256 of the inventory file when the job was created
    preset: str
    overrides: tuple[str, ...]
    mode: str  # "ranktable" | "msrun"
    world_size: int
    nodes: tuple[NodeRecord, ...]  # in rank order
    attempts: int = 1
    sched_host: str | None = None  # msrun: scheduler address and port
    sched_port: int | None = None
    entrypoint: str | None = None  # custom rank command (None: the bundled trainer)
    local_data: str | None = None  # local dataset folder staged to the nodes as data/<name>
    message: str = ""  # why it failed / what happened last
    # Every node confirmed that nothing of the job is left (`launch.sh stop` succeeded
    # everywhere, or every rank ended by itself). `down --all` targets ended jobs without it.
    cleaned: bool = False
    excluded: tuple[str, ...] = ()  # nodes the job was relaunched without (jobs/exclude.py)
    # Excluded nodes that did not answer the stop at that relaunch: `down` still stops there.
    stray: tuple[NodeRecord, ...] = ()
    cluster_timeout: int = 7200  # msrun: MS_TOPO_TIMEOUT rendered into launch.sh
    stop_grace: int = 10  # seconds between SIGTERM and SIGKILL, rendered into launch.sh
    # One entry per finished attempt (job/watch.py): attempt, started_at, ended_at, status,
    # cause, exit_code, resumed_step.
    history: tuple[Mapping[str, Any], ...] = ()
    # The current attempt's failure as data (job/failure.py); None unless FAILED by a rank,
    # a lost node or a stall. `message` is its one-line description (or another cause).
    failure: Failure | None = None
    # `down --save`: the step every rank saved before it stopped (`resume` continues there).
    saved_step: int | None = None
    backend: str = "ssh"  # where ranks run: ssh | slurm | k8s (orchestrator/backends/)
    # The scheduler's id of the current attempt (Slurm: the batch job id; k8s: the job
    # object's name); None for ssh.
    scheduler_job: str | None = None
    # Where the scheduler keeps the job beyond its id (k8s: namespace, kind, api_version,
    # kubeconfig, volume: backends/k8s.py ref_of); empty for ssh and slurm.
    scheduler_ref: Mapping[str, str | None] = field(default_factory=dict)

    def failed_with(self, failure: Failure) -> JobRecord:
        """FAILED because of `failure` (message: its description)."""
        return dataclasses.replace(self.with_status(JobStatus.FAILED, failure.describe()),
                                   failure=failure)

    def with_status(self, status: JobStatus, message: str | None = None) -> JobRecord:
        """A copy with a new status (and message), `updated_at` now; a new attempt
        (PENDING, LAUNCHING, RUNNING) forgets the last failure."""
        failure = None if status in _STARTING else self.failure
        return dataclasses.replace(self, status=status, updated_at=time.time(),
                                   message=self.message if message is None else message,
                                   failure=failure)

    def replace(self, **changes: Any) -> JobRecord:
        return dataclasses.replace(self, updated_at=time.time(), **changes)

    def node(self, name: str) -> NodeRecord:
        for n in self.nodes:
            if n.name == name or n.host == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise JobError(f"job {self.job_id} has no node {name!r} (nodes: {known})")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["overrides"] = list(self.overrides)
        d["nodes"] = [dict(dataclasses.asdict(n), devices=list(n.devices), pids=dict(n.pids))
                      for n in self.nodes]
        d["history"] = [dict(h) for h in self.history]
        d["failure"] = self.failure.to_json() if self.failure else None
        d["excluded"] = list(self.excluded)
        d["stray"] = [dict(dataclasses.asdict(n), devices=list(n.devices), pids=dict(n.pids))
                      for n in self.stray]
        d["scheduler_ref"] = dict(self.scheduler_ref)
        d["version"] = RECORD_VERSION
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobRecord:
        nodes = tuple(_node_from_json(n) for n in d["nodes"])
        return cls(job_id=d["job_id"], status=JobStatus(d["status"]),
                   created_at=d["created_at"], updated_at=d["updated_at"],
                   inventory_path=d["inventory_path"], inventory_digest=d["inventory_digest"],
                   preset=d["preset"], overrides=tuple(d["overrides"]), mode=d["mode"],
                   world_size=d["world_size"], nodes=nodes, attempts=d.get("attempts", 1),
                   sched_host=d.get("sched_host"), sched_port=d.get("sched_port"),
                   entrypoint=d.get("entrypoint"), message=d.get("message", ""),
                   local_data=d.get("local_data"),
                   cleaned=bool(d.get("cleaned", _cleaned_before_v2(d))),
                   excluded=tuple(str(x) for x in d.get("excluded", ())),
                   stray=tuple(_node_from_json(n) for n in d.get("stray", ())),
                   cluster_timeout=d.get("cluster_timeout", 7200),
                   stop_grace=d.get("stop_grace", 10),
                   history=tuple(dict(h) for h in d.get("history", ())),
                   failure=Failure.from_json(d.get("failure")),
                   saved_step=_opt_int(d.get("saved_step")),
                   backend=d.get("backend", "ssh"), scheduler_job=d.get("scheduler_job"),
                   scheduler_ref=_str_map(d.get("scheduler_ref")))


def _str_map(value: Any) -> dict[str, str | None]:
    """A record's string map (absent: empty); anything else is a bad record."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items()):
        raise JobError(f"scheduler_ref: a map of strings expected, got {value!r:.80}")
    return dict(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _node_from_json(n: Mapping[str, Any]) -> NodeRecord:
    return NodeRecord(name=n["name"], host=n["host"], rank_start=n["rank_start"],
                      rank_end=n["rank_end"], devices=tuple(n["devices"]), job_dir=n["job_dir"],
                      pids=dict(n.get("pids", {})))


def _cleaned_before_v2(d: Mapping[str, Any]) -> bool:
    """Records written before `cleaned` existed: SUCCEEDED, and CANCELLED by a `down` that
    reached every node, were clean; a FAILED job may still have ranks running elsewhere."""
    if d.get("status") == "SUCCEEDED":
        return True
    return d.get("status") == "CANCELLED" and not str(d.get("message", "")).startswith(
        "down could not reach")


def needs_stop(record: JobRecord) -> bool:
    """Whether `down --all` should stop the job: it has not ended, or it ended (FAILED, or a
    `down` that missed a node) without every node confirming that nothing of it is left."""
    if not record.status.is_terminal():
        return True
    return record.status is not JobStatus.SUCCEEDED and not record.cleaned


def new_job_id(preset: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A short, typable id such as `tiny-k3f9`: preset stem + 4 unambiguous characters."""
    base = Path(preset)
    name = base.stem if base.suffix in (".yaml", ".yml") else base.name
    stem = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")[:16] or "job"
    while True:
        suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
        job_id = f"{stem}-{suffix}"
        if job_id not in taken:
            return job_id


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.match(job_id))


MAX_RECORD = 16 << 20  # bytes of one job record read


class JobStore:
    """Job records under `<state_dir>/jobs/`, one JSON file each, written atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.data_cache = self.state_dir / "data"  # prepared datasets by content key

    def path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def job_dir(self, job_id: str) -> Path:
        """Local folder with the job's rendered files."""
        return self.jobs_dir / job_id

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize writers (two `orchestrate` processes on one state dir)."""
        self.make_dirs()
        with open(self.jobs_dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def make_dirs(self) -> None:
        """The state and jobs folders, created 0700 (records are only read from folders that
        nobody else can write)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.jobs_dir.mkdir(exist_ok=True, mode=0o700)

    def ids(self) -> list[str]:
        if not self.jobs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.jobs_dir.glob("*.json"))

    def save(self, record: JobRecord) -> None:
        """Write the record atomically (temp file in the same folder + os.replace)."""
        self.make_dirs()
        text = json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
        with self.locked():
            write_atomic(self.path(record.job_id), text, mode=0o600)

    def load(self, job_id: str) -> JobRecord:
        if not valid_job_id(job_id):
            raise JobError(f"{job_id!r} is not a job id (ids look like tiny-k3f9)")
        path = self.path(job_id)
        try:
            doc = json.loads(self._read_trusted(path))
        except FileNotFoundError:
            known = ", ".join(self.ids()[-5:]) or "none"
            raise JobError(f"no job {job_id!r} in {self.jobs_dir} (recent: {known})") from None
        except (OSError, ValueError) as e:
            raise JobError(f"{path}: unreadable job record: {e}") from e
        try:
            return JobRecord.from_json(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise JobError(f"{path}: malformed job record: {e!r}") from e

    def _read_trusted(self, path: Path) -> str:
        """The record's text, if it and its folders are ours and not group/world-writable
        (statedir.check_trusted); never through a symlink."""
        for folder in (self.state_dir, self.jobs_dir):
            check_trusted(folder, os.stat(folder))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            check_trusted(path, os.fstat(fh.fileno()))
            return fh.read(MAX_RECORD).decode()

    def all(self) -> list[JobRecord]:
        """Every readable record, oldest first."""
        out = []
        for job_id in self.ids():
            try:
                out.append(self.load(job_id))
            except JobError:
                continue
        return sorted(out, key=lambda r: r.created_at)

    def resolve(self, job_id: str | None, prefer_live: bool = False) -> str:
        """`job_id` itself, or the latest job's id when None (JobError if there is none).

        With `prefer_live`, the latest job that has not ended wins over newer ended ones.
        """
        if job_id and job_id != "latest":
            return job_id
        records = self.all()
        if not records:
            raise JobError(f"no jobs in {self.jobs_dir}: start one with `orchestrate up`")
        live = [r for r in records if r.status in (JobStatus.LAUNCHING, JobStatus.RUNNING,
                                                   JobStatus.STALLED)]
        if prefer_live and live:
            return live[-1].job_id
        launched = [r for r in records if r.status is not JobStatus.PENDING]  # skip dry runs
        return (launched or records)[-1].job_id
