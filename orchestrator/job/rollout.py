"""Staging and starting a job over the node group: per node, no barrier between the phases.

    record = stage_and_start(record, group, store)   # `up` over SSH: each node starts as
                                                     # soon as it is fully staged
    record = stage_all(record, group, store)         # stage only (Slurm, a relaunch)
    record = start_over_ssh(record, group, store, resume=True)   # start only (resume)

A node that already holds the code and data costs one command in all: the staging command
ends in `launch.sh start` when every file is in place (stage.first_command). A node is never
started half-staged; if any node fails to stage or start, every node that started is stopped
and the job recorded FAILED; on Ctrl-C no further node starts, the in-flight commands return,
and the caller stops what started (lifecycle.launch).
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import JobError
from orchestrator.job import stage as stage_mod
from orchestrator.job.hashcache import HASH_CACHE, HashCache
from orchestrator.job.render import RenderedFile
from orchestrator.job.start import START_TIMEOUT, read_start, start_command
from orchestrator.job.state import JobRecord, JobStatus, JobStore, NodeRecord
from orchestrator.job.teardown import failures, stop_everywhere
from orchestrator.remote.group import GroupResult, NodeGroup, cause
from orchestrator.remote.transport import Transport

Echo = Callable[[str], None]


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while cleaning up, so cleanup itself is not interrupted."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def describe(failed: Mapping[str, BaseException]) -> str:
    """`[th0, th1] node busy: ...; [th2] connection refused`: nodes with the same cause merged."""
    by_cause: dict[str, list[str]] = {}
    for name, exc in failed.items():
        by_cause.setdefault(cause(exc), []).append(name)
    return "; ".join(f"[{', '.join(names)}] {why}" for why, names in by_cause.items())


def rendered_files(store: JobStore, record: JobRecord, node: str) -> dict[str, RenderedFile]:
    """The node's rendered files as written by lifecycle.create_job."""
    folder = store.job_dir(record.job_id) / "nodes" / node
    return {p.name: RenderedFile(p.read_text(), p.stat().st_mode & 0o777)
            for p in sorted(folder.iterdir()) if p.is_file()}


def _stage_map(record: JobRecord, group: NodeGroup, store: JobStore,
               may_start: Callable[[], bool] | None) -> GroupResult[stage_mod.Staged]:
    """stage_node on every node (starting it too while `may_start()` says so)."""
    code = stage_mod.code_tree()
    data = None
    if record.local_data:  # prepared data rarely changes: its sha256 by stat identity
        hashes = HashCache.load(store.state_dir / HASH_CACHE)
        data = stage_mod.data_tree(Path(record.local_data), hashes)
        hashes.save()
    with tempfile.TemporaryDirectory(prefix="orchestrate-stage-") as tmp:
        def stage_one(t: Transport) -> stage_mod.Staged:
            node = t.node
            rendered = rendered_files(store, record, node.name)
            secrets = {k: v.text.encode() for k, v in rendered.items() if v.mode & 0o077 == 0}
            public = {k: v for k, v in rendered.items() if k not in secrets}
            trees = [code] + ([data] if data is not None and not node.data_dir else [])
            return stage_mod.stage_node(t, record.job_id, str(node.workdir), trees, public,
                                        secrets, Path(tmp),
                                        start=may_start is not None and may_start())

        return group.map(stage_one, [n.name for n in record.nodes])


def _with_staged(record: JobRecord, results: Mapping[str, object]) -> JobRecord:
    """The record with each staged node's absolute job folder (and pids, if it started)."""
    def node(n: NodeRecord) -> NodeRecord:
        s = results.get(n.name)
        if not isinstance(s, stage_mod.Staged):
            return n
        n = dataclasses.replace(n, job_dir=s.job_dir)
        return n if s.pids is None else dataclasses.replace(n, pids=dict(s.pids))
    return record.replace(nodes=tuple(node(n) for n in record.nodes))


def _echo_staged(results: Mapping[str, object], echo: Echo) -> None:
    staged = [v for v in results.values() if isinstance(v, stage_mod.Staged)]
    echo(f"staged {len(staged)} node(s): {sum(s.sent for s in staged)} file(s) "
         f"uploaded; {sum(s.reused for s in staged)} tree(s) already on the nodes "
         "(same sha256)")


