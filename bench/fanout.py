"""Fan-out and bulk-transfer benchmark against OpenSSH on real test hosts (issue #4).

    python bench/fanout.py                      # brings up 32 test hosts, measures, tears down
    python bench/fanout.py --repeats 5 --bulk-mib 512

Needs root (network-namespace test hosts, tests/testhosts.sh). Everything is measured in this
run and printed as ratios against the OpenSSH reference measured right beside it:

- cold, N = 8 and 32: connect + `hostname` + close on all N hosts. orchestrate's fan-out
  (NodeGroup.run) vs N parallel `ssh` processes vs a sequential `ssh` loop.
- warm: 10 more rounds of `hostname` on open connections. orchestrate (same transports) vs
  N parallel `ssh` through ControlMaster multiplexing vs a sequential multiplexed loop.
- bulk: `get` of a 512 MiB file (verified: size + sha256, atomic) vs plain `scp`, and the
  paramiko SFTP fallback once (why OpenSSH streaming is the default).

OpenSSH uses the test hosts' ssh_config (curve25519 key exchange: the default post-quantum
exchange costs ~4x more CPU on 2 cores, see NOTES.md). Goals (issue #4): cold fan-out at 32
hosts <= 1.0x parallel OpenSSH, warm round at 32 hosts < 0.25 s, bulk get >= 0.9x scp.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.config.inventory import Inventory, load_inventory  # noqa: E402
from orchestrator.remote.group import NodeGroup  # noqa: E402

SCRIPT = REPO / "tests" / "testhosts.sh"
WARM_ROUNDS = 10


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ssh_base(state: Path) -> list[str]:
    return ["ssh", "-F", str(state / "ssh_config")]


def parallel_ssh(state: Path, names: list[str], extra: list[str]) -> None:
    procs = [subprocess.Popen([*ssh_base(state), *extra, n, "hostname"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL) for n in names]
    codes = [p.wait() for p in procs]
    assert codes == [0] * len(names), codes


def sequential_ssh(state: Path, names: list[str], extra: list[str]) -> None:
    for n in names:
        subprocess.run([*ssh_base(state), *extra, n, "hostname"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def orchestrate_cold(inv: Inventory, n: int) -> None:
    with NodeGroup(inv, inv.nodes[:n]) as nodes:
        nodes.run("hostname").raise_on_failure()


def bench_fanout(inv: Inventory, state: Path, n: int, repeats: int) -> dict[str, float]:
    names = [node.name for node in inv.nodes[:n]]
    out: dict[str, float] = {}
    out["cold_orch"] = median_time(lambda: orchestrate_cold(inv, n), repeats)
    out["cold_par"] = median_time(lambda: parallel_ssh(state, names, []), repeats)
    out["cold_seq"] = median_time(lambda: sequential_ssh(state, names, []), max(1, repeats // 2))

    with NodeGroup(inv, inv.nodes[:n]) as nodes:
        nodes.run("hostname").raise_on_failure()  # connect
        rounds = [median_time(lambda: nodes.run("hostname").raise_on_failure(), 1)
                  for _ in range(WARM_ROUNDS)]
    out["warm_orch"] = statistics.median(rounds)

    mux_dir = Path(tempfile.mkdtemp(prefix="mux-", dir="/tmp"))
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={mux_dir}/%h", "-o",
           "ControlPersist=120"]
    try:
        parallel_ssh(state, names, mux)  # start the masters
        out["warm_par"] = statistics.median(
            median_time(lambda: parallel_ssh(state, names, mux), 1) for _ in range(WARM_ROUNDS))
        out["warm_seq"] = statistics.median(
            median_time(lambda: sequential_ssh(state, names, mux), 1) for _ in range(3))
    finally:
        for name in names:
            subprocess.run([*ssh_base(state), *mux, "-O", "exit", name], capture_output=True,
                           check=False)
        shutil.rmtree(mux_dir, ignore_errors=True)
    return out


def bench_bulk(inv: Inventory, state: Path, mib: int,
               repeats: int) -> tuple[float, float, float]:
    node = inv.nodes[0]
    remote = PurePosixPath(str(node.workdir)) / "bulk.bin"
    dest = Path(tempfile.mkdtemp(prefix="bulk-", dir="/tmp"))
    with NodeGroup(inv, [node]) as nodes:
        t = nodes.transport(node.name)
        t.run(f"head -c {mib}M /dev/urandom > {remote}")
        try:
            def ours() -> None:
                t.get(remote, dest / "ours.bin")

            def scp() -> None:
                subprocess.run(["scp", "-q", "-F", str(state / "ssh_config"),
                                f"{node.name}:{remote}", str(dest / "scp.bin")], check=True)

            ours()
            scp()  # warm the page cache for both
            t_ours, t_scp = [], []
            for _ in range(repeats):
                t_ours.append(median_time(ours, 1))
                t_scp.append(median_time(scp, 1))
            with NodeGroup(inv, [node], use_openssh=False) as only_paramiko:
                fallback = median_time(
                    lambda: only_paramiko.transport(node.name).get(remote, dest / "sftp.bin"), 1)
        finally:
            t.run(f"rm -f {remote}", check=False)
            shutil.rmtree(dest, ignore_errors=True)
    return statistics.median(t_ours), statistics.median(t_scp), fallback


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats per cold measurement")
    ap.add_argument("--bulk-mib", type=int, default=512, help="size of the bulk get file")
    ap.add_argument("--sizes", default="8,32", help="host counts, comma-separated")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    state = Path(tempfile.mkdtemp(prefix="oth-bench-"))
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "up", str(max(sizes)), "--state", str(state),
                               "--python", sys.executable], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"cannot bring up test hosts: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        inv = load_inventory(state / "inventory.yaml")
        print(f"# {max(sizes)} netns test hosts; medians; OpenSSH with the hosts' ssh_config "
              "(curve25519)")
        print(f"{'N':>3} {'phase':<5} {'orchestrate':>12} {'parallel ssh':>13} "
              f"{'sequential':>11} {'orch/par':>9} {'orch/seq':>9}")
        results = {}
        for n in sizes:
            r = bench_fanout(inv, state, n, args.repeats)
            results[n] = r
            for phase in ("cold", "warm"):
                o, p, s = r[f"{phase}_orch"], r[f"{phase}_par"], r[f"{phase}_seq"]
                print(f"{n:>3} {phase:<5} {o:>11.3f}s {p:>12.3f}s {s:>10.3f}s {o / p:>8.2f}x "
                      f"{o / s:>8.2f}x")
        ours, scp, sftp = bench_bulk(inv, state, args.bulk_mib, max(3, args.repeats // 2))
        mb = args.bulk_mib * 1.048576
        print(f"bulk get {args.bulk_mib} MiB: orchestrate {ours:.2f}s ({mb / ours:.0f} MB/s, "
              f"verified sha256) vs scp {scp:.2f}s ({mb / scp:.0f} MB/s): "
              f"{scp / ours:.2f}x scp throughput")
        print(f"  (paramiko SFTP fallback, used when OpenSSH is missing: {sftp:.2f}s, "
              f"{mb / sftp:.0f} MB/s, {scp / sftp:.2f}x scp; one run)")
        big = max(sizes)
        print("goals:")
        print(f"  cold fan-out at {big} hosts <= 1.0x parallel ssh: "
              f"{results[big]['cold_orch'] / results[big]['cold_par']:.2f}x")
        print(f"  warm round at {big} hosts < 0.25 s: {results[big]['warm_orch']:.3f} s")
        print(f"  bulk get >= 0.9x scp: {scp / ours:.2f}x")
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", "--state", str(state)], capture_output=True,
                       check=False)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
