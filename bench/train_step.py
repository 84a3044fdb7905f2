"""Benchmark one training step: our MindSpore trainer (graph mode) vs HF transformers + torch AdamW.

    python bench/train_step.py [--steps 20] [--threads 2] [--ms-threads N]
    python bench/train_step.py --threads 1 --ms-threads 1   # on a loaded machine: CPU time counts
    python bench/train_step.py --before --configs tiny      # also: the fast paths off (before)
    python bench/train_step.py --no-graph-kernel            # without the train.graph_kernel row

Same shapes on both sides, CPU, fp32, random token ids: `tiny` (vocab 1000, hidden 64, 2 layers,
4 heads, seq 64, batch 8) and `small` (vocab 4096, hidden 256, 4 layers, 8 heads, seq 128,
batch 8). Ours is the exact train-step cell `model.train` runs (loss, grads, clipping,
AdamWeightDecay); the reference is BloomForCausalLM(labels=...) + clip_grad_norm_ + AdamW.
Steps of the two alternate after warm-up/compile, so both see the same background load (the
order rotated every round, so that each side follows the other as often; see compare); prints
the median step time of each and the ratio (HF time / ours: >= 1.0 means ours is at least as
fast), the ratio of the best steps, and the ratio of this process's CPU seconds per step, which
other processes' load skews least (with one thread per side it is the work each side does; with
more threads, spinning thread pools count against their side). torch's threads are
--threads; MindSpore's CPU kernel threads --ms-threads (default: what the trainer gives one
rank on this machine through cpu_share, as launch.sh runs it: one thread per usable core,
instead of MindSpore's own 25 on any machine); numpy's BLAS pool gets the same count, set
before numpy loads. The default run is what issue #17
asks: tiny and small, both sides with this machine's core count of threads.

The row `ours, graph_kernel on` is our cell with train.graph_kernel (MindSpore's AKG fusion,
model/train/graph_kernel.py) in a child process of its own, with OMP_WAIT_POLICY=PASSIVE as the
trainer sets it: libgomp is one library per process and reads the policy when it loads, so in
this process it would also put torch's OpenMP pool to sleep between ops (HF tiny 21-24 -> 35
ms). The child runs one step per request, in the same rotation as the other sides; its step
times are measured in the child. Its compile (seconds more than ours) is in the warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    "tiny": {"vocab_size": 1000, "hidden_size": 64, "n_layer": 2, "n_head": 4, "seq": 64,
             "batch": 8},
    "small": {"vocab_size": 4096, "hidden_size": 256, "n_layer": 4, "n_head": 8, "seq": 128,
              "batch": 8},
}


def ours(cfg: dict[str, int], steps: int, fast: bool = True,
         graph_kernel: bool = False) -> Callable[[], None]:
    """One training step of our trainer's cell on fresh random ids (built and compiled here);
    `fast=False`: with the layers' CPU fast paths off (the kernel paths of before);
    `graph_kernel`: with train.graph_kernel on (only in a process of its own, see serve)."""
    import mindspore as ms
    import numpy as np
    import yaml
    from mindspore import Tensor
    from orchestrate_bloom.layers import set_fast_paths
    from orchestrate_bloom.train import graph_kernel as gk
    from orchestrate_bloom.train.cells import build_cells
    from orchestrate_bloom.train.job import load_job
    from orchestrate_bloom.train.schedule import lr_schedule
    from orchestrate_bloom.train.trainer import Dist, fit_layout

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "job.yaml"
        job_file.write_text(yaml.safe_dump({
            "model": {k: cfg[k] for k in ("vocab_size", "hidden_size", "n_layer", "n_head")}
            | {"seq_length": cfg["seq"], "compute_dtype": "float32"},
            "parallel": {"micro_batch_size": cfg["batch"], "optimizer_shard": False},
            "train": {"device_target": "CPU", "steps": steps, "lr": 1e-4,
                      "graph_kernel": graph_kernel},
            "data": {"path": tmp}}))
        job = load_job(job_file)
    if graph_kernel:
        print(gk.enable(ms, job), file=sys.stderr, flush=True)
    layout, _ = fit_layout(job, 1)
    model, step_cell, _ = build_cells(job, layout, Dist("single", 0, 1), False,
                                      lr_schedule(steps, 1e-4, 1e-5, 0), None)
    set_fast_paths(model, fast)
    step_cell.set_train(True)
    rng = np.random.default_rng(0)

    def step() -> None:
        ids = Tensor(rng.integers(4, cfg["vocab_size"], (cfg["batch"], cfg["seq"] + 1),
                                  dtype=np.int32))
        float(step_cell(ids, ids).asnumpy())

    return step


def reference(cfg: dict[str, int]) -> Callable[[], None]:
    """One HF BloomForCausalLM + clip_grad_norm_ + AdamW step on fresh random ids."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=cfg["vocab_size"],
                                         hidden_size=cfg["hidden_size"], n_layer=cfg["n_layer"],
                                         n_head=cfg["n_head"], hidden_dropout=0.0,
                                         attention_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step() -> None:
        ids = torch.randint(4, cfg["vocab_size"], (cfg["batch"], cfg["seq"] + 1))
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.loss.item()

    return step


