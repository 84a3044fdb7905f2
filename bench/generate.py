"""Generation speed of our MindSpore Bloom vs HF transformers on torch CPU, same weights, one run.

    pip install torch==2.13.0 "transformers<5"   # the reference; not a project dependency
    python bench/generate.py                     # ~2-4 minutes on 2 cores
    python bench/generate.py --skip-560m

Part 1: greedy generation of 64 new tokens after a 16-token prompt, batch 1 and batch 8, on
Bloom hidden 256 / 4 layers / 8 heads / vocab 4096 with random weights (HF init, converted with
model.convert). Both sides get one warm-up run (our graph compiles there), then --repeats timed
runs in turns (HF, ours, HF, ours, ...: fairer when other processes load the machine); medians.
tokens/s counts generated tokens of all rows; ratio = ours / HF (goal >= 1.0). Two more ratios
are less sensitive to load from other processes: of the best (fastest) runs, and of this
process's CPU seconds per token (spinning thread pools count against their side). Both sides
must produce the same tokens ("same tokens" column). torch's and MindSpore's CPU threads are
set apart (--threads, --ms-threads); on a loaded machine more threads than free cores hurt both.

Part 2: one forward pass (batch 1, seq 64) of the 560m preset with random weights, ours and
HF, each in its own child process: first call (includes our graph compile), a steady call,
and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = {"vocab_size": 4096, "hidden_size": 256, "n_layer": 4, "n_head": 8}
PROMPT_LEN = 16
NEW_TOKENS = 64


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_pair(threads: int, ms_threads: int | None):
    """(HF model, our Generator) with identical random weights."""
    import torch
    from orchestrate_bloom.bloom import BloomLMHeadModel, load_parameters
    from orchestrate_bloom.ckpt.convert import hf_to_ours
    from orchestrate_bloom.config import BloomConfig
    from orchestrate_bloom.infer import Generator, set_graph_mode
    from transformers import BloomConfig as HFConfig
    from transformers import BloomForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = BloomForCausalLM(HFConfig(**SMALL, bos_token_id=1, eos_token_id=2,
                                   pad_token_id=3)).eval()
    with torch.no_grad():  # eos's logit is 0 (tied head), never the max in practice: 64 tokens
        hf.transformer.word_embeddings.weight[2].fill_(0.0)
    config = BloomConfig(**SMALL, seq_length=2048)
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    set_graph_mode("CPU", ms_threads)
    ours = BloomLMHeadModel(config)
    ours.set_train(False)
    load_parameters(ours, hf_to_ours(state, config))
    return hf, Generator(ours)


def time_interleaved(fns: dict, repeats: int) -> dict:
    """Warm each fn up once, then time them in turns (A B A B …) so that load from other
    processes hits both sides alike; returns name -> {"median", "best", "cpu", "result"}:
    wall seconds (median, min) and this process's CPU seconds (median) per call."""
    results = {name: fn() for name, fn in fns.items()}
    walls: dict = {name: [] for name in fns}
    cpus: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu, start = time.process_time(), time.perf_counter()
            results[name] = fn()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - cpu)
    return {name: {"median": statistics.median(walls[name]), "best": min(walls[name]),
                   "cpu": statistics.median(cpus[name]), "result": results[name]}
            for name in fns}


def bench_generate(batch: int, repeats: int, hf, generator) -> dict:
    import torch
    from orchestrate_bloom.infer import GenerateConfig

    rng = np.random.default_rng(batch)
    prompts = rng.integers(4, SMALL["vocab_size"], (batch, PROMPT_LEN))
    prompts[:, 0] = 1
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                              min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=3)
        return out[:, PROMPT_LEN:].tolist()

    gen = GenerateConfig(max_new_tokens=NEW_TOKENS)
    rows = prompts.tolist()
    timed = time_interleaved({"hf": run_hf, "ours": lambda: generator.generate(rows, gen)},
                             repeats)
    hf, ours = timed["hf"], timed["ours"]
    hf_tokens = batch * NEW_TOKENS
    our_tokens = sum(len(r) for r in ours["result"])

    def ratio(key: str) -> float:  # ours tokens/s over HF tokens/s, by wall or CPU seconds
        return (our_tokens / ours[key]) / (hf_tokens / hf[key])

    return {"batch": batch, "hf_tokens_per_s": hf_tokens / hf["median"],
            "ours_tokens_per_s": our_tokens / ours["median"], "ratio": ratio("median"),
            "best_ratio": ratio("best"), "cpu_ratio": ratio("cpu"),
            "same_tokens": ours["result"] == hf["result"]}


