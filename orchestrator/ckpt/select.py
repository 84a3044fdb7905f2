"""Which checkpoint to collect: parse node listings, choose the step, plan what to fetch.

Pure logic, no network, for `orchestrate collect-ckpt` (orchestrator/ckpt/collect.py runs it):

- a rank's checkpoint of step N is `rank_<r>/bloom_rank_<r>-<N>.ckpt` with its manifest
  `bloom_rank_<r>-<N>.json` (step, rank, sha256, size, parallel layout, preset) beside it;
- the chosen step is the newest one complete on every rank (`choose_step`), or `--step N`;
- data-parallel replicas are fetched once (`plan_fetch`): in pure DP one rank holds
  everything; with model/pipeline parallelism the merged strategy says which ranks a
  transform needs; identical files (same sha256 and size) are fetched once in any case.

Every name that comes from a node is checked against a strict pattern before it becomes a
local path, so nothing a node says can write outside DEST.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrate_bloom.ckpt import layout as ck

from orchestrator.errors import CheckpointError
from orchestrator.untrusted import loads_json

SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Layout:
    """The job's parallel layout as the manifests record it."""

    data_parallel: int = 1
    model_parallel: int = 1
    pipeline_stage: int = 1

    @property
    def pure_dp(self) -> bool:
        return self.model_parallel == 1 and self.pipeline_stage == 1


@dataclass(frozen=True)
class RankCkpt:
    """One rank's checkpoint of one step, as listed on its node and described by its manifest."""

    node: str  # node name holding it
    rank: int
    step: int
    remote: PurePosixPath  # absolute path on the node
    size: int
    sha256: str
    layout: Layout
    preset: str | None
    model: str | None = None  # the manifest's model section as JSON (architecture)
    template: str = ""  # the prompt template the data was made with (model/prompts.py)

    @property
    def local_rel(self) -> PurePosixPath:
        """Where it lands under DEST."""
        return PurePosixPath(f"rank_{self.rank}") / self.remote.name


@dataclass(frozen=True)
class Strategy:
    """One rank's strategy file on its node."""

    node: str
    rank: int
    remote: PurePosixPath
    size: int

    @property
    def local_rel(self) -> PurePosixPath:
        return PurePosixPath("strategy") / self.remote.name


@dataclass(frozen=True)
class NodeListing:
    """What one node holds for the job: per rank, its complete checkpoints by step."""

    node: str
    job_dir: PurePosixPath
    ckpts: Mapping[int, Mapping[int, RankCkpt]]  # rank -> step -> checkpoint
    problems: Mapping[int, tuple[str, ...]]  # rank -> why some steps are unusable
    strategies: Mapping[int, Strategy]  # rank -> strategy file


MAX_PARALLEL = 1 << 16  # a node's manifest claiming more ranks than this is not believed


def _layout(doc: Mapping[str, Any]) -> Layout:
    raw = doc.get("parallel") or doc.get("layout") or {}
    if not isinstance(raw, Mapping):
        return Layout()

    def pick(*keys: str) -> int:
        for k in keys:
            if type(raw.get(k)) is int and 1 <= raw[k] <= MAX_PARALLEL:
                return int(raw[k])
        return 1

    return Layout(
        pick("data_parallel", "dp"), pick("model_parallel", "mp"), pick("pipeline_stage", "pp")
    )


def _preset(doc: Mapping[str, Any]) -> str | None:
    for key in ("preset", "config"):
        v = doc.get(key)
        if isinstance(v, str) and v:
            return v
        if isinstance(v, Mapping) and isinstance(v.get("preset"), str):
            return str(v["preset"])
    return None


