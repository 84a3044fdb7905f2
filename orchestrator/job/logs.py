"""`orchestrate logs`: the ranks' stdout.log, prefixed `[node/rank]`; tail, follow, fetch.

    for line in tail_logs(record, group, Selection(), tail=20): print(line)
    fetch_logs(record, inv, Path("logs"))       # logs/<node>/rank_<r>.log (+ plog.tar.gz)
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import JobError
from orchestrator.job.state import JobRecord, NodeRecord
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport
from orchestrator.untrusted import scrub, to_int


@dataclass(frozen=True)
class Selection:
    """Which slots to show: a rank, a node, or everything."""

    rank: int | None = None
    node: str | None = None

    def slots(self, n: NodeRecord, mode: str, first: bool) -> list[str]:
        if self.node is not None and self.node not in (n.name, n.host):
            return []
        ranks = [str(r) for r in n.ranks]
        if self.rank is not None:
            return [str(self.rank)] if self.rank in n.ranks else []
        if mode == "msrun" and first and self.node is not None:
            ranks.insert(0, "sched")
        return ranks


# bytes of one rank's log shown per --follow poll: 17 slots stay well under the per-command
# output cap (ORCHESTRATE_MAX_OUTPUT, 16 MiB; orchestrator/remote/output.py)
FOLLOW_CHUNK = 512 * 1024

def _selected(record: JobRecord, sel: Selection) -> list[tuple[NodeRecord, list[str]]]:
    out = []
    for i, n in enumerate(record.nodes):
        slots = sel.slots(n, record.mode, i == 0)
        if slots:
            out.append((n, slots))
    if not out:
        what = f"rank {sel.rank}" if sel.rank is not None else f"node {sel.node!r}"
        raise JobError(f"job {record.job_id} has no {what} "
                       f"(ranks 0-{record.world_size - 1}, nodes "
                       f"{', '.join(n.name for n in record.nodes)})")
    return out


def _chunk_command(job_dir: str, slots: Sequence[str], offsets: dict[str, int] | None,
                   tail: int, marker: str) -> str:
    """Print, per slot, a marker line with the log size, then the requested bytes/lines."""
    lines = []
    for s in slots:
        log = shlex.quote(f"{job_dir}/ranks/{s}/stdout.log")
        # The size is read first and only bytes below it are shown: no line is printed twice.
        lines.append(f"n=$(stat -c %s {log} 2>/dev/null || echo 0)")
        if offsets is None:
            lines.append(f'echo "{marker} {s} $n"')
            lines.append(f'head -c "$n" {log} 2>/dev/null | tail -n {int(tail)} || true')
        else:
            off = offsets.get(s, 0)
            lines.append(f'[ "$n" -ge {off} ] || n={off}')  # never step back (log rotated)
            lines.append(f'[ "$((n - {off}))" -le {FOLLOW_CHUNK} ] || '
                         f'n=$(({off} + {FOLLOW_CHUNK}))')
            lines.append(f'echo "{marker} {s} $n"')
            lines.append(f'tail -c +{off + 1} {log} 2>/dev/null | head -c "$((n - {off}))" '
                         "|| true")
    return "\n".join(lines)


def _parse_chunks(text: str, marker: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    slot: str | None = None
    size, buf = 0, []  # type: tuple[int, list[str]]
    for line in text.splitlines(keepends=True):
        if line.startswith(marker + " "):
            fields = line.split()
            if len(fields) != 3:  # not our marker line (a node may print anything)
                buf.append(line)
                continue
            if slot is not None:
                out[slot] = (size, "".join(buf))
            _, slot, size_text = fields
            size, buf = to_int(size_text) or 0, []
        else:
            buf.append(line)
    if slot is not None:
        out[slot] = (size, "".join(buf))
    return out


def tail_logs(record: JobRecord, group: NodeGroup, sel: Selection, tail: int = 20,
              follow: bool = False, interval: float = 2.0,
              on_error: Callable[[str], None] = print) -> Iterator[str]:
    """Yield `[node/rank] line` for the last `tail` lines, then new lines while `follow`."""
    chosen = _selected(record, sel)
    nodes = {n.name: (n, slots) for n, slots in chosen}
    offsets: dict[str, dict[str, int]] | None = None
    while True:
        marker = "@@orchestrate-" + secrets.token_hex(6)

        def one(t: Transport, marker: str = marker,
                offsets: dict[str, dict[str, int]] | None = offsets) -> dict[str, tuple[int, str]]:
            n, slots = nodes[t.node.name]
            offs = None if offsets is None else offsets.get(n.name, {})
            res = t.run(_chunk_command(n.job_dir, slots, offs, tail, marker), check=True,
                        timeout=60)
            return _parse_chunks(res.stdout, marker)

        results = group.map(one, list(nodes))
        new_offsets: dict[str, dict[str, int]] = {}
        for name, (_, slots) in nodes.items():
            res = results.get(name)
            if isinstance(res, BaseException):
                on_error(f"[{name}] unreachable: {res}")
                new_offsets[name] = (offsets or {}).get(name, {})
                continue
            assert res is not None
            new_offsets[name] = {}
            for s in slots:
                size, text = res.get(s, (0, ""))
                if follow and text and not text.endswith("\n"):
                    # a line still being written: show it whole on the next poll
                    keep, _, partial = text.rpartition("\n")
                    size -= len(partial.encode())
                    text = keep
                new_offsets[name][s] = size
                for line in text.splitlines():
                    yield f"[{name}/{s}] {scrub(line)}"
        offsets = new_offsets
        if not follow:
            return
        time.sleep(interval)


def fetch_logs(record: JobRecord, group: NodeGroup, dest: Path,
               sel: Selection = Selection(), warn: Callable[[str], None] = lambda _m: None,
               ) -> GroupResult[list[Path]]:
    """Download every selected rank's log into `dest/<node>/rank_<r>.log`, plus plog folders.

    MindSpore/Ascend plog folders (`~/ascend/log`) are packed on the node and saved as
    `dest/<node>/plog.tar.gz` when present. Nothing is written outside `dest/<node>/`: the
    local names are fixed, and a rank log that is a symlink on the node is not followed
    (skipped, `warn` names it).
    """
    chosen = dict((n.name, (n, slots)) for n, slots in _selected(record, sel))
    for i, n in enumerate(record.nodes):
        slots = chosen[n.name][1] if n.name in chosen else None
        if slots is not None and record.mode == "msrun" and i == 0 and "sched" not in slots:
            slots.insert(0, "sched")

    from orchestrator.backends import backend_for

    backend = backend_for(record)  # the downloads go through backend.fetch (ssh, slurm: SSH)

    def one(t: Transport) -> list[Path]:
        n, slots = chosen[t.node.name]
        folder = dest / n.name  # node names never contain "/" (inventory validation)
        folder.mkdir(parents=True, exist_ok=True)
        got = []
        listing = t.run(" ; ".join(
            f"if [ -L {(q := shlex.quote(f'{n.job_dir}/ranks/{s}/stdout.log'))} ]; then "
            f"echo link:{s}; elif [ -f {q} ]; then echo {s}; fi"
            for s in slots) + " ; true", check=True).stdout.split()
        for s in slots:
            if f"link:{s}" in listing:
                warn(f"[{n.name}] skipped {'scheduler' if s == 'sched' else 'rank ' + s}: "
                     f"{n.job_dir}/ranks/{s}/stdout.log is a symlink on the node (not followed)")
            if s not in listing:
                continue
            got.append(backend.fetch(record, group, n.name, f"ranks/{s}/stdout.log",
                                     folder / f"rank_{s}.log"))
        pack = shlex.quote(f"{n.job_dir}/plog.tar.gz")
        res = t.run(f'if [ -d "$HOME/ascend/log" ]; then tar -czf {pack} -C "$HOME/ascend" log '
                    f"&& echo packed; fi", check=False)
        if "packed" in res.stdout:
            got.append(backend.fetch(record, group, n.name, "plog.tar.gz",
                                     folder / "plog.tar.gz"))
        return got

    return group.map(one, [n.name for n in record.nodes if n.name in chosen])