def forward_560m(side: str) -> dict:
    """One batch-1, seq-64 forward of the 560m preset (random weights) in this process."""
    if side == "ours":
        from mindspore import Tensor
        from orchestrate_bloom.bloom import BloomLMHeadModel
        from orchestrate_bloom.config import load_preset
        from orchestrate_bloom.infer import set_graph_mode

        set_graph_mode("CPU")
        config = load_preset("560m", compute_dtype="float32")
        model = BloomLMHeadModel(config)
        model.set_train(False)
        ids = Tensor(np.random.default_rng(0).integers(4, 250880, (1, 64)).astype(np.int32))
        call = lambda: model(ids).asnumpy()  # noqa: E731
    else:
        import torch
        from transformers import BloomConfig as HFConfig
        from transformers import BloomForCausalLM

        torch.set_num_threads(2)
        model = BloomForCausalLM(HFConfig(vocab_size=250880, hidden_size=1024, n_layer=24,
                                          n_head=16)).eval()
        ids = torch.tensor(np.random.default_rng(0).integers(4, 250880, (1, 64)))

        def call():
            with torch.no_grad():
                return model(input_ids=ids).logits.numpy()
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    start = time.perf_counter()
    call()
    steady = time.perf_counter() - start
    return {"side": side, "first_s": first, "steady_s": steady, "peak_rss_gib": peak_rss_gib()}


def run_child(side: str) -> dict:
    env = dict(os.environ, GLOG_v="3")
    out = subprocess.run([sys.executable, __file__, "--child-560m", side], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per measurement.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--ms-threads", type=int,
                        help="MindSpore CPU kernel threads (default: MindSpore's own, 25).")
    parser.add_argument("--skip-560m", action="store_true", help="Only the generation part.")
    parser.add_argument("--child-560m", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_560m:
        print(json.dumps(forward_560m(args.child_560m)))
        return
    os.environ.setdefault("GLOG_v", "3")
    import mindspore
    import torch
    import transformers

    print(f"mindspore {mindspore.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"MindSpore threads {args.ms_threads or 'default (25)'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"greedy generation: {NEW_TOKENS} new tokens after {PROMPT_LEN}-token prompts, "
          f"Bloom {SMALL}, median of {args.repeats} after a warm-up")
    hf, generator = build_pair(args.threads, args.ms_threads)
    print(f"{'batch':>5} {'HF tok/s':>10} {'ours tok/s':>11} {'ratio':>7} {'best-run ratio':>15}"
          f" {'CPU-time ratio':>15}  same tokens")
    for batch in (1, 8):
        r = bench_generate(batch, args.repeats, hf, generator)
        print(f"{r['batch']:>5} {r['hf_tokens_per_s']:>10.1f} {r['ours_tokens_per_s']:>11.1f} "
              f"{r['ratio']:>7.2f} {r['best_ratio']:>15.2f} {r['cpu_ratio']:>15.2f}"
              f"  {r['same_tokens']}")
    print(f"load average now {os.getloadavg()[0]:.1f} (other processes skew both sides)")
    if args.skip_560m:
        return
    print("560m forward (batch 1, seq 64, float32, random weights), each side in its own process:")
    print(f"{'side':>5} {'first call s':>13} {'steady s':>9} {'peak RSS GiB':>13}")
    results = {side: run_child(side) for side in ("ours", "hf")}
    for side, r in results.items():
        print(f"{side:>5} {r['first_s']:>13.2f} {r['steady_s']:>9.2f} {r['peak_rss_gib']:>13.2f}")
    print(f"steady forward ratio (HF time / ours): "
          f"{results['hf']['steady_s'] / results['ours']['steady_s']:.2f}")


if __name__ == "__main__":
    main()
