"""Benchmark `collect-ckpt`: gather throughput vs parallel scp, and merge+transform time.

    python bench/collect.py [--mib 256] [--hosts 4] [--transform-gib 1.0] [--skip-transform]
        [--skip-gather]

Part 1 brings up test hosts (tests/testhosts.sh, a fresh unique state dir /tmp/oth-bench-*,
so it never clashes with test sessions or another run), writes one random file of --mib MiB
per host, then downloads the files into a tmpfs, in the same run, with collect-ckpt's
fetcher (ssh + cat, sha256 while streaming, resumable) and
with parallel `scp -F ssh_config` (the reference), interleaved, best of 2 each. Prints both
rates and the ratio (goal >= 0.9x), then one run of the paramiko SFTP fallback (no OpenSSH
client, or a ProxyJump node). Part 2 writes a synthetic DP1 x MP2 x PP2 Bloom-shaped
checkpoint of about --transform-gib GiB (fp32) with real strategy files, then times
strip + merge-strategies + transform via `python -m orchestrate_bloom.ckpt.tools`, checks the result
equals the unsharded parameters, and times the load check into BloomLMHeadModel; each step's
peak host memory is printed (`--skip-gather`: part 2 only). Tears everything down at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.ckpt import fetch as ckpt_fetch  # noqa: E402
from orchestrator.ckpt import merge as ckpt_merge  # noqa: E402
from orchestrator.ckpt.collect import opener  # noqa: E402
from orchestrator.config.inventory import load_inventory  # noqa: E402
from orchestrator.remote.group import NodeGroup  # noqa: E402


def hosts(state: Path, *args: str) -> None:
    subprocess.run(
        ["bash", str(REPO / "tests/testhosts.sh"), *args, "--state", str(state)],
        check=True,
        capture_output=True,
        text=True,
    )


def leftovers(state: Path) -> list[str]:
    """Namespaces and links of the set at `state` still present (names from testhosts.sh)."""
    tag = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:6]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [f"netns {ln.split()[0]}" for ln in ns.splitlines() if ln.startswith(f"oth-{tag}-")]
    found += [f"link {ln.split(': ')[1]}" for ln in links.splitlines()
              if ": " in ln and ln.split(": ")[1].startswith((f"oth{tag}", f"othb{tag}"))]
    return found


def gather(mib: int, n: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="oth-bench-collect-"))
    shm = Path(tempfile.mkdtemp(prefix="collect-bench-", dir="/dev/shm"))
    try:
        hosts(state, "up", str(n), "--devices", "1", "--python", sys.executable)
        inv = load_inventory(state / "inventory.yaml")
        items = []
        for i, node in enumerate(inv.in_rank_order()):
            name = node.name
            rel = PurePosixPath(f"jobs/bench/output/checkpoint/rank_{i}/bloom_rank_{i}-1.ckpt")
            local = state / "hosts" / name / "work" / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            data = os.urandom(mib << 20)
            local.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            remote = node.workdir / rel
            items.append(
                ckpt_fetch.Item(
                    name, remote, PurePosixPath(f"rank_{i}/x.ckpt"), len(data), sha, f"rank {i}"
                )
            )
            del data
        total = sum(i.size for i in items)
        # interleaved, best of 2 each: the machine is shared, single runs are noisy
        scp_s = ours_s = conn_s = float("inf")
        for _ in range(2):
            ref_dir = shm / "scp"
            ref_dir.mkdir()
            t = time.monotonic()
            procs = [
                subprocess.Popen(
                    [
                        "scp",
                        "-q",
                        "-F",
                        str(state / "ssh_config"),
                        f"{it.node}:{it.remote}",
                        str(ref_dir / f"{it.node}.ckpt"),
                    ]
                )
                for it in items
            ]
            assert all(p.wait() == 0 for p in procs)
            scp_s = min(scp_s, time.monotonic() - t)
            shutil.rmtree(ref_dir)
            # collect-ckpt gathers on the connections its listing step opened: time that
            # connect apart (printed, and in the second ratio), then the gather itself
            t = time.monotonic()
            with NodeGroup(inv) as conns:
                for conn in map(conns.transport, [n.name for n in inv.nodes]):
                    conn.open()
                t_open = time.monotonic()
                ckpt_fetch.fetch_all(shm / "collect", items, opener(conns), jobs=n)
                done = time.monotonic()
            if done - t_open < ours_s:
                ours_s, conn_s = done - t_open, t_open - t
            shutil.rmtree(shm / "collect")
        # the fallback without OpenSSH (or behind a ProxyJump): paramiko SFTP, one run
        with NodeGroup(inv, use_openssh=False) as conns:
            for conn in map(conns.transport, [n.name for n in inv.nodes]):
                conn.open()
            t = time.monotonic()
            ckpt_fetch.fetch_all(shm / "collect", items, opener(conns), jobs=n)
            sftp_s = time.monotonic() - t
        shutil.rmtree(shm / "collect")
        mb = total / 1e6
        print(f"gather {n} x {mib} MiB from {n} test hosts into tmpfs (best of 2, interleaved)")
        print(f"  {n} parallel scp (reference): {scp_s:6.2f} s  {mb / scp_s:7.1f} MB/s")
        print(
            f"  collect-ckpt gather:         {ours_s:6.2f} s  {mb / ours_s:7.1f} MB/s "
            "(sha256 verified, on open connections)"
        )
        print(f"  ratio collect/scp throughput: {scp_s / ours_s:.2f}x (goal >= 0.9x)")
        print(
            f"  with the listing step's connect ({conn_s:.2f} s) counted: "
            f"{scp_s / (ours_s + conn_s):.2f}x"
        )
        print(
            f"  fallback without OpenSSH (paramiko SFTP, one run): {sftp_s:6.2f} s  "
            f"{mb / sftp_s:7.1f} MB/s, {scp_s / sftp_s:.2f}x scp"
        )
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        hosts(state, "down")
        left = leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
        if left:
            raise SystemExit(f"test hosts left behind after down: {left}")
        print(f"  test hosts at {state} torn down, nothing left")


def transform(gib: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="collect-bench-tf-", dir="/tmp"))
    try:
        # hidden 2048, 4 layers, vocab sized to reach `gib` GiB of fp32 parameters
        h, layers = 2048, 4
        per_layer = 12 * h * h + 13 * h
        vocab = max(1024, int((gib * 2**30 / 4 - layers * per_layer) / h) // 128 * 128)
        model = {
            "vocab_size": vocab,
            "hidden_size": h,
            "n_layer": layers,
            "n_head": 16,
            "seq_length": 64,
        }
        script = (
            "import json,sys,numpy as np\n"
            "from pathlib import Path\n"
            "from orchestrate_bloom.ckpt.tools import model_shapes\n"
            "from tests.tools.shards import write_sharded\n"
            "m=json.loads(sys.argv[1]); rng=np.random.default_rng(0)\n"
            "full={n: rng.standard_normal(s, dtype=np.float32) for n,s in "
            "model_shapes(m).items()}\n"
            "write_sharded(Path(sys.argv[2]), full, 1, 2, 2, m['n_layer'])\n"
            "import hashlib\n"
            "Path(sys.argv[2], 'digest.json').write_text(json.dumps({n: hashlib.sha256("
            "a.tobytes()).hexdigest() for n,a in full.items()}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "GLOG_v": "3"}
        t = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", script, json.dumps(model), str(work)],
            check=True,
            env=env,
            capture_output=True,
        )
        size = sum(p.stat().st_size for p in (work / "checkpoint").rglob("*.ckpt"))
        print(
            f"synthetic DP1 x MP2 x PP2 checkpoint: {size / 2**30:.2f} GiB in 4 shards "
            f"(vocab {vocab}, hidden {h}, {layers} layers), written in "
            f"{time.monotonic() - t:.1f} s"
        )
        t0 = time.monotonic()
        stripped = {r: work / "stripped" / f"rank_{r}.ckpt" for r in range(4)}
        res = ckpt_merge.strip(
            {work / "checkpoint" / f"rank_{r}" / "shard.ckpt": stripped[r] for r in range(4)},
            keep_optimizer=False,
        )
        peak = res["peak_rss"]
        t1 = time.monotonic()
        strategy = ckpt_merge.merge_strategies(work / "strategy", work / "merged_strategy.ckpt")
        t2 = time.monotonic()
        out = work / "merged.ckpt"
        res = ckpt_merge.transform(stripped, strategy, out, None)
        t3 = time.monotonic()
        peak = max(peak, res["peak_rss"])
        check = (
            "import hashlib,json,sys,mindspore as ms\n"
            "d=json.load(open(sys.argv[2])); p=ms.load_checkpoint(sys.argv[1])\n"
            "bad=[n for n in d if hashlib.sha256(p[n].asnumpy().tobytes()).hexdigest()!=d[n]]\n"
            "print(len(d), len(p), len(bad), *bad[:3])\n"
        )
        got = subprocess.run(
            [sys.executable, "-c", check, str(out), str(work / "digest.json")],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.split()
        print(
            f"  strip x4 {t1 - t0:.1f} s, merge-strategies {t2 - t1:.1f} s, transform "
            f"{t3 - t2:.1f} s: total {t3 - t0:.1f} s for {size / 2**30:.2f} GiB "
            f"({size / 2**20 / (t3 - t0):.0f} MiB/s); peak host memory "
            f"{peak / 2**30:.2f} GiB; merged {out.stat().st_size / 2**30:.2f} GiB"
        )
        print(
            f"  result: {got[0]} parameters expected, {got[1]} in merged file, "
            f"{got[2]} differ from the unsharded bytes {' '.join(got[3:])}; "
            f"transform method: {res.get('method', '?')}"
        )
        t4 = time.monotonic()
        checked = ckpt_merge.run_tool(["check", "--ckpt", str(out), "--model-json",
                                       json.dumps(model)])
        print(
            f"  load check into BloomLMHeadModel: {time.monotonic() - t4:.1f} s, peak host "
            f"memory {checked.get('peak_rss', 0) / 2**30:.2f} GiB (the model + one parameter)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--transform-gib", type=float, default=1.0)
    p.add_argument("--skip-transform", action="store_true")
    p.add_argument("--skip-gather", action="store_true", help="part 2 only (no test hosts)")
    a = p.parse_args()
    if not a.skip_gather:
        gather(a.mib, a.hosts)
    if not a.skip_transform:
        transform(a.transform_gib)


if __name__ == "__main__":
    main()
