"""`train.graph_kernel`: MindSpore's graph-kernel fusion (AKG) for CPU training, opt-in.

    train: {graph_kernel: true}       # in job.yaml or a preset; or
    python -m orchestrate_bloom.train --job job.yaml --set train.graph_kernel=true

AKG fuses chains of elementwise ops and reductions into generated kernels. Measured on 2
cores with `python bench/train_step.py` (same run, against the default): a training step
1.11x faster (small) and 1.16x (tiny). The price is compile time: 2.5-6.5 s more per graph,
paid at every start. So it is off by default (short jobs and CI would only pay) and worth
turning on for runs of more than a few hundred steps.

Two parts, because libgomp reads its wait policy once, when it loads (at `import mindspore`):
- `rank_env`, called by `python -m orchestrate_bloom.train` (__main__) before MindSpore loads:
  OMP_WAIT_POLICY=PASSIVE (AKG's kernels run on libgomp's OpenMP threads; with the default
  spin policy those threads spun on the cores MindSpore's kernel pool needs: small step 0.65x)
  and MS_COMPILER_CACHE_PATH=<output_dir>/graph_kernel, where AKG writes akg_kernel_meta/, its
  logs and its key file instead of the working directory (mindspore/_akg/akg/global_configs.py).
  One file still lands in the working directory: libakg.so's polyhedral pass writes CWD_LOG
  (dsa_transfrom.log, under 1 kB, overwritten per kernel) by a fixed relative name; no
  variable or AKG attribute in 2.10 moves it.
  Values the user already set (inventory `env:`) are kept: a node-wide cache path reuses the
  generated kernels across jobs.
- `enable`, called by trainer.main after set_context: enable_graph_kernel=True, and one note in
  the rank log saying so.
On a device_target other than CPU, or without libgomp (AKG's CPU kernels link it), the key is
ignored with a one-line note in the rank log: a job file shared between CPU and Ascend runs
keeps working. Standard library only (rank_env runs before numpy and MindSpore load).
"""

from __future__ import annotations

import argparse
import ctypes
import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from ..presets import SettingsError
from .job import Job, load_job

KEY = "train.graph_kernel"
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")
CACHE_VAR = "MS_COMPILER_CACHE_PATH"
LIBGOMP = "libgomp.so.1"
CWD_LOG = "dsa_transfrom.log"  # (sic) AKG's one file that still goes to the cwd


def kernel_dir(job: Job) -> Path:
    """Where AKG's build output goes unless the user set MS_COMPILER_CACHE_PATH."""
    return job.output_dir / "graph_kernel"


def wanted(job: Job) -> bool:
    """True when the job turns fusion on for a CPU run."""
    return bool(job.train["graph_kernel"]) and job.train["device_target"] == "CPU"


def rank_env(argv: Sequence[str], env: MutableMapping[str, str]) -> None:
    """Set the OpenMP wait policy and AKG's output folder for the job `argv` names, when it
    turns fusion on. A job that does not load is left to trainer.main, which reports it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--job", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    try:
        args, _ = parser.parse_known_args(argv)
        job = load_job(args.job, args.overrides) if args.job else None
    except (SettingsError, ValueError, OSError, SystemExit):
        return
    if job is None or not wanted(job):
        return
    env.setdefault(*WAIT_POLICY)
    env.setdefault(CACHE_VAR, str(kernel_dir(job).resolve()))


def has_libgomp() -> bool:
    """Whether libgomp (AKG's OpenMP runtime) can be loaded."""
    try:
        ctypes.CDLL(LIBGOMP)
    except OSError:
        return False
    return True


def enable(ms: Any, job: Job) -> str | None:
    """Turn fusion on when the job asks for it and can have it; the note for the rank log
    (None: the key is off)."""
    if not job.train["graph_kernel"]:
        return None
    target = job.train["device_target"]
    if target != "CPU":
        return f"{KEY}: ignored with device_target={target} (CPU only)"
    if not has_libgomp():
        return f"{KEY}: ignored: {LIBGOMP} not found (AKG's CPU kernels need it)"
    ms.set_context(enable_graph_kernel=True)
    out = os.environ.get(CACHE_VAR, "the working directory")
    policy = os.environ.get(WAIT_POLICY[0], "unset")
    return (f"{KEY}: on (AKG fusion; {WAIT_POLICY[0]}={policy}; kernels built in {out}; "
            "adds seconds of compile per graph)")
