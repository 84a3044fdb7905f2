"""Compile-only dry run of the semi-auto parallel (Ascend) train graph on a CPU machine.

    python -m tests.tools.dryrun --job JOB.yaml --rank R --world W

Test tooling only, built on private MindSpore 2.10 hooks that may change: a C++ shim
(tests/tools/fake_ascend.cc, built on first use) registers a no-op "Ascend" device, the
communication helper is told HCCL is available, and with MS_SIMULATION_LEVEL=0, RANK_ID and
RANK_SIZE set and no init(), `_cell_graph_executor.compile` runs the parallel passes for rank R
of W. The rank's parameters become its slices: they are saved as the job's checkpoint layout
(output/checkpoint/rank_R/bloom_rank_R-0.ckpt), and the strategy file lands where the trainer
puts it (output/strategy/ckpt_strategy_rank_R.ckpt). Nothing is executed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build_shim(build_dir: Path) -> Path:
    """Compile fake_ascend.cc against MindSpore's libmindspore_core.so (once per build_dir)."""
    import mindspore

    lib_dir = Path(mindspore.__file__).parent / "lib"
    out = build_dir / "libfake_ascend.so"
    if not out.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.so")
        subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-D_GLIBCXX_USE_CXX11_ABI=0",
                        str(HERE / "fake_ascend.cc"), "-o", str(tmp), f"-L{lib_dir}",
                        "-lmindspore_core", f"-Wl,-rpath,{lib_dir}"], check=True)
        os.replace(tmp, out)
    return out


def true_group_sizes(rank: int, world: int) -> None:
    """Make collective primitives see their group's real size, as HCCL would report it.

    Without init(), MindSpore's simulated collective manager answers the world size and the
    global rank for every group, so an AllGather that the parallel passes insert into a
    2-rank group of a 4-rank job infers a 4x output and a later Reshape fails (what made
    MP=2 x PP=2 "not compile"). The passes name their groups `<size>-<hash of the ranks>`;
    the size is read from that name. The rank within the group only feeds a `rank < size`
    check at primitive construction: `rank % size` (exact for MindSpore's stage/DP/MP
    groups, which are contiguous or evenly strided blocks of ranks).
    """
    import re

    from mindspore.ops.operations import comm_ops

    world_size, world_rank = comm_ops.get_group_size, comm_ops.get_rank

    def group_size(group: str) -> int:
        m = re.fullmatch(r"(\d+)-\d+", group)
        if m is None:
            return int(world_size(group))
        size = int(m[1])
        if not 0 < size <= world or world % size:
            raise RuntimeError(f"group {group}: size {size} does not divide world {world}")
        return size

    def group_rank(group: str) -> int:
        return rank % group_size(group) if re.fullmatch(r"\d+-\d+", group) else \
            int(world_rank(group))

    comm_ops.get_group_size, comm_ops.get_rank = group_size, group_rank


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.dryrun")
    parser.add_argument("--job", type=Path, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/orchestrate-dryrun"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    os.environ.update(MS_SIMULATION_LEVEL="0", RANK_ID=str(args.rank),
                      RANK_SIZE=str(args.world))
    import mindspore as ms

    ctypes.CDLL(str(build_shim(args.build_dir)), mode=ctypes.RTLD_GLOBAL)
    from mindspore.communication import _comm_helper

    _comm_helper._HCCL_TEST_AVAILABLE = True
    true_group_sizes(args.rank, args.world)
    from mindspore import Tensor
    from mindspore.common.api import _cell_graph_executor

    from model import checkpoint as ck
    from model.job import load_job
    from model.schedule import lr_schedule
    from model.train import Dist, build_cells, fit_layout

    job = load_job(args.job, args.overrides)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="Ascend")
    ms.set_seed(int(job.train["seed"]))
    ms.set_auto_parallel_context(global_rank=args.rank)
    layout, _ = fit_layout(job, args.world)
    strategy = ck.strategy_path(job.output_dir, args.rank)
    strategy.parent.mkdir(parents=True, exist_ok=True)
    lrs = lr_schedule(int(job.train["steps"]), 1e-4, 1e-5, 0)
    _, step_cell = build_cells(job, layout, Dist("dryrun", args.rank, args.world), False, lrs,
                               strategy)
    step_cell.set_train(True)
    ids = Tensor(np.zeros((layout.global_batch, int(job.model["seq_length"]) + 1), np.int32))
    _cell_graph_executor.compile(step_cell, ids, ids)
    ck.save(lambda p: ms.save_checkpoint(step_cell.network, str(p)), job.output_dir, args.rank,
            0, {"layout": layout.manifest(), "dryrun": True})
    print(f"compiled rank {args.rank}/{args.world}: strategy {strategy} "
          f"({strategy.stat().st_size} bytes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
