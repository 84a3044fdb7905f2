"""What `orchestrate prune` runs on a node: which cached entries of a workdir go, and the bytes.

Standard library only: job/prune.py sends this file's text as `python -c` (the node's
inventory `python`), after the busy-node test and under the node's jobs/.lock:

    python3 -c "$(cat prune_node.py)" dry|yes GRACE_MIN KEEP KNOWN DROP [LEFTOVER...]
    # KEEP, KNOWN: job ids joined by ","; DROP: "id" or "id+output" joined by ","

It prints one JSON object (the node-tool protocol): the entries it would remove (`dry`) or
removed (`yes`), each `[kind, name, bytes]`, and what it refused. The rule, in the workdir:
- `jobs/<id>/` is in use when its id is KEEP or not KNOWN (a job this machine has no record
  of is never judged); DROP ones go unless they hold checkpoint files and are not marked
  `+output` (then the folder stays, but like any other job's it keeps nothing cached);
- `trees/<64 hex>` (a tree) and `trees/job-<64 hex>` (a job skeleton) stay when a kept job
  folder holds every one of its files as the same inode at the same path (under the folder or
  one of its sub-folders: a tree is hard-linked in as code/, data/, a skeleton as the folder);
- `blobs/<64 hex>` stays when its inode is in a kept job folder or a tree that stays;
- anything changed or linked (mtime or ctime, the entry or anything under it) within
  GRACE_MIN minutes stays: a stage in progress may be using it;
- LEFTOVER paths (the stagers' temp names the shell found by stage_first's rule) go.
Other names are not ours and are never touched; symlinks are never followed (an entry that
is one is left alone); removal is `shutil.rmtree` (which does not follow symlinks) or unlink.
Bytes are file data that is actually freed: a file still hard-linked from anything that
stays (e.g. an old job folder kept without --job-folders) frees nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

KEY = re.compile(r"[0-9a-f]{64}\Z")
SKELETON = re.compile(r"job-[0-9a-f]{64}\Z")
CKPT_DIRS = ("output/checkpoint", "output/strategy")  # user data: --include-output
Inode = tuple[int, int]


def real_dir(path: str) -> bool:
    """A directory that is not a symlink."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to root, lstat) of root ("") and everything under it; never follows a
    symlink (a linked folder is one entry)."""
    try:
        st = os.lstat(root)
    except OSError:
        return
    yield "", st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as it:
                found = [(os.path.join(rel, e.name), e.stat(follow_symlinks=False)) for e in it]
        except OSError:
            continue
        for sub, sst in sorted(found):
            yield sub, sst
            if stat.S_ISDIR(sst.st_mode):
                stack.append(sub)


def files(root: str) -> dict[str, Inode]:
    """Regular files under `root`: relative path -> (device, inode)."""
    return {rel: (st.st_dev, st.st_ino) for rel, st in walk(root) if stat.S_ISREG(st.st_mode)}


def newest_change(root: str) -> float:
    """The latest mtime or ctime of `root` and anything under it (linking a file changes its
    ctime, so a tree a stage just linked from is recent)."""
    return max((max(st.st_mtime, st.st_ctime) for _, st in walk(root)), default=0.0)


def holds(folder: str, entry: dict[str, Inode]) -> bool:
    """Whether `folder` or one of its sub-folders holds every file of `entry` as the same inode
    at the same relative path (a tree hard-linked into a job folder as code/, a skeleton as
    the job folder itself)."""
    if not entry:
        return True  # an empty tree: nothing to tell it by; kept
    first, ident = min(entry.items())
    roots = [folder] + sorted(os.path.join(folder, d) for d in _names(folder)
                              if real_dir(os.path.join(folder, d)))
    for root in roots:
        if _same(os.path.join(root, first), ident) and all(
                _same(os.path.join(root, rel), i) for rel, i in entry.items()):
            return True
    return False


def _same(path: str, ident: Inode) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


def _names(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def checkpoint_files(job_dir: str) -> int:
    """Regular files under the job folder's checkpoint and strategy folders."""
    return sum(len(files(os.path.join(job_dir, d))) for d in CKPT_DIRS)


def freed_bytes(paths: Sequence[str]) -> list[int]:
    """Per path, the bytes of file data removing all of `paths` frees (an inode counts once,
    for the first path holding it, and only when every one of its links is among them)."""
    seen: dict[Inode, list[int]] = {}  # inode -> [links seen, nlink, size, first path index]
    for i, path in enumerate(paths):
        for _, st in walk(path):
            if stat.S_ISREG(st.st_mode):
                e = seen.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size, i])
                e[0] += 1
    out = [0] * len(paths)
    for count, nlink, size, i in seen.values():
        if count >= nlink:
            out[i] += size
    return out


