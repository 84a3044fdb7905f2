"""Side-by-side op profile of one training step: ours (MindSpore graph) vs HF + torch AdamW.

    python bench/train_step_profile.py [--steps 5] [--configs tiny small]

The same shapes, threads and cells as `python bench/train_step.py` (its ours()/reference()),
each side profiled by its own profiler (MindSpore's Profiler on CPU: the kernel times of the
actor thread; torch.profiler: the self time of each aten op on the calling thread), then the
op times are summed into categories, in ms per step:

    matmul fwd / matmul grads   MatMul, BatchMatMul, Custom ops; aten mm/bmm/addmm/
                                baddbmm; ours split by time (before the loss kernel: forward),
                                torch by the autograd backward node above the op
    attention softmax           Softmax and its gradient (MindSpore expands it into ops)
    layernorm                   LayerNorm ops and their gradients
    optimizer+clip              AdamWeightDecay + the clipping (ours: the train-step cell's own
                                kernels); torch: Optimizer.step and clip_grad_norm_'s ops
    loss                        the cross entropy and its gradient
    elementwise / reductions    what is left that is elementwise / a sum or mean
    other                       the rest (transposes, copies, gathers, slices)

`sum of ops` is the total of the categories, `wall` the median step time of the same process
without a profiler (the difference is time between kernels: launch overhead, host code).
Profilers cost time of their own: compare the sides, not these figures to bench/train_step.py.
Load matters: run it under the heavy lock on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_step  # noqa: E402  (this folder's benchmark: the same cells and shapes)

CATEGORIES = ("matmul fwd", "matmul grads", "attention softmax", "layernorm", "optimizer+clip",
              "loss", "elementwise", "reductions", "other")
MS_ELEMENTWISE = {"Add", "Sub", "Mul", "RealDiv", "Div", "Sigmoid", "SigmoidGrad", "Cast", "Neg",
                  "AddN", "Maximum", "Minimum", "Sqrt", "Rsqrt", "Square", "Exp", "Select",
                  "Tanh", "GeLU", "GeLUGrad", "Muls", "Adds", "OnesLike", "ZerosLike"}
MS_MATMUL = {"MatMul", "BatchMatMul", "Custom"}
TORCH_MATMUL = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}
TORCH_ELEMENTWISE = ("add", "sub", "mul", "div", "tanh", "gelu", "sigmoid", "pow", "where",
                     "masked_fill", "fill_", "copy_", "zero_", "neg", "exp", "lerp", "sqrt",
                     "addcmul", "addcdiv", "threshold")


def ms_category(op_type: str, name: str, forward: bool) -> str:
    """The category of one MindSpore kernel (its type, full scope name, run before the loss)."""
    if op_type in MS_MATMUL:
        return "matmul fwd" if forward else "matmul grads"
    if "optimizer" in name:
        return "optimizer+clip"
    if "CrossEntropy" in name:
        return "loss"
    if "Softmax" in name:
        return "attention softmax"
    if ("layernorm" in name.lower() or "ln_f" in name or op_type.startswith("LayerNorm")
            or op_type == "ReduceMean"):  # the only means: LayerNorm's gradient (scope lost)
        return "layernorm"
    if name.count("/") == 1 and name.startswith("Default/"):  # the train step's own: clipping
        return "optimizer+clip"
    if op_type in MS_ELEMENTWISE:
        return "elementwise"
    return "reductions" if op_type.startswith("Reduce") else "other"


def profile_ours(step: Callable[[], None], steps: int) -> dict[str, float]:
    """ms per step by category of our step, from MindSpore's CPU profiler files."""
    from mindspore.profiler import Profiler

    with tempfile.TemporaryDirectory() as out:
        prof = Profiler(output_path=out)
        for _ in range(steps):
            step()
        prof.stop()
        prof.analyse()
        framework = next(Path(out).glob("*/FRAMEWORK"))
        types = {row["full_op_name"]: row["op_type"]
                 for row in csv.DictReader((framework / "cpu_op_detail_info_0.csv").open())}
        runs: dict[str, list[tuple[int, float]]] = {}  # name -> [(start ns, ms)] per step
        for line in (framework / "cpu_op_execute_timestamp_0.txt").read_text().splitlines():
            name, _, times = line.split(";", 2)
            runs[name] = [(int(t.split(",")[0]), float(t.split(",")[1])) for t in times.split()]
    loss = next(n for n in runs if "CrossEntropy" in n and not n.startswith("Gradients"))
    loss_starts = sorted(s for s, _ in runs[loss])
    totals: dict[str, float] = defaultdict(float)
    for name, occurrences in runs.items():
        for i, (start, ms) in enumerate(sorted(occurrences)):  # the i-th: step i's (graph mode)
            before_loss = (len(occurrences) == steps and start < loss_starts[i]
                           and not name.startswith("Gradients"))
            totals[ms_category(types.get(name, name.split("/")[-1].split("-")[0]), name,
                               before_loss)] += ms / steps
    return totals


