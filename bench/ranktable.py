"""Rank tables for 1024 nodes x 8 devices: our generate + merge + validate vs a file-based merge.

    python bench/ranktable.py [--nodes 1024] [--repeat 5]

Ours (timed together, median of --repeat runs): build the merged and all per-server tables from
the inventory and device IPs, merge the per-server tables again (as `ranktable merge` would),
validate the merged table (`check.validate_table`: every rule of `ranktable check`, on the
table before it is written), and write it atomically.
Reference, measured in the same run: the merge the way merge_hccl.py does it — 1024 per-server
JSON files in a temp folder (written first, untimed: hccl_tools makes them on each server),
then load each in glob order, renumber ranks, dump the merged file.
Also printed, same operation as the reference: our merge alone (per-server tables already in
memory, as `ranktable` has them: merge + dump + write), and `ranktable merge` from the same
1024 files (read, fully validate each, merge, dump, write).
Goals: issue #3, ours under 0.2 s and faster than the reference; issue #17 item 5, the whole
pipeline >= 3x faster than the reference (ratio <= 0.33) and `ranktable merge` no slower.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config.inventory import parse_inventory  # noqa: E402
from orchestrator.hccl.check import parse_tables, validate_table  # noqa: E402
from orchestrator.hccl.ranktable import (  # noqa: E402
    build_tables,
    merge_tables,
    per_server_filename,
    write_text_atomic,
)


def make_inventory(nodes: int):
    hosts = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(nodes)]
    inv = parse_inventory("defaults: {devices: 8}\nhosts: [" + ", ".join(hosts) + "]\n")
    ips = {n.name: {d: f"192.{100 + d}.{i // 256}.{i % 256}" for d in range(8)}
           for i, n in enumerate(inv.nodes)}
    return inv, ips


def ours(inv, ips, out: Path) -> int:
    merged, per_server = build_tables(inv, ips)
    again = merge_tables(per_server)
    problems = validate_table(again)
    assert not problems and again == merged, problems[:3]
    write_text_atomic(out, merged.dumps())
    return merged.world_size


def ours_merge_in_memory(per_server, out: Path) -> int:
    merged = merge_tables(per_server)
    write_text_atomic(out, merged.dumps())
    return merged.world_size


def ours_merge_files(folder: str, out: Path) -> int:
    paths = sorted(glob.glob(os.path.join(folder, "hccl_*p_*.json")))
    texts = []
    for path in paths:
        with open(path) as f:
            texts.append(f.read())
    merged = merge_tables(parse_tables(texts, paths), paths)
    write_text_atomic(out, merged.dumps())
    return merged.world_size


def reference_merge(folder: str, out: str) -> int:
    """merge_hccl.py's way: load the files in argument (glob) order, renumber, dump."""
    merged: dict = {"version": "1.0", "server_count": "0", "server_list": []}
    rank = 0
    for path in sorted(glob.glob(os.path.join(folder, "hccl_*p_*.json"))):
        with open(path) as f:
            table = json.load(f)
        for server in table["server_list"]:
            for device in server["device"]:
                device["rank_id"] = str(rank)
                rank += 1
            merged["server_list"].append(server)
    merged["server_count"] = str(len(merged["server_list"]))
    merged["status"] = "completed"
    with open(out, "w") as f:
        json.dump(merged, f, indent=4)
    return rank


def median_time(fn, repeat: int) -> tuple[tuple[float, float], object]:
    """((median wall seconds, median CPU seconds of this process), last result)."""
    walls, cpus = [], []
    result = None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return (statistics.median(walls), statistics.median(cpus)), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    inv, ips = make_inventory(args.nodes)
    t_inv = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "per_server")
        os.mkdir(folder)
        _merged, per_server = build_tables(inv, ips)
        for t in per_server:
            with open(os.path.join(folder, per_server_filename(t)), "w") as f:
                f.write(t.dumps())
        t_ours, ranks = median_time(lambda: ours(inv, ips, Path(tmp) / "ours.json"), args.repeat)
        t_ref, ref_ranks = median_time(
            lambda: reference_merge(folder, os.path.join(tmp, "ref.json")), args.repeat)
        t_mem, _ = median_time(
            lambda: ours_merge_in_memory(per_server, Path(tmp) / "mem.json"), args.repeat)
        t_files, _ = median_time(
            lambda: ours_merge_files(folder, Path(tmp) / "files.json"), args.repeat)
        same = ranks == ref_ranks
        for name in ("mem.json", "files.json"):
            same = same and Path(tmp, name).read_text() == Path(tmp, "ours.json").read_text()
        with open(os.path.join(tmp, "ours.json")) as a, open(os.path.join(tmp, "ref.json")) as b:
            ours_doc, ref_doc = json.load(a), json.load(b)
        # the reference follows glob (file name) order, which here equals server_id order
        same = same and ours_doc == ref_doc

    print(f"nodes {args.nodes} x 8 devices = {ranks} ranks; median of {args.repeat} runs; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("times as wall s / CPU s (CPU time of this process is the fairer figure on a busy "
          "machine)")
    print(f"inventory parse (not in either timing): {t_inv:.3f} s wall")
    print(f"ours: generate + per-server + merge + validate + write: {t_ours[0]:.3f} / "
          f"{t_ours[1]:.3f} s (goal < 0.2 s wall: {'met' if t_ours[0] < 0.2 else 'NOT met'})")
    print(f"reference: merge_hccl.py-style load {args.nodes} files + renumber + dump: "
          f"{t_ref[0]:.3f} / {t_ref[1]:.3f} s")
    for label, t in (("whole pipeline", t_ours),
                     ("merge alone, tables in memory", t_mem),
                     ("`ranktable merge` of the 1024 files, validating each", t_files)):
        wall, cpu = t[0] / t_ref[0], t[1] / t_ref[1]
        verdict = "faster" if max(wall, cpu) < 1 else "SLOWER" if min(wall, cpu) > 1 else "mixed"
        print(f"ratio ours / reference, {label}: wall {wall:.2f}x, CPU {cpu:.2f}x ({verdict})")
    goal = t_ours[1] / t_ref[1] <= 1 / 3 and t_files[1] / t_ref[1] <= 1
    print(f"goal #17.5 (CPU: whole pipeline >= 3x faster, `ranktable merge` no slower): "
          f"{'met' if goal else 'NOT met'}")
    print(f"identical merged JSON (all four): {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
