"""Text generation with a fixed-size KV cache in MindSpore graph mode, and its command line.

    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny "Give three tips."
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --hf-config bloom/config.json --tokenizer \
        bloom/tokenizer.json --max-new-tokens 64 --do-sample --top-p 0.9 --seed 1 "Hello"
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny --input prompts.txt --json
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny --chat

Two compiled graphs serve a whole generation: `BloomPrefill` (the left-padded prompt batch,
length rounded up to a multiple of BUCKET) and `BloomDecodeStep` (one token per row), sharing a
KVCache of a fixed length (rounded up to a multiple of CACHE_BUCKET) whose Parameters both
update in place: a step writes one slot, nothing recompiles per step, and later prompts of
similar length reuse both graphs (kept per batch size and cache length). Greedy tokens are
picked in the graph; only they (or, when sampling, the logits) come back to the host.
Sampling: temperature, then top-k, then top-p, as HF applies them. Rows that emit eos are
finished and padded. `--chat` sends the previous turns with each prompt (see `Chat`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import BloomConfig, ConfigError, load_preset
from .convert import ConvertError, load_checkpoint_arrays
from .tokenizer import TokenizerError, load_tokenizer

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
    """
    import mindspore as ms

    if cpu_threads is not None:
        ms.device_context.cpu.op_tuning.threads_num(cpu_threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(device)


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


# ---------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m orchestrate_bloom.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="*", help="Prompt texts (one generation each).")
    p.add_argument("--ckpt", required=True, help="Single-device checkpoint (.ckpt).")
    p.add_argument("--config", help="Preset name or preset YAML with the architecture.")
    p.add_argument("--hf-config", help="HF config.json with the architecture.")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the shipped small BPE).")
    p.add_argument("--max-new-tokens", type=int, default=32, help="Tokens to generate at most.")
    p.add_argument("--do-sample", action="store_true", help="Sample instead of greedy.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    p.add_argument("--top-k", type=int, default=0, help="Sample from the k best (0 = all).")
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling mass.")
    p.add_argument("--seed", type=int, help="Sampling seed.")
    p.add_argument("--input", help="File with one prompt per line (added after PROMPTs).")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.add_argument("--chat", action="store_true",
                   help="Interactive loop on stdin; each prompt sees the previous turns.")
    p.add_argument("--device", default="CPU", choices=["CPU", "Ascend", "GPU"],
                   help="MindSpore device.")
    args = p.parse_args(argv)
    if (args.config is None) == (args.hf_config is None):
        p.error("give exactly one of --config / --hf-config")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    """PROMPT arguments then --input lines (blank lines skipped)."""
    prompts = list(args.prompts)
    if args.input:
        try:
            lines = Path(args.input).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InferError(f"{args.input}: cannot read prompts: {e}") from e
        prompts += [line for line in lines if line.strip()]
    if not prompts and not args.chat:
        raise InferError("no prompt: give PROMPT arguments, --input FILE or --chat")
    if any(not p.strip() for p in prompts):
        raise InferError("empty prompt")
    return prompts


class Session:
    """Tokenizer + generator + settings: turns prompt texts into completions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.config = resolve_config(args.config, args.hf_config, args.device)
        self.tokenizer = load_tokenizer(args.tokenizer)
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise InferError(f"tokenizer {self.tokenizer.path} has {self.tokenizer.vocab_size} "
                             f"ids but the model's vocab_size is {self.config.vocab_size}")
        self.gen = GenerateConfig(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed)
        set_graph_mode(args.device)
        self.generator = Generator(load_model(args.ckpt, self.config))

    @property
    def room(self) -> int:
        """Most prompt tokens that leave room for max_new_tokens in seq_length."""
        return max(1, self.config.seq_length - self.gen.max_new_tokens)

    def encode(self, text: str) -> list[int]:
        """Prompt ids, left-truncated so prompt + new tokens fit in seq_length."""
        return self.tokenizer.encode(text)[-self.room:]

    def complete(self, texts: list[str], stream: Callable[[str], None] | None = None,
                 prompts: list[list[int]] | None = None) -> list[dict[str, Any]]:
        """Completions of `texts` as dicts; `stream` receives text pieces of a single prompt.

        Args:
            texts: the prompts (reported back in the results).
            stream: called with each new piece of text (single prompt only).
            prompts: the token ids to generate from instead of encoding `texts` (chat history).
        """
        if prompts is None:
            prompts = [self.encode(t) for t in texts]
        streamed: list[int] = []
        shown = ""

        def on_tokens(tokens: np.ndarray) -> None:
            nonlocal shown
            streamed.append(int(tokens[0]))
            text = self.tokenizer.decode(streamed)
            # Print only whole characters: a byte-level token may end inside a UTF-8 sequence.
            if stream is not None and not text.endswith("\ufffd") and text.startswith(shown):
                if len(text) > len(shown):
                    stream(text[len(shown):])
                shown = text

        callback = on_tokens if stream is not None and len(texts) == 1 else None
        start = time.perf_counter()
        outputs = self.generator.generate(prompts, self.gen, callback)
        seconds = time.perf_counter() - start
        results: list[dict[str, Any]] = []
        for text, prompt, new in zip(texts, prompts, outputs, strict=True):
            stop = "eos" if new and new[-1] == self.config.eos_token_id else "length"
            results.append({"prompt": text, "completion": self.tokenizer.decode(new),
                            "prompt_tokens": len(prompt), "new_tokens": new, "stop": stop,
                            "seconds": round(seconds, 3)})
        completion = str(results[0]["completion"])
        if callback is not None and stream is not None and completion != shown:
            stream(completion[len(shown):])
        return results


def run_prompts(session: Session, prompts: list[str], as_json: bool) -> None:
    """Generate for all prompts in one batch and print them (streamed for one prompt on a tty)."""
    if as_json:
        print(json.dumps({"results": session.complete(prompts)}, indent=2))
        return
    if len(prompts) == 1 and sys.stdout.isatty():
        print(prompts[0], end="", flush=True)
        session.complete(prompts, lambda piece: print(piece, end="", flush=True))
        print()
        return
    for result in session.complete(prompts):
        print(result["prompt"] + result["completion"])
        print()


def chat_prompt(turns: Sequence[Sequence[int]], new: Sequence[int], room: int) -> list[int]:
    """The ids a chat turn generates from: the latest previous turns that fit, then `new`.

    Args:
        turns: ids of each previous turn (its prompt and its reply), oldest first.
        new: ids of the new prompt.
        room: most ids the result may have (seq_length - max_new_tokens).

    Returns:
        Whole turns, oldest dropped first until the rest fits, followed by `new`; `new` alone,
        left-truncated to `room`, when it does not fit with any turn.
    """
    if len(new) >= room:
        return list(new[len(new) - room:])
    kept: list[Sequence[int]] = []
    total = len(new)
    for turn in reversed(turns):
        if total + len(turn) > room:
            break
        kept.insert(0, turn)
        total += len(turn)
    return [token for turn in kept for token in turn] + list(new)


class Chat:
    """A conversation: each prompt is generated from after the previous turns (the seed's chat
    loop). Turns are kept as token ids (prompt + reply, the reply's eos included), a newline
    starts every prompt after the first, and the oldest turns are dropped to fit seq_length."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.turns: list[list[int]] = []

    def say(self, line: str, stream: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Generate the reply to `line` after the history; returns the `complete` result."""
        ids = self.session.tokenizer.encode(line if not self.turns else "\n" + line)
        prompt = chat_prompt(self.turns, ids, self.session.room)
        result = self.session.complete([line], stream, [prompt])[0]
        self.turns.append(ids + list(result["new_tokens"]))
        return result


def run_chat(session: Session) -> None:
    """The interactive loop: one prompt per line, streamed answers that see the previous turns;
    'exit' or EOF ends it."""
    print("Bloom chat: type a prompt and press Enter; 'exit' or Ctrl-D to quit.", flush=True)
    chat = Chat(session)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        if line.strip() in ("exit", "quit"):
            return
        if not line.strip():
            continue
        chat.say(line, lambda piece: print(piece, end="", flush=True))
        print(flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; known errors become one line on stderr and exit code 1."""
    args = parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    try:
        prompts = read_prompts(args)
        session = Session(args)
        if prompts:
            run_prompts(session, prompts, args.json)
        if args.chat:
            run_chat(session)
    except (InferError, ConfigError, ConvertError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