def torch_category(name: str, ancestors: list[str]) -> str:
    """The category of one aten op (its name, the names of the events above it)."""
    above = " ".join(ancestors)
    if "Optimizer.step" in above or "_foreach" in name or "norm" in name and "layer" not in name:
        return "optimizer+clip"  # clip_grad_norm_: norms, stack, foreach_mul_
    if name in TORCH_MATMUL:
        return "matmul grads" if "Backward" in above or "backward" in above else "matmul fwd"
    if "nll_loss" in name or "log_softmax" in name or "NllLoss" in above or "LogSoftmax" in above:
        return "loss"
    if "softmax" in name or "Softmax" in above:
        return "attention softmax"
    if "layer_norm" in name or "LayerNorm" in above:
        return "layernorm"
    if any(name.startswith(f"aten::{op}") for op in TORCH_ELEMENTWISE):
        return "elementwise"
    return "reductions" if name in ("aten::sum", "aten::mean") else "other"


def profile_reference(step: Callable[[], None], steps: int) -> dict[str, float]:
    """ms per step by category of the HF + torch step, from torch.profiler's self times."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if not event.name.startswith("aten::") or event.self_cpu_time_total <= 0:
            continue
        ancestors, parent = [], event.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        totals[torch_category(event.name, ancestors)] += event.self_cpu_time_total / 1e3 / steps
    return totals


def wall(step: Callable[[], None], steps: int) -> float:
    """Median ms of `steps` unprofiled steps."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="Profiled steps per side.")
    parser.add_argument("--configs", nargs="+", choices=sorted(train_step.CONFIGS),
                        default=list(train_step.CONFIGS), help="Shapes (default: all).")
    args = parser.parse_args()
    threads = train_step.setup(None, len(os.sched_getaffinity(0)))
    for name in args.configs:
        cfg = train_step.CONFIGS[name]
        sides = {"ours": train_step.ours(cfg, 4 * args.steps + 10),
                 "HF+torch": train_step.reference(cfg)}
        for step in sides.values():  # compile / allocate
            for _ in range(3):
                step()
        walls = {side: wall(step, 2 * args.steps) for side, step in sides.items()}
        ours, ref = profile_ours(sides["ours"], args.steps), profile_reference(
            sides["HF+torch"], args.steps)
        print(f"\n{name}: ms per step, {threads} threads a side, {args.steps} profiled steps, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"  {'category':20s} {'ours':>8s} {'HF+torch':>9s} {'ours - HF':>10s}")
        for cat in CATEGORIES + ("sum of ops", "wall (unprofiled)"):
            a, b = ((walls["ours"], walls["HF+torch"]) if cat.startswith("wall") else
                    (sum(ours.values()), sum(ref.values())) if cat.startswith("sum") else
                    (ours[cat], ref[cat]))
            print(f"  {cat:20s} {a:8.1f} {b:9.1f} {a - b:+10.1f}", flush=True)


if __name__ == "__main__":
    main()
