"""Benchmark the node-output parsers on hostile input: a 1 MB npu-smi line, 16 MB of status.

    python bench/untrusted_parse.py [--mib 1]

Times, in the same run, `parse_spod_info` (npu-smi `Key : value` lines) and `parse_status`
(`launch.sh status`) on one line of --mib MiB with no colon where the old regex backtracked
(issue 14 item 6: a 16 kB line took 4.9 s, a 1 MB line would take hours), against the
reference of merely splitting the same text into lines (`str.splitlines`). Prints the times
and the ratio to the reference; linear parsers stay within a small constant of it. The old
pattern is also timed on a 4 kB line for scale.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from orchestrator.hccl.discover import parse_npu_mapping, parse_spod_info
from orchestrator.job.nodes import parse_status

OLD_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z ()_-]*?)\s*:\s*(.*?)\s*$")  # before issue 14


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=1.0)
    n = int(ap.parse_args().mib * 2**20)
    line = "SDID" + " " * n + "x\nSDID : 7\n"
    status = "supervisor running\nslot 0 running - 1\nlast 0 " + "step=1 " * (n // 7) + "\n"
    ref = best(lambda: line.splitlines())
    rows = [("parse_spod_info, 1 line", best(lambda: parse_spod_info(line))),
            ("parse_npu_mapping, 1 line", best(lambda: parse_npu_mapping(line))),
            ("parse_status, 1 line", best(lambda: parse_status("n", status)))]
    print(f"reference str.splitlines on {n / 2**20:.2f} MiB: {ref * 1e3:.2f} ms")
    for name, t in rows:
        print(f"{name:28s} {t * 1e3:8.2f} ms   {t / ref:6.1f}x reference")
    small = "SDID" + " " * 4096 + "x"
    old = best(lambda: OLD_KEY_VALUE.match(small), repeat=1)
    print(f"old regex on a 4 KiB line: {old * 1e3:.0f} ms (quadratic: x{(n / 4096) ** 2:.0f} "
          f"for {n / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
