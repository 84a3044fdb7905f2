"""`orchestrate prune`: garbage collection of what `up` caches, on the nodes and locally.

    sel = select(store.all(), keep=3, pinned=(), drop_jobs=False, may_drop_output=collected)
    report = prune_on(transport, sel, yes=False, grace_min=60)     # one node: NodeReport
    local = prune_local(store.data_cache, store.all(), sel, yes=False, grace_min=60)

Kept jobs (select): every job that may still run (state.needs_stop: not ended, or ended
without every node confirming the stop), the newest `keep` other ended jobs, and the pinned
ones. On a node (prune_node.py, sent as `python -c`; its docstring has the rule) the cached
trees, job skeletons and blobs no kept job folder holds go, and the stagers' leftovers that
stage_first's rule finds (the same globs and age as a stage's own clean-up, with the grace
period as the age); with `drop_jobs`, the job folders of the other ended jobs too, unless
they hold checkpoints that were not collected (`may_drop_output`). A node where a job is
running (stage_first.busy_lines, the staging command's own test) is left alone, and the
whole command holds the node's jobs/.lock, so no job starts there meanwhile. Locally, the
prepared-data cache entries (<state>/data/<key>/) no kept job uses go.
A node's answer is read like any node tool's (bounded, depth-limited JSON; names scrubbed
where printed); it never names a local path.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import JobError
from orchestrator.job import prune_node
from orchestrator.job.render import proc_alive_fn, shell_path
from orchestrator.job.stage_first import busy_lines, cleanup_leftovers_lines, workdir_vars
from orchestrator.job.state import JobRecord, needs_stop
from orchestrator.remote.transport import Transport, tool_answer
from orchestrator.untrusted import lines, shown

KINDS = ("job", "skeleton", "tree", "blob", "leftover", "data")
MAX_ENTRIES = 1_000_000  # entries read from one node's answer
TIMEOUT_S = 1800.0  # one node's prune (removing job folders with checkpoints takes a while)


@dataclass(frozen=True)
class Selection:
    """Which jobs' files stay: `keep` ids, every id with a record (`known`; a job folder
    without one is never judged), and with --job-folders the folders to remove (`drop`: job id ->
    whether its checkpoints may go too)."""

    keep: frozenset[str]
    known: frozenset[str]
    drop: dict[str, bool] = field(default_factory=dict)


def select(records: Sequence[JobRecord], keep: int, pinned: Sequence[str] = (),
           drop_jobs: bool = False,
           may_drop_output: Callable[[str], bool] = lambda _job_id: False) -> Selection:
    """The kept jobs: those that may still run, the `keep` newest other ones, `pinned`.

    Raises:
        JobError: a pinned id without a record (a typo would otherwise keep nothing).
    """
    known = frozenset(r.job_id for r in records)
    for job_id in pinned:
        if job_id not in known:
            raise JobError(f"--keep-job {job_id}: no such job in the records "
                           f"(recent: {', '.join(sorted(known)[-5:]) or 'none'})")
    live = {r.job_id for r in records if needs_stop(r)}
    ended = sorted((r for r in records if r.job_id not in live),
                   key=lambda r: r.created_at, reverse=True)
    kept = frozenset(live | {r.job_id for r in ended[:keep]} | set(pinned))
    drop = {r.job_id: may_drop_output(r.job_id) for r in ended
            if r.job_id not in kept} if drop_jobs else {}
    return Selection(keep=kept, known=known, drop=drop)


@dataclass(frozen=True)
class Entry:
    """One thing removed (or that would be): `name` relative to the workdir/cache folder."""

    kind: str  # one of KINDS
    name: str
    bytes: int  # file data freed (hard links counted: prune_node.freed_bytes)


@dataclass(frozen=True)
class Report:
    """One node's (or the local cache's) outcome."""

    where: str  # node name, or "local"
    folder: str  # the node's workdir (physical path) or the local cache folder
    entries: tuple[Entry, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (job id, why its folder stays)
    recent: int = 0  # left because changed within the grace period
    unknown_jobs: tuple[str, ...] = ()  # job folders without a record here: left alone
    errors: tuple[tuple[str, str], ...] = ()  # (entry, why it could not be removed)
    busy: str | None = None  # the running job that kept prune away from the node
    absent: bool = False  # no workdir on the node: nothing was ever staged there
    removed: bool = False  # --yes: the entries are gone (else: would go)

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.entries)


def node_command(workdir: str, python: str, sel: Selection, yes: bool, grace_min: int) -> str:
    """The node's bash command: under jobs/.lock, busy test, leftovers by the stagers' rule,
    then prune_node.py (`python -c`) with the selection."""
    wd = shell_path(workdir)
    drop = ",".join(f"{j}+output" if out else j for j, out in sorted(sel.drop.items()))
    run = shlex.join([python, "-c", Path(prune_node.__file__).read_text(),
                      "yes" if yes else "dry", str(int(grace_min)), ",".join(sorted(sel.keep)),
                      ",".join(sorted(sel.known)), drop])
    return "\n".join([
        "set -eu", proc_alive_fn(),
        f"[ -d {wd} ] || {{ echo absent; exit 0; }}",
        workdir_vars(wd),
        'if [ -d jobs ]; then exec 9>>jobs/.lock; flock -w 30 9 || '
        '{ echo "error: timed out waiting for $W/jobs/.lock" >&2; exit 1; }; fi',
        *busy_lines(None, 'echo "busy $o"; exit 0'),
        "set --",
        *cleanup_leftovers_lines(int(grace_min), action='set -- "$@" "$x"'),
        f'{run} "$@"',
    ])


def prune_on(t: Transport, sel: Selection, yes: bool, grace_min: int) -> Report:
    """Run the prune on one node and read its answer.

    Raises:
        RemoteError: the command failed or answered nothing readable (naming the node).
    """
    node = t.node
    res = t.run(node_command(str(node.workdir), node.python, sel, yes, grace_min),
                check=False, timeout=TIMEOUT_S)
    first = (lines(res.stdout.strip())[:1] or [""])[0]
    if res.ok and first == "absent":
        return Report(node.name, str(node.workdir), absent=True)
    if res.ok and first.startswith("busy "):
        return Report(node.name, str(node.workdir), busy=shown(first[5:], 80))
    return read_answer(node.name, tool_answer(res, "prune"))


def read_answer(where: str, doc: dict[str, Any]) -> Report:
    """prune_node.main's answer as a Report: kinds checked, numbers [0-9] ints, paths shown
    relative to the workdir; anything malformed is dropped, never trusted."""
    workdir = doc.get("workdir")
    folder = workdir if isinstance(workdir, str) else ""
    entries = []
    for e in _list(doc.get("entries"))[:MAX_ENTRIES]:
        if (isinstance(e, list) and len(e) == 3 and e[0] in KINDS and isinstance(e[1], str)
                and type(e[2]) is int and e[2] >= 0):
            entries.append(Entry(e[0], _relative(e[1], folder), e[2]))
    recent = doc.get("recent")
    return Report(where, folder, tuple(entries), _pairs(doc.get("refused")),
                  recent if type(recent) is int else 0,
                  tuple(j for j in _list(doc.get("unknown_jobs")) if isinstance(j, str)),
                  _pairs(doc.get("errors")), removed=doc.get("removed") is True)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in (p for p in _list(value) if isinstance(p, list)
                                     and len(p) == 2) if isinstance(a, str) and isinstance(b, str))


def _relative(path: str, folder: str) -> str:
    return path[len(folder) + 1:] if folder and path.startswith(folder + "/") else path


def prune_local(cache: Path, records: Sequence[JobRecord], sel: Selection, yes: bool,
                grace_min: int) -> Report:
    """The local prepared-data cache (<state>/data/<key>/): entries no kept job's `local_data`
    (<cache>/<key>/<stem>) names go, unless changed within the grace period (an `up` may be
    preparing or staging it right now); `.<key>.partial-*` folders of interrupted
    preparations older than that."""
    if not cache.is_dir():
        return Report("local cache", str(cache), absent=True)
    # a cached dataset is <cache>/<key>/<stem> (dataset.cached_prepare): the key says which
    # entry a record uses, however the state folder was spelled (relative, moved)
    used = {Path(r.local_data).parent.name for r in records if r.job_id in sel.keep
            and r.local_data}
    cutoff = time.time() - grace_min * 60
    entries, recent = [], 0
    for name in sorted(os.listdir(cache)):
        path = str(cache / name)
        partial = name.startswith(".") and ".partial-" in name
        if not (partial or prune_node.KEY.match(name)) or not prune_node.real_dir(path):
            continue
        if name in used:
            continue
        if prune_node.newest_change(path) >= cutoff:
            recent += 1
            continue
        entries.append(("leftover" if partial else "data", path))
    sizes = prune_node.freed_bytes([p for _, p in entries])
    errors = []
    if yes:
        for kind, path in entries:
            try:
                prune_node.remove(path, rename_first=kind == "data")
            except OSError as e:
                errors.append((path, e.strerror or str(e)))
    return Report("local cache", str(cache),
                  tuple(Entry(k, _relative(p, str(cache)), s)
                        for (k, p), s in zip(entries, sizes, strict=True)),
                  recent=recent, errors=tuple(errors), removed=yes)
