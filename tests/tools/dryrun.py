"""Compile-only dry run of the semi-auto parallel (Ascend) train graph on a CPU machine.

    python -m tests.tools.dryrun --job JOB.yaml --rank R --world W

Test tooling only, built on private MindSpore 2.10 hooks that may change: a C++ shim
(tests/tools/fake_ascend.cc, built on first use) registers a no-op "Ascend" device, the
communication helper is told HCCL is available, and with MS_SIMULATION_LEVEL=0, RANK_ID and
RANK_SIZE set and no init(), `_cell_graph_executor.compile` runs the parallel passes for rank R
of W (and of the trainer's loss all-reduce, compiled before the semi-auto context is set, then
reused under it). The rank's parameters become its slices: they are saved as the job's
checkpoint layout (output/checkpoint/rank_R/bloom_rank_R-0.ckpt), and the strategy file lands
where the trainer puts it (output/strategy/ckpt_strategy_rank_R.ckpt). Nothing is executed.

With `--init FULL.ckpt` each rank's slices are cut from that single-device checkpoint by
MindSpore's own layout slicing instead of coming from the rank's random init, so a test can ask
that collecting the shards gives FULL back exactly.

Helpers for tests: `write_job` (a tiny Bloom job for a DP x MP x PP layout), `write_reference`
(random full parameters), `compile_ranks` (every rank in parallel), `DryRuns` (each layout
compiled once per test session: the `dry_runs` fixture of tests/conftest.py),
`check_reassembled` (full parameters vs the ranks' slices).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from orchestrate_bloom.train.stages import layers_per_stage

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY = {"vocab_size": 1024, "hidden_size": 64, "n_layer": 2, "n_head": 4, "seq_length": 32,
        "compute_dtype": "float32"}  # `tiny`, vocab 1024 (divisible by MP)


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


def write_job(folder: Path, dp: int, mp: int, pp: int, optimizer_shard: bool = False,
              job_id: str = "dry") -> Path:
    """job.yaml of a tiny Bloom at DP x MP x PP (micro_batch_num = 2 with a pipeline)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({
        "job": {"id": job_id, "output_dir": str(folder / "output")},
        "model": TINY,
        "parallel": {"data_parallel": dp, "model_parallel": mp, "pipeline_stage": pp,
                     "micro_batch_size": 2, "micro_batch_num": 2 if pp > 1 else 1,
                     "optimizer_shard": optimizer_shard,
                     "layers_per_stage": layers_per_stage(TINY["n_layer"], pp)},
        "train": {"device_target": "Ascend", "steps": 10},
        "data": {"path": str(folder)}}))
    return path


