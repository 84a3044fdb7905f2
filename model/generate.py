"""Text generation with a fixed-size KV cache in MindSpore graph mode (split out of infer.py).

    set_graph_mode("CPU")
    generator = Generator(load_model("bloom.ckpt", load_preset("tiny")))
    new_ids = generator.generate([[5, 6, 7]], GenerateConfig(max_new_tokens=8))

Two compiled graphs serve a whole generation: `BloomPrefill` (the left-padded prompt batch,
length rounded up to a multiple of BUCKET) and `BloomDecodeStep` (one token per row), sharing a
KVCache of a fixed length (rounded up to a multiple of CACHE_BUCKET) whose Parameters both
update in place: a step writes one slot, nothing recompiles per step, and later prompts of
similar length reuse both graphs (kept per batch size and cache length). Greedy tokens are
picked in the graph; only they (or, when sampling, the logits) come back to the host.
Sampling: temperature, then top-k, then top-p, as HF applies them. Rows that emit eos are
finished and padded. The text-level API is pipeline.py; the command line is infer.py.
"""


from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .ckpt.convert import load_checkpoint_arrays
from .config import BloomConfig, load_preset

if TYPE_CHECKING:
    from .bloom import BloomLMHeadModel

BUCKET = 16  # prompt lengths are rounded up to a multiple of this (fewer compiles)
CACHE_BUCKET = 16  # cache lengths too (larger: fewer compiles, but every step costs more)


class InferError(ValueError):
    """Bad generation settings or prompts."""