def timed(step: Callable[[], tuple[float, float] | None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process that ran it) of one step; a step that
    returns a pair measured itself (in its own process)."""
    cpu, t = time.process_time(), time.perf_counter()
    measured = step()
    return measured or (time.perf_counter() - t, time.process_time() - cpu)


def child(name: str, steps: int, ms_threads: int,
          folder: str) -> tuple[Callable[[], tuple[float, float]], Callable[[], None]]:
    """`ours, graph_kernel on` in a child process (see the module docstring): one step per
    line sent, its (wall, CPU) seconds read back. Returns (step, stop); stop closes the
    request pipe and waits for the child to end. AKG's build output goes to `folder`."""
    from orchestrate_bloom.train import graph_kernel as gk

    env = dict(os.environ, **{gk.WAIT_POLICY[0]: gk.WAIT_POLICY[1], gk.CACHE_VAR: folder})
    ask_r, ask_w = os.pipe()  # own pipes, not stdin/stdout: MindSpore's kernel build server
    ans_r, ans_w = os.pipe()  # (a grandchild) inherits those (a first try hung on them)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name, "--steps", str(steps),
                             "--ms-threads", str(ms_threads), "--fds", f"{ask_r},{ans_w}"],
                            stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env, cwd=folder,
                            pass_fds=(ask_r, ans_w))
    os.close(ask_r)
    os.close(ans_w)
    ask, answers = os.fdopen(ask_w, "w"), os.fdopen(ans_r)

    def step() -> tuple[float, float]:
        ask.write("step\n")
        ask.flush()
        answer = answers.readline().split()
        if len(answer) != 2:
            raise SystemExit(f"graph_kernel child for {name} died (exit {proc.wait()})")
        return float(answer[0]), float(answer[1])

    def stop() -> None:
        ask.close()
        proc.wait(timeout=60)

    return step, stop


def serve(name: str, steps: int, fds: str) -> None:
    """The child's side: build ours with graph_kernel on, run a step per line read from the
    first fd of `fds` ("read,write"), answer on the second."""
    step = ours(CONFIGS[name], steps, graph_kernel=True)
    ask_fd, ans_fd = (int(fd) for fd in fds.split(","))
    with os.fdopen(ask_fd) as ask, os.fdopen(ans_fd, "w") as answers:
        for _ in ask:
            print(*timed(step), file=answers, flush=True)


