"""THE host-core share of one rank: ranks that share a node split its cores instead of each
starting a full set of thread pools (issue #17).

    share = rank_share(local_rank=3, local_ranks=8, cpus=range(16))   # cpus (6, 7), 2 threads
    share = apply_from_env()          # at process start, before MindSpore is imported

msrun's --bind_core behaviour: when the node has at least one core per rank, the cores this
process may run on (sched_getaffinity: cgroups, cpusets and taskset included) are cut into
equal contiguous chunks, rank i is pinned to chunk i and every thread pool gets the chunk's
size. With fewer cores than ranks every pool gets one thread and the ranks are split into equal
contiguous groups, one per core, each group pinned to its core (8 ranks on 2 cores: ranks 0-3
on the first, 4-7 on the second): measured on 2 cores with the tiny preset, 8 ranks left to
the scheduler used 351 and 326 ms of CPU per step, pinned 273 and 268 (MindSpore's kernel
thread yield-spins while its rank waits; on its rank's own core it yields to that rank).
The same logic gives Ascend ranks their host-side core binding (their host threads feed the
device).

The launch script tells each rank where it stands: ORCHESTRATE_LOCAL_RANK (0-based position on
the node, `sched` for the msrun scheduler: one thread per pool, not pinned) and
ORCHESTRATE_LOCAL_RANKS (ranks on the node); without them (a process started by hand) nothing
is changed. ORCHESTRATE_CPU_SHARE=0 turns it off (the
benchmark's reference). OMP/BLAS variables the user set (inventory `env:`) are kept.
Standard library only, apart from `apply_to_mindspore`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# OpenBLAS's idle workers spin (sched_yield) for 2^N cycles before sleeping: its default N=28
# (~0.1 s) kept numpy's BLAS worker (then the CPU weight gradients; any numpy BLAS call) spinning
# through the MindSpore kernels that follow, on the cores those kernels need. N=4, its
# minimum: sleep at once (small train step, 2 threads: 421.6 -> 380.7 ms, that thread's CPU
# 162 -> 57 ms a step; bench/train_step.py).
BLAS_SPIN = ("OPENBLAS_THREAD_TIMEOUT", "4")
LOCAL_RANK = "ORCHESTRATE_LOCAL_RANK"
LOCAL_RANKS = "ORCHESTRATE_LOCAL_RANKS"
SWITCH = "ORCHESTRATE_CPU_SHARE"


@dataclass(frozen=True)
class Share:
    """What one rank may use: the cores it runs on and the size of each thread pool."""

    cpus: tuple[int, ...]  # the cores it is pinned to (all available ones when not pinned)
    threads: int  # threads per pool (MindSpore kernels, OpenMP, BLAS, dataset workers)
    pinned: bool  # whether the process is pinned to cpus (disjoint unless ranks > cores)


def rank_share(local_rank: int, local_ranks: int, cpus: Iterable[int]) -> Share:
    """The share of rank `local_rank` of `local_ranks` on a node whose usable cores are `cpus`.

    Raises:
        ValueError: local_rank outside 0..local_ranks-1, or no cores.
    """
    avail = tuple(sorted(set(cpus)))
    if not avail:
        raise ValueError("no usable cores")
    if not 0 <= local_rank < local_ranks:
        raise ValueError(f"local rank {local_rank} outside 0..{local_ranks - 1}")
    per = len(avail) // local_ranks
    if per == 0:  # equal contiguous groups of ranks, one core each
        return Share(cpus=(avail[local_rank * len(avail) // local_ranks],), threads=1,
                     pinned=True)
    return Share(cpus=avail[local_rank * per:(local_rank + 1) * per], threads=per, pinned=True)


def share_from_env(env: Mapping[str, str], cpus: Iterable[int]) -> Share | None:
    """The share the launch script's variables ask for, None when they are absent or off."""
    if env.get(SWITCH, "1") == "0" or LOCAL_RANK not in env or LOCAL_RANKS not in env:
        return None
    if env[LOCAL_RANK] == "sched":  # the msrun scheduler: one thread per pool, not pinned
        return Share(cpus=tuple(sorted(set(cpus))), threads=1, pinned=False)
    try:
        rank, ranks = int(env[LOCAL_RANK]), int(env[LOCAL_RANKS])
    except ValueError:
        return None
    return rank_share(rank, ranks, cpus)


def thread_env(share: Share, env: MutableMapping[str, str]) -> None:
    """Set the OpenMP/BLAS pool sizes to the share and OpenBLAS's idle spin to its minimum
    (BLAS_SPIN); values already set are kept."""
    for name in THREAD_VARS:
        env.setdefault(name, str(share.threads))
    env.setdefault(*BLAS_SPIN)


def apply_from_env() -> Share | None:
    """Pin this process and size the OpenMP/BLAS pools from the launch script's variables.

    Call once, at process start, before MindSpore (or numpy's BLAS) starts threads; threads
    created later inherit the affinity. Returns the share (None: nothing changed).
    `python -m orchestrate_bloom.train` calls it before numpy loads and passes the share to
    trainer.main; a second call would cut the already narrowed affinity again.
    """
    share = share_from_env(os.environ, os.sched_getaffinity(0))
    if share is None:
        return None
    thread_env(share, os.environ)
    if share.pinned:
        os.sched_setaffinity(0, share.cpus)
    return share


def apply_to_mindspore(ms: Any, share: Share | None) -> None:
    """Size MindSpore's CPU kernel pool, runtime dispatch threads and dataset workers.

    On CPU one dispatch thread: a second one, with 2 kernel threads on 2 cores, made a tiny
    training step 3-5x slower (wall 114-188 vs 30-33 ms) and a small one 1.3-2x
    (`python bench/train_step.py`); the kernels run one after another either way.
    On CPU jit_level O1 (MindSpore's common graph optimisations and operator fusion, still
    kernel by kernel): 8 ranks of tiny on 2 cores, 5 alternating pairs, median 90.6 ms/step
    (85.6-117.3) against 124.9 (104.4-134.5) with the default; O1 faster in 4 of the 5 pairs.
    """
    if share is None:
        return
    from ..cpu_grads import on_cpu  # imports MindSpore: not at the top (see apply_from_env)

    ms.device_context.cpu.op_tuning.threads_num(share.threads)
    cpu = on_cpu()
    if cpu:
        ms.set_context(jit_config={"jit_level": "O1"})
    ms.runtime.dispatch_threads_num(1 if cpu else max(1, min(share.threads, 5)))
    import mindspore.dataset as ds

    ds.config.set_num_parallel_workers(max(1, share.threads))