def stage_all(record: JobRecord, group: NodeGroup, store: JobStore,
              echo: Echo = print) -> JobRecord:
    """Stage the job's rendered files, the code and the dataset on every node (parallel,
    sha256-skip); the record with each node's absolute job folder.

    Raises:
        JobError: a node failed to stage (names it and the cause); nothing was started.
    """
    results = _stage_map(record, group, store, None)
    record = _with_staged(record, results)
    store.save(record)
    if failures(results):
        raise JobError(f"staging failed, nothing started: {describe(failures(results))}")
    _echo_staged(results, echo)
    return record


def stage_and_start(record: JobRecord, group: NodeGroup, store: JobStore,
                    echo: Echo = print) -> JobRecord:
    """Stage every node and start it as soon as it is staged, in one pass per node; when a
    node could not even connect, the others are staged but none starts.

    Returns the record RUNNING, with every node's job folder and pids.

    Raises:
        JobError: a node failed to stage or start; every node that started was stopped and
            the job is recorded FAILED.
        KeyboardInterrupt: once every node's in-flight command returned (no node starts
            after it); the record holds what started, for the caller to stop.
    """
    cancel = threading.Event()
    # a node that could not even connect fails the launch: then no node starts at all
    unreachable = bool(group.connect_failed())

    def may_start() -> bool:
        return not unreachable and not cancel.is_set()

    box: dict[str, GroupResult[stage_mod.Staged]] = {}
    driver = threading.Thread(  # the main thread stays free to take Ctrl-C
        target=lambda: box.update(r=_stage_map(record, group, store, may_start)),
        name="rollout", daemon=True)
    driver.start()
    try:
        driver.join()
    except KeyboardInterrupt:
        cancel.set()
        with sigint_deferred():
            driver.join()
            if "r" in box:
                store.save(_with_staged(record, box["r"]))
        raise
    results = box["r"]
    record = _with_staged(record, results)
    failed = failures(results)
    if not failed:
        _echo_staged(results, echo)
        record = record.with_status(JobStatus.RUNNING, "")
        store.save(record)
        return record
    started = [k for k, v in results.items()
               if isinstance(v, stage_mod.Staged) and v.pids is not None]
    left: dict[str, BaseException] = {}
    if started:
        with sigint_deferred():
            left = failures(stop_everywhere(record, group, only=started))
    what = "staging or start" if started else "staging"
    record = record.with_status(JobStatus.FAILED, f"{what} failed: {describe(failed)}")
    store.save(record.replace(cleaned=not left))
    raise JobError(f"{what} failed on {len(failed)} node(s), "
                   + (f"job {record.job_id} stopped everywhere" if started else
                      "nothing started") + f": {describe(failed)}")


def start_over_ssh(record: JobRecord, group: NodeGroup, store: JobStore, resume: bool
                   ) -> JobRecord:
    """`launch.sh start [resume]` on every node in parallel; any failure stops them all.

    Raises:
        JobError: a node failed to start (the job was stopped everywhere, recorded FAILED).
    """
    by_name = {n.name: n for n in record.nodes}

    def start_one(t: Transport) -> dict[str, int]:
        cmd = start_command(shlex.quote(by_name[t.node.name].job_dir), resume)
        res = t.run(cmd, check=False, timeout=START_TIMEOUT)
        return read_start(t.node.name, res.exit_code, res.stdout, res.stderr)

    started_pids = group.map(start_one, [n.name for n in record.nodes])
    failed = failures(started_pids)
    nodes = tuple(dataclasses.replace(n, pids=pids) if isinstance(
        pids := started_pids.get(n.name), dict) else n for n in record.nodes)
    record = record.replace(nodes=nodes)
    if failed:
        with sigint_deferred():
            left = failures(stop_everywhere(record, group))
        record = record.with_status(JobStatus.FAILED, f"start failed: {describe(failed)}")
        record = record.replace(cleaned=not left)
        store.save(record)
        raise JobError(f"start failed on {len(failed)} node(s), job {record.job_id} stopped "
                       f"everywhere: {describe(failed)}")
    record = record.with_status(JobStatus.RUNNING, "")
    store.save(record)
    return record
