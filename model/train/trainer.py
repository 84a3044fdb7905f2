"""The trainer every rank runs: Bloom causal-LM training from a job file.

    python -m orchestrate_bloom.train --job JOB.yaml [--resume] [--set section.key=value ...]

e.g. on one CPU machine, by hand (single process, no distributed environment):

    python -m orchestrator prepare-data --input alpaca.json --seq-length 64 --output data/mr
    python -m orchestrate_bloom.train --job job.yaml --set data.path=data/mr --set train.steps=50

JOB.yaml has the sections of model/configs/defaults.yaml (model, parallel, train, data), as
rendered by the orchestrator, and optionally `job: {id: ..., output_dir: ...}`; the output
folder defaults to `<folder of JOB.yaml>/output`. `--set` accepts train.steps,
train.save_steps, train.log_steps, train.lr, model.seq_length (alias train.seq_length),
data.path, and any other key of the job file.

Relative paths in the job (data.path, train.load_checkpoint, job.output_dir): from the cwd.

Launch modes (read from the environment, nothing to pass):
- rank table (Ascend, HCCL): RANK_TABLE_FILE, RANK_ID, RANK_SIZE, DEVICE_ID.
- dynamic cluster (what msrun sets; CPU, GPU, Ascend): MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT,
  MS_WORKER_NUM, MS_NODE_ID. The scheduler is this same command with MS_ROLE=MS_SCHED; it
  serves the cluster and exits 0 when the workers are done.
- neither: one undistributed process.
On CPU only data parallel exists: a job with model_parallel or pipeline_stage > 1 is refused.

Output: one line per logged step on stdout (rank 0 only), e.g.
`step=120 loss=2.3141 lr=1.0e-04 tokens_per_s=3120.5 elapsed_s=61.234`; on several ranks `loss`
is the global mean (every rank's batch loss, all-reduced, over the ranks of the last pipeline
stage; the loss whose averaged gradient was applied), not rank 0's own;
checkpoints `output/checkpoint/rank_<r>/bloom_rank_<r>-<step>.ckpt` + `.json` manifest every
train.save_steps and at the end (the last train.keep_checkpoints kept); on the semi-auto
parallel path the strategy file `output/strategy/ckpt_strategy_rank_<r>.ckpt`. `--resume`
continues from the newest step complete on every rank (same data position, same LR schedule)
and records that step as `{"resumed_step": N}` in `$ORCHESTRATE_RESUMED_FILE` when set (launch.sh
sets it; the control plane reads it: checkpoint.record_resumed / parse_resumed).
Graceful stop (`orchestrate down --save`): graceful.StopPoll reads `<folder of JOB.yaml>/
stop_request.json` ({"GracefulExit": 1}, MindSpore's OnRequestExit) about every second of
training, all-reduced: every rank logs, saves that step (its manifest records the full-precision
`loss`) and exits 0 at the same step. Exit 0 only when training finished or stopped on request;
otherwise non-zero with `error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ckpt import layout as ck
from ..ckpt import mindformers as mindformers_ckpt
from ..ckpt.convert import ConvertError
from ..data.read import DataError, create_dataset, has_column, sample_length
from ..presets import SettingsError
from . import cpu_share, graceful, graph_kernel, sched_wait
from .job import Job, load_job
from .schedule import lr_schedule
from .stages import SplitError, resolve_split, stage_of_layers
from .steplog import StepLogger

if TYPE_CHECKING:
    from .cells import AllReduceSum, SharedSum


class TrainError(RuntimeError):
    """The job cannot run as configured; the message says which key and why."""


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    mode: str  # "single" | "ranktable" | "cluster"
    rank: int
    world: int

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Layout:
    """The parallel layout this run uses (DP fitted to the world size)."""

    data_parallel: int
    model_parallel: int
    pipeline_stage: int
    micro_batch_size: int
    micro_batch_num: int
    layers_per_stage: tuple[int, ...]  # blocks of each pipeline stage (job.yaml's, as planned)

    def manifest(self) -> dict[str, int]:
        """What must match for a checkpoint to be resumable."""
        return {"data_parallel": self.data_parallel, "model_parallel": self.model_parallel,
                "pipeline_stage": self.pipeline_stage}

    @property
    def rank_batch(self) -> int:
        """Samples one data-parallel replica consumes per optimizer step.

        Without a pipeline, micro-batches of one step are one batch (the same mean loss).
        """
        return self.micro_batch_size * self.micro_batch_num

    @property
    def global_batch(self) -> int:
        return self.rank_batch * self.data_parallel


# --- checks that need no MindSpore --------------------------------------------------------------

def check_job(job: Job) -> None:
    """Refuse what cannot run, before any process waits on a cluster.

    Raises:
        TrainError: naming the key and the reason.
    """
    t, p = job.train, job.parallel
    if t["device_target"] not in ("Ascend", "GPU", "CPU"):
        raise TrainError(f"train.device_target={t['device_target']!r}: expected Ascend, GPU or CPU")
    if t["device_target"] == "CPU" and (p["model_parallel"] > 1 or p["pipeline_stage"] > 1):
        raise TrainError(
            f"parallel.model_parallel={p['model_parallel']}, parallel.pipeline_stage="
            f"{p['pipeline_stage']} with train.device_target=CPU: MindSpore supports only data "
            "parallel on CPU (semi-auto parallel raises \"Invalid communication backend: CPU\"); "
            "set both to 1 or train on Ascend")
    for key in ("steps", "log_steps", "save_steps"):
        if t[key] < 1:
            raise TrainError(f"train.{key} must be >= 1, got {t[key]}")
    if t["mode"] not in ("pretrain", "finetune"):
        raise TrainError(f"train.mode={t['mode']!r}: expected pretrain or finetune")
    if not job.data["path"]:
        raise TrainError("data.path is empty: point it at a prepare-data output folder "
                         "(--set data.path=DIR)")


def fit_layout(job: Job, world: int) -> tuple[Layout, str | None]:
    """The layout for `world` ranks: DP recomputed when MP×PP divides the world."""
    p = job.parallel
    mp_pp = p["model_parallel"] * p["pipeline_stage"]
    if world % mp_pp:
        raise TrainError(f"world size {world} is not a multiple of model_parallel × "
                         f"pipeline_stage = {mp_pp}")
    dp = world // mp_pp
    try:  # plan wrote the split into job.yaml; a hand-written job without one: the same rule
        split = resolve_split(p["layers_per_stage"], int(job.model["n_layer"]),
                              p["pipeline_stage"])
    except SplitError as e:
        raise TrainError(f"{job.path}: {e}") from None
    note = None
    if dp != p["data_parallel"]:
        note = (f"parallel.data_parallel={p['data_parallel']} does not match {world} ranks; "
                f"using data_parallel={dp}")
    return Layout(data_parallel=dp, model_parallel=p["model_parallel"],
                  pipeline_stage=p["pipeline_stage"], micro_batch_size=p["micro_batch_size"],
                  micro_batch_num=p["micro_batch_num"], layers_per_stage=tuple(split)), note


def block_stages(layout: Layout) -> list[int]:
    """Pipeline stage of every transformer block, in block order (job.yaml's split)."""
    return stage_of_layers(layout.layers_per_stage)


def note(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


# --- distributed --------------------------------------------------------------------------------

def init_distributed(device_target: str) -> Dist:
    """Initialise communication from the environment (see module docstring)."""
    from mindspore.communication import get_group_size, get_rank, init

    if os.environ.get("RANK_TABLE_FILE"):
        if device_target != "Ascend":
            raise TrainError(f"RANK_TABLE_FILE is set but train.device_target={device_target}: "
                             "rank-table launches are Ascend (HCCL) only")
        init("hccl")
        return Dist("ranktable", get_rank(), get_group_size())
    if os.environ.get("MS_ROLE"):
        sched_wait.init_cluster(init, os.environ)  # a worker waits for the scheduler's port first
        return Dist("cluster", get_rank(), get_group_size())
    return Dist("single", 0, 1)


# --- resume --------------------------------------------------------------------------------------

def agree_resume_step(output_dir: Path, dist: Dist, layout: Layout, steps: int,
                      reduce: AllReduceSum | None) -> int | None:
    """Newest step complete on every rank: each rank checks its own files, then a SUM all-reduce
    of a per-step presence vector (`reduce`, compiled for steps + 1 values) finds the steps
    every rank has."""
    own = [s for s in ck.complete_steps(output_dir, dist.rank, layout.manifest()) if s <= steps]
    if reduce is None:
        return max(own) if own else None
    presence = np.zeros(steps + 1, dtype=np.float32)
    presence[own] = 1.0
    total = reduce(presence)
    common = np.nonzero(total >= dist.world - 0.5)[0]
    return int(common.max()) if common.size else None


def global_loss(local: float, dist: Dist, layout: Layout,
                reduce: AllReduceSum | SharedSum | None) -> float:
    """The job's loss from this rank's (every rank must call this at the same step).

    The mean over the ranks that compute the loss: with pipeline stages only the last stage's
    ranks do, and their output is the sum over micro-batches (nn.PipelineCell), divided here;
    MP ranks of a DP group hold the same value, so the mean is over the data-parallel batches,
    each rank's mean token loss, the loss whose averaged gradient the step applied.
    """
    if reduce is None:
        return local
    last_stage = dist.rank >= dist.world - dist.world // layout.pipeline_stage
    if layout.pipeline_stage > 1:
        local /= layout.micro_batch_num
    total, count = reduce([local if last_stage else 0.0, 1.0 if last_stage else 0.0])
    return float(total / count)


# --- the loop ------------------------------------------------------------------------------------

def train(job: Job, resume: bool, t0: float) -> int:
    """Run the job in this (already role-checked) worker process; 0 when finished."""
    import mindspore as ms

    from .cells import AllReduceSum, build_cells

    t = job.train
    dist = init_distributed(t["device_target"])
    layout, fitted = fit_layout(job, dist.world)
    if fitted and dist.is_rank0:
        note(fitted)
    ms.set_seed(int(t["seed"]))
    out, data_path, steps = job.output_dir, Path(job.data["path"]), int(t["steps"])
    use_mask = _check_data(job, data_path)
    lrs = lr_schedule(steps, float(t["lr"]), float(t["min_lr"]), int(t["warmup_steps"]))
    semi_auto = layout.model_parallel * layout.pipeline_stage > 1
    strategy_file = ck.strategy_path(out, dist.rank) if semi_auto else None
    if strategy_file is not None:
        strategy_file.parent.mkdir(parents=True, exist_ok=True)
    reduce = AllReduceSum([2, steps + 1]) if dist.world > 1 else None  # before build_cells
    found = agree_resume_step(out, dist, layout, steps, reduce) if resume else None
    # sums: the loss and stop-check all-reduce from here on (shared memory when it can)
    model, step_cell, sums = build_cells(job, layout, dist, use_mask, lrs, strategy_file, reduce)
    start = _start_from(job, dist, resume, found, model, step_cell)
    if start >= steps:
        note(f"already at step {start} of {steps}: nothing to train")
        return 0
    batches = _batches(data_path, layout, dist, start, use_mask, semi_auto)
    step_cell.set_train(True)
    meta = _manifest_meta(job, layout, dist)
    stop_file = graceful.request_path(job.path.parent)
    stop_poll = graceful.StopPoll(stop_file, sums, dist.is_rank0, start)
    log = StepLogger(job, layout.global_batch, dist.is_rank0, t0, start)
    for step in range(start + 1, steps + 1):
        batch = next(batches)
        loss = step_cell(*(batch if use_mask else (batch[0], batch[0])))
        stop = stop_poll(step)
        value = None
        if step % int(t["log_steps"]) == 0 or step == steps or stop:
            value = log(step, global_loss(float(loss.asnumpy()), dist, layout, sums))
        if step % int(t["save_steps"]) == 0 or step == steps or stop:
            extra = {} if value is None else {"loss": value}  # full precision, for comparisons
            ck.save(lambda p: ms.save_checkpoint(step_cell, str(p)), out, dist.rank, step,
                    {**meta, "samples_per_rank": step * layout.rank_batch, **extra})
            ck.prune(out, dist.rank, int(t["keep_checkpoints"]))
        if stop:
            note(f"stop requested ({stop_file}): saved step {step}, exiting")
            return 0
    return 0


def _check_data(job: Job, data_path: Path) -> bool:
    """Refuse data whose samples do not fit model.seq_length; True when it has a loss_mask."""
    width = sample_length(data_path)
    if width != int(job.model["seq_length"]) + 1:
        raise TrainError(f"data.path={str(data_path)!r} holds samples of {width} token ids, "
                         f"model.seq_length={job.model['seq_length']} needs "
                         f"{int(job.model['seq_length']) + 1} (prepare-data --seq-length "
                         f"{job.model['seq_length']}, or --set model.seq_length={width - 1})")
    return has_column(data_path, "loss_mask")


def _start_from(job: Job, dist: Dist, resume: bool, found: int | None, model: Any,
                step_cell: Any) -> int:
    """The step training starts after: the resumed checkpoint's (loaded), else 0 (a finetune
    loads train.load_checkpoint first)."""
    import mindspore as ms

    t, out = job.train, job.output_dir
    if resume:
        if found is None:
            note("--resume: no checkpoint complete on every rank; starting from step 0")
            ck.record_resumed(0)
            return 0
        params = ms.load_checkpoint(str(ck.ckpt_path(out, dist.rank, found)))
        params.pop("learning_rate", None)  # the schedule comes from this run's job file
        ms.load_param_into_net(step_cell, params)
        note(f"resumed from step {found} ({ck.ckpt_path(out, dist.rank, found)})")
        ck.record_resumed(found)
        return found
    if t["mode"] == "finetune":
        if t["load_checkpoint"]:
            load_pretrained(model, Path(t["load_checkpoint"]))
        else:
            note("train.mode=finetune with train.load_checkpoint empty: starting from init")
    return 0


def _batches(data_path: Path, layout: Layout, dist: Dist, start: int, use_mask: bool,
             semi_auto: bool) -> Any:
    """This rank's batch iterator, from the data position after `start` steps."""
    if semi_auto:  # every rank reads the whole global batch; MindSpore slices it
        dataset = create_dataset(data_path, layout.global_batch, skip_samples=start *
                                 layout.global_batch, columns=_columns(use_mask))
    else:
        dataset = create_dataset(data_path, layout.rank_batch, num_shards=layout.data_parallel,
                                 shard_id=dist.rank, skip_samples=start * layout.rank_batch,
                                 columns=_columns(use_mask))
    return dataset.create_tuple_iterator()


def _manifest_meta(job: Job, layout: Layout, dist: Dist) -> dict[str, Any]:
    """What every checkpoint manifest of this run records besides step, rank, size, sha256."""
    return {"job_id": job.job_id, "job": job.to_dict()["job"], "train": dict(job.train),
            "layout": layout.manifest(), "world_size": dist.world,
            "micro_batch_size": layout.micro_batch_size,
            "micro_batch_num": layout.micro_batch_num, "model": dict(job.model),
            "device_target": job.train["device_target"],
            "template": str(job.data["template"])}


def _columns(use_mask: bool) -> tuple[str, ...]:
    return ("input_ids", "loss_mask") if use_mask else ("input_ids",)


def load_pretrained(model: Any, path: Path) -> None:
    """Load a single-device checkpoint (e.g. from convert-weights; ours or MindFormers'
    parameter names) into the model."""
    import mindspore as ms

    if not path.is_file():
        raise TrainError(f"train.load_checkpoint={str(path)!r}: no such file")
    params = ms.load_checkpoint(str(path))
    if mindformers_ckpt.is_mindformers(params):  # MindFormers' names: mapped to ours
        try:
            arrays, _ = mindformers_ckpt.from_checkpoint(params, model.config, str(path))
        except ConvertError as e:
            raise TrainError(f"train.load_checkpoint: {e}") from None
        dtype = np.float16 if model.config.param_dtype == "float16" else np.float32
        params = {n: ms.Parameter(ms.Tensor(a.astype(dtype)), name=n) for n, a in arrays.items()}
    missing, _ = ms.load_param_into_net(model, params)
    if missing:
        raise TrainError(f"train.load_checkpoint={str(path)!r}: missing parameters "
                         f"{missing[:3]}{' ...' if len(missing) > 3 else ''}")
    note(f"loaded {len(params)} parameters from {path}")


def main(argv: Sequence[str] | None, share: cpu_share.Share | None) -> int:
    """`python -m orchestrate_bloom.train` (see module docstring). `share`: the core share
    __main__ applied before numpy loaded (None: none); main only sizes MindSpore's pools."""
    t0 = time.monotonic()
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.train",
                                     description="Train Bloom from a job file.")
    parser.add_argument("--job", type=Path, required=True, help="job.yaml (see module docstring)")
    parser.add_argument("--resume", action="store_true",
                        help="Continue from the newest checkpoint complete on every rank.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="Override one job value (repeatable).")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.job, args.overrides)
        check_job(job)
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE, device_target=job.train["device_target"])
        cpu_share.apply_to_mindspore(ms, share)
        if gk_note := graph_kernel.enable(ms, job):  # train.graph_kernel (CPU fusion)
            note(gk_note)
        if os.environ.get("RANK_TABLE_FILE") and os.environ.get("DEVICE_ID"):
            ms.set_context(device_id=int(os.environ["DEVICE_ID"]))
        if os.environ.get("MS_ROLE") in ("MS_SCHED", "MS_PSERVER"):
            from mindspore.communication import init

            init()  # serves the cluster; returns (or exits) once the workers have finished
            return 0
        return train(job, args.resume, t0)
    except (SettingsError, TrainError, DataError, ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1