def parse_manifest(text: str, where: str, rank: int, step: int) -> tuple[str, int, Any]:
    """(sha256, size, doc) from a manifest's text; CheckpointError naming `where` and key."""
    try:
        doc = loads_json(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    for key, want in (("step", step), ("rank", rank)):
        if doc.get(key) != want:
            raise CheckpointError(f"{where}: {key} is {doc.get(key)!r}, file name says {want}")
    sha = doc.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.match(sha):
        raise CheckpointError(f"{where}: sha256 is {sha!r}, expected 64 hex digits")
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointError(f"{where}: size is {size!r}, expected a byte count")
    return sha, size, doc


def parse_listing(node: str, raw: Mapping[str, Any], ranks: Iterable[int]) -> NodeListing:
    """Turn a node's raw listing (ckpt_nodes.LIST_SCRIPT output) into checked records.

    Unsafe names (not matching the patterns), symlinks and non-regular files are reported as
    problems of the rank and never become candidates. A listing of the wrong shape (a node
    decides what it prints) is one CheckpointError naming the node.
    """
    try:
        return _parse_listing(node, raw, ranks)
    except (AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"[{node}] malformed checkpoint listing: "
                              f"{type(e).__name__}: {str(e)[:120]}") from None


def _parse_listing(node: str, raw: Mapping[str, Any], ranks: Iterable[int]) -> NodeListing:
    job_dir = PurePosixPath(str(raw.get("job_dir", "")))
    if not job_dir.is_absolute():
        raise CheckpointError(f"[{node}] listing has no absolute job_dir: {job_dir}")
    ckpts: dict[int, dict[int, RankCkpt]] = {}
    problems: dict[int, tuple[str, ...]] = {}
    for rank in ranks:
        entry = raw.get("ranks", {}).get(str(rank), {})
        found, bad = _rank_ckpts(node, job_dir, rank, entry)
        ckpts[rank] = found
        if bad:
            problems[rank] = tuple(bad)
    strategies = {}
    for name, e in sorted(raw.get("strategy", {}).items()):
        m = ck.STRATEGY_RE.match(name)
        if m and e.get("kind") == "file":
            r = int(m.group(1))
            path = ck.strategy_dir(job_dir / "output") / name
            strategies[r] = Strategy(node, r, path, int(e.get("size", 0)))
    return NodeListing(node, job_dir, ckpts, problems, strategies)


def _rank_ckpts(
    node: str, job_dir: PurePosixPath, rank: int, entry: Mapping[str, Any]
) -> tuple[dict[int, RankCkpt], list[str]]:
    folder = ck.rank_dir(job_dir / "output", rank)
    if entry.get("kind") != "dir":
        return {}, [f"{folder} is {entry.get('kind', 'missing')}"]
    files: Mapping[str, Any] = entry.get("files", {})
    found: dict[int, RankCkpt] = {}
    bad: list[str] = []
    for name, e in files.items():
        m = ck.CKPT_RE.match(name)
        if not m:
            if not ck.MANIFEST_RE.match(name) and not name.startswith("."):
                bad.append(f"ignored unexpected name {name!r}")
            continue
        r, step = int(m.group(1)), int(m.group(2))
        if r != rank:
            bad.append(f"{name}: belongs to rank {r}, found in rank_{rank}")
            continue
        if e.get("kind") != "file":
            bad.append(f"step {step}: {name} is a {e.get('kind')}, refused")
            continue
        mname = ck.manifest_name(rank, step)
        man = files.get(mname)
        if man is None or "text" not in man or man.get("kind") != "file":
            bad.append(f"step {step}: manifest {mname} missing")
            continue
        where = f"[{node}] {folder / mname}"
        try:
            sha, size, doc = parse_manifest(man["text"], where, rank, step)
        except CheckpointError as exc:
            bad.append(f"step {step}: {exc}")
            continue
        if size != e.get("size"):
            bad.append(f"step {step}: {name} has {e.get('size')} bytes, manifest says {size}")
            continue
        model = doc.get("model")
        model_json = json.dumps(model, sort_keys=True) if isinstance(model, dict) else None
        template = doc.get("template")
        found[step] = RankCkpt(
            node, rank, step, folder / name, size, sha, _layout(doc), _preset(doc), model_json,
            template if isinstance(template, str) else "",
        )
    return found, bad


def complete_steps(listings: Sequence[NodeListing]) -> set[int]:
    """Steps present (with a manifest of the right size) on every rank."""
    per_rank = [set(s) for lst in listings for s in lst.ckpts.values()]
    return set.intersection(*per_rank) if per_rank else set()


def missing_report(listings: Sequence[NodeListing], steps: Iterable[int]) -> str:
    """Which ranks lack which of `steps`, grouped by node, plus the reasons seen."""
    want = sorted(set(steps))
    lines = []
    for lst in listings:
        for rank, have in sorted(lst.ckpts.items()):
            lacking = [s for s in want if s not in have]
            if lacking or not have:
                why = "; ".join(lst.problems.get(rank, ()))
                lacks = ", ".join(map(str, lacking)) if want else "any checkpoint"
                lines.append(
                    f"rank {rank} on {lst.node} lacks step {lacks}" + (f" ({why})" if why else "")
                )
    return "\n  ".join(lines)


def choose_step(listings: Sequence[NodeListing], step: int | None = None) -> int:
    """The newest step complete on every rank, or `step` if given and complete."""
    common = complete_steps(listings)
    every = {s for lst in listings for have in lst.ckpts.values() for s in have}
    if step is not None:
        if step in common:
            return step
        raise CheckpointError(
            f"step {step} is not complete on every rank:\n  "
            + missing_report(listings, [step])
            + (f"\ncomplete steps: {sorted(common)}" if common else "")
        )
    newest = ck.newest_common(s for lst in listings for s in lst.ckpts.values())
    if newest is not None:
        return newest
    raise CheckpointError(
        "no step is complete on every rank:\n  " + missing_report(listings, every or [])
    )


def rank_ckpts(listings: Sequence[NodeListing], step: int) -> dict[int, RankCkpt]:
    """Every rank's checkpoint of `step`."""
    return {r: have[step] for lst in listings for r, have in lst.ckpts.items() if step in have}


def job_layout(ckpts: Mapping[int, RankCkpt]) -> tuple[Layout, str | None]:
    """The layout and preset all manifests agree on; CheckpointError naming a disagreement."""
    first = ckpts[min(ckpts)]
    for c in ckpts.values():
        if c.model != first.model:
            raise CheckpointError(
                f"rank {c.rank} on {c.node}: manifest's model section differs from rank "
                f"{first.rank}'s"
            )
        if c.layout != first.layout or c.preset != first.preset:
            raise CheckpointError(
                f"rank {c.rank} on {c.node}: manifest says {c.layout}, preset {c.preset}; "
                f"rank {first.rank} says {first.layout}, preset {first.preset}"
            )
    return first.layout, first.preset


@dataclass(frozen=True)
class FetchPlan:
    """What to download and what is a local copy of something downloaded."""

    fetch: tuple[RankCkpt, ...]  # one per distinct file, lowest rank first
    copies: Mapping[int, int]  # rank -> rank whose identical file it is (fetched once)
    skipped: tuple[int, ...]  # replica ranks not needed at all
    saved_bytes: int  # bytes not downloaded thanks to dedupe


def plan_fetch(ckpts: Mapping[int, RankCkpt], needed: Iterable[int] | None) -> FetchPlan:
    """Fetch only the ranks `needed` (None: pure DP, one replica), identical files once."""
    if needed is None:
        keep = [min(ckpts)]
    else:
        keep = sorted(set(needed))
        unknown = [r for r in keep if r not in ckpts]
        if unknown:
            raise CheckpointError(f"the transform needs ranks {unknown}, which have no checkpoint")
    fetch: list[RankCkpt] = []
    copies: dict[int, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for r in keep:
        c = ckpts[r]
        key = (c.sha256, c.size)
        if key in seen:
            copies[r] = seen[key]
        else:
            seen[key] = r
            fetch.append(c)
    skipped = tuple(r for r in sorted(ckpts) if r not in keep)
    saved = sum(ckpts[r].size for r in skipped) + sum(ckpts[r].size for r in copies)
    return FetchPlan(tuple(fetch), copies, skipped, saved)


def safe_local_path(dest: Path, rel: PurePosixPath) -> Path:
    """`dest/rel`, refusing anything that would land outside `dest` or pass a symlink."""
    if rel.is_absolute() or any(p in ("..", "", ".") for p in rel.parts):
        raise CheckpointError(f"refusing remote name {str(rel)!r}: it would escape {dest}")
    base = dest.resolve()
    path = base
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise CheckpointError(f"refusing to write through symlink {path}")
    if base not in path.resolve().parents:
        raise CheckpointError(f"refusing remote name {str(rel)!r}: it would escape {dest}")
    return path