def write_reference(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A single-device checkpoint of every BloomLMHeadModel parameter of TINY, all random
    (biases and LayerNorms too, so a misplaced slice of any of them shows); returns it."""
    import mindspore as ms
    from orchestrate_bloom.config import BloomConfig

    rng = np.random.default_rng(seed)
    shapes = BloomConfig.from_dict(dict(TINY), "tiny").parameter_shapes()
    full = {n: rng.standard_normal(tuple(s)).astype(np.float32) for n, s in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in full.items()], str(path))
    return full


def compile_ranks(job: Path, world: int, build_dir: Path, init: Path | None = None,
                  timeout: float = 900) -> Path:
    """Compile every rank of `job` (one process each, all at once); returns the output folder.

    `init`: a single-device checkpoint the ranks save their slices of (see --init).

    Raises:
        RuntimeError: a rank failed, with the end of its stderr.
    """
    build_shim(build_dir)  # once, before the ranks start
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env.update(GLOG_v="3", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.tools.dryrun", "--job", str(job),
                               "--rank", str(r), "--world", str(world), "--build-dir",
                               str(build_dir), *(["--init", str(init)] if init else [])],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    failed = []
    for r, p in enumerate(procs):
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0 or f"compiled rank {r}/{world}" not in out:
            failed.append(f"rank {r} (exit {p.returncode}): {err[-2000:]}")
    if failed:
        raise RuntimeError("dry run failed: " + "\n".join(failed))
    return job.parent / "output"


class DryRuns:
    """Compiled dry runs shared by every test of a session: each layout compiles once.

    A layout's ranks are compiled on first use with slices of one random reference (seed 0)
    and one shim build; later callers get the same output folder. Callers only read it
    (copy, merge or transform into their own folders): the checkpoints are saved read-only.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[int, int, int, bool], Path] = {}
        self._reference: dict[str, np.ndarray] | None = None

    def get(self, dp: int, mp: int, pp: int,
            optimizer_shard: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
        """(output folder, reference parameters) of the DP x MP x PP dry run (job id "dry")."""
        init = self.root / "reference.ckpt"
        if self._reference is None:
            self._reference = write_reference(init)
        key = (dp, mp, pp, optimizer_shard)
        if key not in self._done:
            shard = "-os" if optimizer_shard else ""
            job = write_job(self.root / f"dp{dp}mp{mp}pp{pp}{shard}", dp, mp, pp,
                            optimizer_shard)
            self._done[key] = compile_ranks(job, dp * mp * pp, self.root / "build", init)
        return self._done[key], self._reference


def check_reassembled(full: dict[str, np.ndarray], parts: dict[int, dict[str, np.ndarray]],
                      dp: int, mp: int) -> dict[str, int]:
    """Assert that `full` is exactly what the ranks' slices imply; returns {name: split axis}.

    Rank r holds MP slice (r % (dp*mp)) % mp of the parameters of its stage (MindSpore's device
    matrix [dp, mp] per stage, stages as contiguous blocks of ranks): a parameter it holds
    whole must equal `full`; one split (on exactly one axis) must equal that block of `full`.
    Every parameter of `full` must be held by some rank, and the MP slices of a split weight
    must differ (a merge that repeated one slice would pass otherwise).
    """
    axes: dict[str, int] = {}
    for name, whole in full.items():
        holders = [r for r, params in parts.items() if name in params]
        assert holders, f"{name}: no rank holds it"
        for r in holders:
            part = parts[r][name]
            if part.shape == whole.shape:
                np.testing.assert_array_equal(part, whole, err_msg=f"{name} rank {r}")
                continue
            (axis,) = [i for i, (a, b) in enumerate(zip(part.shape, whole.shape, strict=True))
                       if a != b]
            assert axes.setdefault(name, axis) == axis, f"{name}: split on two axes"
            block = np.split(whole, mp, axis=axis)[r % (dp * mp) % mp]
            np.testing.assert_array_equal(part, block, err_msg=f"{name} rank {r}")
        if name in axes and whole.ndim > 1:  # weights are random; biases start at zero
            blocks = np.split(whole, mp, axis=axes[name])
            assert not np.array_equal(blocks[0], blocks[1]), f"{name}: MP slices are equal"
    return axes


def load_slices(step_cell: Any, full: dict[str, Any], stage_rank: int) -> None:
    """Set every model parameter of the compiled `step_cell` to its slice of `full`.

    The model-parallel slice is what MindSpore's own loader cuts for this rank from the
    parameter's layout (private helper, test tooling only); `stage_rank` is the rank within its
    pipeline stage. With the parallel optimizer the slice is split once more, on its first
    axis, across the ranks that hold the same slice (opt_shard_group), in rank order.
    """
    from mindspore import Tensor
    from mindspore.parallel._tensor import _load_tensor

    layouts = step_cell.parameter_layout_dict
    for param in step_cell.network.get_parameters():
        if not param.name.startswith("transformer.") or not param.sliced:
            continue  # not a model parameter, or another stage's (the compile slices its own)
        whole = full[param.name]
        if param.name not in layouts:
            part = whole.asnumpy()
        else:
            dev_mat, tensor_map, _, _, uniform, group, full_shape = layouts[param.name][:7]
            if not uniform:
                raise RuntimeError(f"{param.name}: non-uniform split, not supported here")
            part = _load_tensor(whole, dev_mat, tensor_map, full_shape, stage_rank)
            if group:
                index, size = replica_index(dev_mat, tensor_map, stage_rank)
                if not group.startswith(f"{size}-"):
                    raise RuntimeError(f"{param.name}: optimizer shard group {group} is not "
                                       f"the {size} replicas of the slice")
                part = np.split(part, size)[index]
        if tuple(part.shape) != tuple(param.shape):
            raise RuntimeError(f"{param.name}: slice {part.shape}, parameter {param.shape}")
        param.set_data(Tensor(np.ascontiguousarray(part), param.dtype))
        param.sliced = True  # set_data clears it; save_checkpoint skips unsliced parameters


def replica_index(dev_mat: list[int], tensor_map: list[int], rank: int) -> tuple[int, int]:
    """(position of `rank` among the ranks holding its slice, how many hold it).

    Ranks are coordinates in the device matrix (last axis fastest); tensor_map entries count
    device axes from the right; ranks agreeing on every axis the tensor map uses hold the
    same slice.
    """
    used = [len(dev_mat) - 1 - m for m in tensor_map if m >= 0]
    mine = np.unravel_index(rank, dev_mat)
    same = [r for r in range(int(np.prod(dev_mat)))
            if all(np.unravel_index(r, dev_mat)[a] == mine[a] for a in used)]
    return same.index(rank), len(same)


def true_group_sizes(rank: int, world: int) -> None:
    """Make collective primitives see their group's real size, as HCCL would report it.

    Without init(), MindSpore's simulated collective manager answers the world size and the
    global rank for every group, so an AllGather that the parallel passes insert into a
    2-rank group of a 4-rank job infers a 4x output and a later Reshape fails (what made
    MP=2 x PP=2 "not compile"). The passes name their groups `<size>-<hash of the ranks>`;
    the size is read from that name. The rank within the group only feeds a `rank < size`
    check when the primitive is built, nothing the compile computes: `rank % size` passes it
    (it is not the true position in a strided group such as DP replicas {0, 2}).
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
    parser.add_argument("--init", type=Path, default=None,
                        help="single-device checkpoint: each rank saves its slices of it")
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
    from orchestrate_bloom.ckpt import layout as ck
    from orchestrate_bloom.train.cells import AllReduceSum, build_cells
    from orchestrate_bloom.train.job import load_job
    from orchestrate_bloom.train.schedule import lr_schedule
    from orchestrate_bloom.train.trainer import Dist, fit_layout

    job = load_job(args.job, args.overrides)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="Ascend")
    ms.set_seed(int(job.train["seed"]))
    ms.set_auto_parallel_context(global_rank=args.rank)
    layout, _ = fit_layout(job, args.world)
    strategy = ck.strategy_path(job.output_dir, args.rank)
    strategy.parent.mkdir(parents=True, exist_ok=True)
    lrs = lr_schedule(int(job.train["steps"]), 1e-4, 1e-5, 0)
    reduce = AllReduceSum([2])  # the trainer's loss all-reduce, compiled where it does
    _, step_cell, _ = build_cells(job, layout, Dist("dryrun", args.rank, args.world), False, lrs,
                                  strategy)
    step_cell.set_train(True)
    ids = Tensor(np.zeros((layout.global_batch, int(job.model["seq_length"]) + 1), np.int32))
    _cell_graph_executor.compile(step_cell, ids, ids)
    # Semi-auto parallel refuses graphs with communication operators: this passes only because
    # the graph compiled above (stand-alone) is reused, as in the trainer's loop.
    reduce.cell.compile(reduce.tensor(np.zeros(2)))
    if args.init is not None:
        per_stage = args.world // layout.pipeline_stage
        load_slices(step_cell, ms.load_checkpoint(str(args.init)), args.rank % per_stage)
    ck.save(lambda p: ms.save_checkpoint(step_cell.network, str(p)), job.output_dir, args.rank,
            0, {"layout": layout.manifest(), "dryrun": True})
    print(f"compiled rank {args.rank}/{args.world}: strategy {strategy} "
          f"({strategy.stat().st_size} bytes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