def remove(path: str, rename_first: bool = False) -> None:
    """rmtree a real folder (symlinks inside are unlinked, never followed), else unlink.

    `rename_first` (cached trees, skeletons, prepared data): the folder is first renamed to a
    stager's temp name (`.NAME.partial-prunePID`), so a stage that `cp -al`s it at that
    moment either copied all of it or fails on a missing path, never gets a half-removed
    one; an interrupted prune leaves a leftover that stage_first's rule removes later.
    """
    if not real_dir(path):
        os.unlink(path)
        return
    if rename_first:
        head, name = os.path.split(path)
        away = os.path.join(head, f".{name}.partial-prune{os.getpid()}")
        os.rename(path, away)
        path = away
    shutil.rmtree(path)


@dataclass
class Plan:
    """What goes from a workdir: `entries` [kind, absolute path, bytes freed]."""

    entries: list[list[Any]] = field(default_factory=list)
    refused: list[list[str]] = field(default_factory=list)  # [job id, why it stays]
    recent: int = 0  # entries left because of the grace period
    unknown_jobs: list[str] = field(default_factory=list)  # job folders without a record


def plan(workdir: str, grace_min: float, keep: set[str], known: set[str],
         drop: dict[str, bool], leftovers: Sequence[str]) -> Plan:
    """What goes from `workdir` (see the module docstring)."""
    cutoff = time.time() - grace_min * 60
    jobs_dir, trees_dir, blobs_dir = (os.path.join(workdir, d) for d in ("jobs", "trees", "blobs"))
    entries: list[list[Any]] = []
    refused: list[list[str]] = []
    kept_jobs, unknown = [], []
    for name in _names(jobs_dir):
        path = os.path.join(jobs_dir, name)
        if name.startswith(".") or not real_dir(path):
            continue  # job ids never start with "."
        if name in drop:
            n = checkpoint_files(path)
            if n and not drop[name]:
                refused.append([name, f"holds {n} checkpoint/strategy file(s) and was not "
                                      "collected (collect-ckpt, or --include-output)"])
            else:
                entries.append(["job", path, 0])
        elif name in keep or name not in known:
            kept_jobs.append(path)
            if name not in known:
                unknown.append(name)
    recent = 0
    staying: list[str] = list(kept_jobs)
    for name in _names(trees_dir):
        path = os.path.join(trees_dir, name)
        kind = "tree" if KEY.match(name) else "skeleton" if SKELETON.match(name) else None
        if kind is None or not real_dir(path):
            continue  # not ours (dot names are leftovers: the shell's rule)
        mine = files(path)
        if any(holds(j, mine) for j in kept_jobs):
            staying.append(path)
        elif newest_change(path) >= cutoff:
            staying.append(path)
            recent += 1
        else:
            entries.append([kind, path, 0])
    inodes = {i for s in staying for i in files(s).values()}
    for name in _names(blobs_dir):
        path = os.path.join(blobs_dir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not KEY.match(name) or not stat.S_ISREG(st.st_mode) \
                or (st.st_dev, st.st_ino) in inodes:
            continue
        if max(st.st_mtime, st.st_ctime) >= cutoff:
            recent += 1
        else:
            entries.append(["blob", path, 0])
    for path in leftovers:
        if os.path.dirname(path) in (blobs_dir, trees_dir):
            entries.append(["leftover", path, 0])
    sizes = freed_bytes([str(e[1]) for e in entries])
    for i, e in enumerate(entries):
        e[2] = sizes[i]
    return Plan(entries, refused, recent, unknown)


def _ids(text: str) -> list[str]:
    """Job ids from a ","-joined argument: plain names only (no "/", not "." or "..")."""
    return [x for x in text.split(",") if x and "/" not in x and x not in (".", "..")]


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run on the node: argv as in the module docstring; the answer as a dict."""
    mode, grace, keep, known, drop_arg, *leftovers = argv
    drop = {}
    for item in _ids(drop_arg):
        name, _, output = item.partition("+")
        drop[name] = output == "output"
    workdir = os.getcwd()  # the shell ran `cd -P WORKDIR`: a physical path
    done = plan(workdir, float(grace), set(_ids(keep)), set(_ids(known)), drop, leftovers)
    errors = []
    if mode == "yes":
        for kind, path, _ in done.entries:
            try:
                remove(path, rename_first=kind in ("tree", "skeleton"))
            except OSError as e:
                errors.append([path, e.strerror or str(e)])
    return dict(asdict(done), workdir=workdir, removed=mode == "yes", errors=errors)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