@dataclass(frozen=True)
class GenerateConfig:
    """How to pick tokens."""

    max_new_tokens: int = 32
    do_sample: bool = False  # False: greedy (argmax)
    temperature: float = 1.0  # logits are divided by this before top-k/top-p
    top_k: int = 0  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set with probability >= top_p (1.0 = all)
    seed: int | None = None  # sampling seed (None = fresh entropy)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InferError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature <= 0:
            raise InferError(f"temperature={self.temperature} must be > 0")
        if self.top_k < 0:
            raise InferError(f"top_k={self.top_k} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise InferError(f"top_p={self.top_p} must be in (0, 1]")


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def left_pad(prompts: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """(input_ids, attention_mask) int32 [batch, width], prompts right-aligned."""
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
    return ids, mask


def select_tokens(logits: np.ndarray, gen: GenerateConfig, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from float32 logits [batch, vocab]: argmax, or a filtered sample."""
    if not gen.do_sample:
        return logits.argmax(-1).astype(np.int32)
    scores = logits.astype(np.float64) / gen.temperature
    if 0 < gen.top_k < scores.shape[-1]:
        kth = np.partition(scores, -gen.top_k, axis=-1)[:, -gen.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if gen.top_p < 1.0:
        order = np.argsort(-scores, axis=-1)
        sorted_scores = np.take_along_axis(scores, order, -1)
        probs = np.exp(sorted_scores - sorted_scores[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        before = np.cumsum(probs, -1) - probs  # mass of strictly more likely tokens
        drop_sorted = before >= gen.top_p  # never drops the most likely token
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        scores = np.where(drop, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    u = rng.random((scores.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), scores.shape[-1] - 1).astype(np.int32)


class Generator:
    """Batch generation with the compiled prefill and decode graphs of one model.

    Graphs and caches are kept per (batch size, cache length), the `max_graphs` most recently
    used ones (each holds 2 * n_layer caches of batch * cache_len * hidden floats).
    """

    def __init__(self, model: BloomLMHeadModel, bucket: int = BUCKET,
                 cache_bucket: int = CACHE_BUCKET, max_graphs: int = 4) -> None:
        from .layers import alibi_slopes

        self.model = model
        self.config = model.config
        self.bucket = bucket
        self.cache_bucket = cache_bucket
        self.max_graphs = max_graphs
        self.slopes = alibi_slopes(self.config.n_head)  # float32 [n_head]
        self.graphs: OrderedDict[tuple[int, int], tuple[Any, Any]] = OrderedDict()

    def graphs_for(self, batch: int, cache_len: int) -> tuple[Any, Any]:
        """(BloomPrefill, BloomDecodeStep) sharing one KVCache of this shape (made on first
        use; each compiles on its first call)."""
        from .bloom import BloomDecodeStep, BloomPrefill, KVCache

        key = (batch, cache_len)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        else:
            cache = KVCache(self.config, batch, cache_len)
            self.graphs[key] = (BloomPrefill(self.model, cache), BloomDecodeStep(self.model, cache))
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        return self.graphs[key]

    def generate(self, prompts: Sequence[Sequence[int]], gen: GenerateConfig,
                 on_tokens: Callable[[np.ndarray], None] | None = None) -> list[list[int]]:
        """New tokens per prompt; a row stops after emitting eos (eos included).

        Args:
            prompts: token ids per prompt (each non-empty).
            gen: selection settings.
            on_tokens: called with the tokens [batch] chosen at each step (for streaming).
        """
        import mindspore as ms
        from mindspore import Tensor

        from .bloom import decode_bias

        if not prompts or any(len(p) == 0 for p in prompts):
            raise InferError("every prompt needs at least one token")
        c = self.config
        batch = len(prompts)
        prompt_len = round_up(max(len(p) for p in prompts), self.bucket)
        cache_len = round_up(prompt_len + gen.max_new_tokens, self.cache_bucket)
        prefill, decode = self.graphs_for(batch, cache_len)
        ids, mask = left_pad(prompts, prompt_len, c.pad_token_id)
        rng = np.random.default_rng(gen.seed)
        logits, greedy = prefill(Tensor(ids), Tensor(mask))
        key_mask = np.zeros((batch, cache_len), np.float32)
        key_mask[:, :prompt_len] = mask
        bias = decode_bias(key_mask, c.n_head)  # [batch, n_head, 1, cache_len]
        positions = mask.sum(1).astype(np.float32)  # ALiBi position of each row's next token
        finished = np.zeros(batch, bool)
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(gen.max_new_tokens):
            if gen.do_sample:
                tokens = select_tokens(logits.asnumpy(), gen, rng)
            else:
                tokens = greedy.asnumpy()
            tokens = np.where(finished, c.pad_token_id, tokens).astype(np.int32)
            for row in np.flatnonzero(~finished):
                out[row].append(int(tokens[row]))
            if on_tokens is not None:
                on_tokens(tokens)
            finished |= tokens == c.eos_token_id
            if finished.all() or step == gen.max_new_tokens - 1:
                break
            slot = prompt_len + step
            # The new token becomes visible: its slot gets ALiBi instead of MASK_FILL (the
            # same float32 values decode_bias gives; the graph has finished with `bias`).
            bias[:, :, 0, slot] = self.slopes[None, :] * positions[:, None]
            positions += 1.0
            logits, greedy = decode(Tensor(tokens[:, None]),
                                    Tensor(bias.reshape(batch * c.n_head, 1, cache_len)),
                                    Tensor([slot], ms.int32))
        return out


# ---------------------------------------------------------------------------- loading

def set_graph_mode(device: str = "CPU", cpu_threads: int | None = None) -> None:
    """MindSpore graph mode on `device` (CPU, Ascend or GPU).

    Args:
        device: MindSpore device target.
        cpu_threads: CPU kernel threads (MindSpore's default is 25, whatever the core count);
            settable once per process.

    Callable again in a process whose runtime already started on the same device (a
    test session that trained first); another device then raises MindSpore's RuntimeError.
    """
    import mindspore as ms

    if cpu_threads is not None:
        ms.device_context.cpu.op_tuning.threads_num(cpu_threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device(device)
    except RuntimeError:  # "The runtime has been initialized": an earlier graph of this
        if ms.get_context("device_target") != device:  # process ran; the same device is fine
            raise


def load_model(ckpt: str | Path, config: BloomConfig) -> BloomLMHeadModel:
    """BloomLMHeadModel in eval mode with the checkpoint's parameters (checked against config)."""
    from .bloom import BloomLMHeadModel, load_parameters

    arrays = load_checkpoint_arrays(ckpt, config)
    model = BloomLMHeadModel(config, random_init=False)
    model.set_train(False)
    load_parameters(model, arrays)
    return model


def resolve_config(preset: str | None, hf_config: str | None, device: str) -> BloomConfig:
    """Architecture from a preset or an HF config.json; CPU always computes in float32."""
    config = load_preset(preset) if preset is not None else BloomConfig.from_hf(hf_config or "")
    if device == "CPU" and (config.compute_dtype != "float32" or config.param_dtype != "float32"):
        config = dataclasses.replace(config, compute_dtype="float32", param_dtype="float32")
    return config
