"""Benchmark one training step: our MindSpore trainer (graph mode) vs HF transformers + torch AdamW.

    python bench/train_step.py [--steps 20]

Same shapes on both sides, CPU, fp32, random token ids: `tiny` (vocab 1000, hidden 64, 2 layers,
4 heads, seq 64, batch 8) and `small` (vocab 4096, hidden 256, 4 layers, 8 heads, seq 128,
batch 8). Ours is the exact train-step cell `model.train` runs (loss, grads, clipping,
AdamWeightDecay); the reference is BloomForCausalLM(labels=...) + clip_grad_norm_ + AdamW.
Prints the median steady-state step time of each (after warm-up/compile) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    "tiny": {"vocab_size": 1000, "hidden_size": 64, "n_layer": 2, "n_head": 4, "seq": 64,
             "batch": 8},
    "small": {"vocab_size": 4096, "hidden_size": 256, "n_layer": 4, "n_head": 8, "seq": 128,
              "batch": 8},
}


def ours(cfg: dict[str, int], steps: int, warmup: int) -> list[float]:
    import mindspore as ms
    import yaml
    from mindspore import Tensor

    from model.job import load_job
    from model.schedule import lr_schedule
    from model.train import Dist, build_cells, fit_layout

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "job.yaml"
        job_file.write_text(yaml.safe_dump({
            "model": {k: cfg[k] for k in ("vocab_size", "hidden_size", "n_layer", "n_head")}
            | {"seq_length": cfg["seq"], "compute_dtype": "float32"},
            "parallel": {"micro_batch_size": cfg["batch"], "optimizer_shard": False},
            "train": {"device_target": "CPU", "steps": steps + warmup, "lr": 1e-4},
            "data": {"path": tmp}}))
        job = load_job(job_file)
    dist = Dist("single", 0, 1)
    layout, _ = fit_layout(job, 1)
    lrs = lr_schedule(steps + warmup, 1e-4, 1e-5, 0)
    _, step_cell = build_cells(job, layout, dist, False, lrs, None)
    step_cell.set_train(True)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + warmup):
        ids = Tensor(rng.integers(4, cfg["vocab_size"], (cfg["batch"], cfg["seq"] + 1),
                                  dtype=np.int32))
        t = time.perf_counter()
        float(step_cell(ids, ids).asnumpy())
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def reference(cfg: dict[str, int], steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=cfg["vocab_size"],
                                         hidden_size=cfg["hidden_size"], n_layer=cfg["n_layer"],
                                         n_head=cfg["n_head"], hidden_dropout=0.0,
                                         attention_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    times = []
    for i in range(steps + warmup):
        ids = torch.randint(4, cfg["vocab_size"], (cfg["batch"], cfg["seq"] + 1))
        t = time.perf_counter()
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per side.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps (compile) first.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print("CPU, fp32, median of timed steps after warm-up; tokens/step = batch x seq")
    for name, cfg in CONFIGS.items():
        a = statistics.median(ours(cfg, args.steps, args.warmup))
        b = statistics.median(reference(cfg, args.steps, args.warmup))
        tokens = cfg["batch"] * cfg["seq"]
        print(f"{name:5s} ours (MindSpore graph): {a * 1e3:8.1f} ms/step {tokens / a:9.0f} tok/s | "
              f"HF+torch AdamW: {b * 1e3:8.1f} ms/step {tokens / b:9.0f} tok/s | "
              f"ratio (HF / ours): {b / a:.2f}x")


if __name__ == "__main__":
    main()