def compare(name: str, steps: int, warmup: int, before: bool, gk_threads: int | None) -> None:
    """Alternate the sides' steps after warm-up, the order rotated every round; print medians
    and ratios (HF / side).

    The rotation makes each side follow each other side equally often: a step right after the
    other side's pays for what that side left running (torch's OpenMP threads spin on after a
    step, MindSpore's kernel threads yield-spin). With a fixed order, of three identical
    copies of our tiny cell alternating with HF, the one right after HF took 24.8 ms a step,
    the other two 21.0. `gk_threads`: also `ours, graph_kernel on`, a child process with
    that many MindSpore threads (None: not).
    """
    cfg = CONFIGS[name]
    sides: dict[str, Callable[[], tuple[float, float] | None]] = {
        "ours (MindSpore graph)": ours(cfg, steps + warmup)}
    if before:
        sides["ours, fast paths off"] = ours(cfg, steps + warmup, fast=False)
    folder, stops = tempfile.TemporaryDirectory(), []
    if gk_threads is not None:
        sides["ours, graph_kernel on"], stop = child(name, steps + warmup, gk_threads,
                                                     folder.name)
        stops.append(stop)
    sides["HF+torch AdamW"] = reference(cfg)
    for _ in range(warmup):  # compile / allocate
        for step in sides.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    order = list(sides)
    for i in range(steps):  # alternate, so all see the same background load
        for side in order[i % len(order):] + order[:i % len(order)]:
            times[side].append(timed(sides[side]))
    ref = times["HF+torch AdamW"]
    tokens = cfg["batch"] * cfg["seq"]
    for side, t in times.items():
        wall, cpu = (statistics.median(x[i] for x in t) for i in (0, 1))
        line = f"{name:5s} {side:23s} {wall * 1e3:8.1f} ms/step {tokens / wall:7.0f} tok/s"
        if t is not ref:
            line += (f" | ratio (HF / this): {statistics.median(w for w, _ in ref) / wall:.2f}x,"
                     f" best-step {min(w for w, _ in ref) / min(w for w, _ in t):.2f}x, "
                     f"CPU-time {statistics.median(c for _, c in ref) / cpu:.2f}x")
        print(line, flush=True)
    for stop in stops:
        stop()
    folder.cleanup()


def setup(ms_threads: int | None, torch_threads: int | None) -> int:
    """Size the thread pools of this process as the trainer sizes one rank's on this machine
    (cpu_share; MindSpore's kernel pool `ms_threads` if given) and torch's; call before numpy
    loads; torch_threads None: no torch (the graph_kernel child). Returns MindSpore's kernel
    thread count."""
    from orchestrate_bloom.train import cpu_share

    share = cpu_share.rank_share(0, 1, os.sched_getaffinity(0))  # what launch.sh's rank gets
    if ms_threads is not None:
        share = cpu_share.Share(cpus=share.cpus, threads=ms_threads, pinned=False)
    assert "numpy" not in sys.modules, "numpy's BLAS pool is sized when numpy loads"
    cpu_share.thread_env(share, os.environ)  # as the trainer's apply_from_env does
    import mindspore as ms

    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    ms.set_device("CPU")
    cpu_share.apply_to_mindspore(ms, share)  # as the trainer does
    return share.threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per side.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps (compile) first.")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch CPU threads (default: the usable cores, as MindSpore's).")
    parser.add_argument("--ms-threads", type=int,
                        help="MindSpore CPU kernel threads (default: the trainer's share of "
                        "this machine for one rank, cpu_share).")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS),
                        help="Which shapes to run (default: all).")
    parser.add_argument("--before", action="store_true",
                        help="Also time ours with the layers' CPU fast paths off (the kernel "
                        "paths of before), alternating with the other two.")
    parser.add_argument("--graph-kernel", action=argparse.BooleanOptionalAction, default=True,
                        help="Also time ours with train.graph_kernel on, in a child process "
                        "(default: on).")
    parser.add_argument("--serve", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # child
    parser.add_argument("--fds", default="", help=argparse.SUPPRESS)  # the child's pipes
    args = parser.parse_args()
    if args.serve:
        setup(args.ms_threads, None)
        serve(args.serve, args.steps, args.fds)
        return
    ms_threads = setup(args.ms_threads, args.threads)
    print(f"CPU, fp32, median of {args.steps} timed steps after {args.warmup} warm-up; tokens/step"
          f" = batch x seq; torch threads {args.threads}, MindSpore threads "
          f"{ms_threads}; load average {os.getloadavg()[0]:.1f}")
    for name in args.configs:
        compare(name, args.steps, args.warmup, args.before,
                ms_threads if args.graph_kernel else None)
    print(f"load average now {os.getloadavg()[0]:.1f} (other processes skew both sides)")


if __name__ == "__main__":
    main()
