"""The Python text-generation API, in the spirit of MindFormers' `pipeline(task=...)`.

    from orchestrate_bloom.pipeline import pipeline
    generate = pipeline("text_generation", model="tiny", ckpt="bloom.ckpt")
    texts = generate(["Give three tips for staying healthy.", "Name a fruit."],
                     max_new_tokens=32)                      # greedy; do_sample=True samples
    raw = generate("Once upon a time", raw=True)             # no prompt template

`model` is a preset name, a preset YAML, a MindFormers run config (run_bloom_*.yaml) or the
.yaml collect-ckpt writes beside a merged checkpoint; `ckpt` is a single-device checkpoint with
our or MindFormers' parameter names. Prompts are batched with left padding. Each prompt gets the
template the model was trained with (`data.template` of `model`: collect-ckpt records the job's
there; prompts.py), unless `raw=True` or `template=""`. `orchestrate infer` is a thin front of
this class (infer.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import presets
from .config import ConfigError
from .generate import (
    GenerateConfig,
    Generator,
    InferError,
    load_model,
    resolve_config,
    set_graph_mode,
)
from .prompts import apply_template
from .tokenizer import load_tokenizer

TASKS = ("text_generation",)


def recorded_template(model: str | Path | None) -> str:
    """`data.template` of a preset / job / merged-checkpoint YAML ("" for none or no file)."""
    if model is None:
        return ""
    try:
        return str(presets.load_preset_sections(model)["data"]["template"])
    except presets.SettingsError as e:
        raise ConfigError(str(e)) from None


class TextGenerationPipeline:
    """Tokenizer + compiled generator + prompt template: prompt texts in, texts out."""

    def __init__(self, model: str | Path | None, ckpt: str | Path, *,
                 hf_config: str | Path | None = None, tokenizer: str | Path | None = None,
                 device: str = "CPU", template: str | None = None,
                 **generate: Any) -> None:
        """Load the checkpoint and compile lazily on the first call.

        Args:
            model: preset name or YAML (ours, MindFormers', collect-ckpt's); None with hf_config.
            ckpt: single-device checkpoint (our or MindFormers' parameter names).
            hf_config: HF config.json instead of `model`.
            tokenizer: tokenizer.json (default: the small shipped one).
            device: MindSpore device (CPU, Ascend, GPU).
            template: prompt template name; None = the one recorded in `model`.
            **generate: GenerateConfig defaults (max_new_tokens, do_sample, top_k, ...).
        """
        if (model is None) == (hf_config is None):
            raise InferError("give exactly one of model (preset/config) and hf_config")
        self.config = resolve_config(None if model is None else str(model),
                                     None if hf_config is None else str(hf_config), device)
        self.template = recorded_template(model) if template is None else template
        try:
            apply_template(self.template, "")
        except ValueError as e:
            raise InferError(str(e)) from None
        self.tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer))
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise InferError(f"tokenizer {self.tokenizer.path} has {self.tokenizer.vocab_size} "
                             f"ids but the model's vocab_size is {self.config.vocab_size}")
        self.gen = GenerateConfig(**generate)
        set_graph_mode(device)
        self.generator = Generator(load_model(ckpt, self.config))

    def __call__(self, prompts: str | Sequence[str], raw: bool = False,
                 **generate: Any) -> list[str]:
        """The generated text (without the prompt) for each prompt, in order.

        Args:
            prompts: one prompt or a list (generated as one left-padded batch).
            raw: send the text as is (no template).
            **generate: GenerateConfig values for this call (max_new_tokens, do_sample, ...).
        """
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        gen = dataclasses.replace(self.gen, **generate) if generate else self.gen
        return [str(r["completion"]) for r in self.complete(texts, raw=raw, gen=gen)]

    def room(self, gen: GenerateConfig | None = None) -> int:
        """Most prompt tokens that leave room for max_new_tokens in seq_length."""
        return max(1, self.config.seq_length - (gen or self.gen).max_new_tokens)

    def format(self, text: str, raw: bool = False) -> str:
        """The text the model sees for a prompt: the template applied unless `raw`."""
        return text if raw else apply_template(self.template, text)

    def encode(self, text: str, raw: bool = False, gen: GenerateConfig | None = None
               ) -> list[int]:
        """Prompt ids: templated ones whole (see `check_fits`), raw ones left-truncated so
        prompt + new tokens fit in seq_length (the result's prompt_tokens_dropped says how many
        were cut)."""
        ids = self.tokenizer.encode(self.format(text, raw))
        self.check_fits(text, len(ids), raw, gen)
        return ids[-self.room(gen):]

    def check_fits(self, text: str, n_ids: int, raw: bool = False,
                   gen: GenerateConfig | None = None) -> None:
        """Refuse a templated prompt of `n_ids` tokens that does not fit whole.

        Cutting its start would cut the template, leaving the model a text unlike anything it
        was trained on (it then continues the instruction instead of answering it).

        Raises:
            InferError: naming the prompt, its size, the room and how the room is made.
        """
        gen = gen or self.gen
        room = self.room(gen)
        if raw or not self.template or n_ids <= room:
            return
        raise InferError(
            f"prompt {text[:40]!r} is {n_ids} tokens with the {self.template} template but "
            f"only {room} fit (model seq_length {self.config.seq_length} - max_new_tokens "
            f"{gen.max_new_tokens}): shorten it, lower max_new_tokens or send it raw")

    def complete(self, texts: list[str], stream: Callable[[str], None] | None = None,
                 prompts: list[list[int]] | None = None, raw: bool = False,
                 gen: GenerateConfig | None = None) -> list[dict[str, Any]]:
        """Completions of `texts` as dicts; `stream` receives text pieces of a single prompt.

        Args:
            texts: the prompts (reported back in the results).
            stream: called with each new piece of text (single prompt only).
            prompts: the token ids to generate from instead of encoding `texts` (chat history).
            raw: no template.
            gen: generation settings for this call (default: the pipeline's).
        """
        gen = gen or self.gen
        full = [len(self.tokenizer.encode(self.format(t, raw))) for t in texts]
        if prompts is None:
            prompts = [self.encode(t, raw, gen) for t in texts]
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
        outputs = self.generator.generate(prompts, gen, callback)
        seconds = time.perf_counter() - start
        results: list[dict[str, Any]] = []
        for text, prompt, new, n_full in zip(texts, prompts, outputs, full, strict=True):
            stop = "eos" if new and new[-1] == self.config.eos_token_id else "length"
            results.append({"prompt": text, "completion": self.tokenizer.decode(new),
                            "template": "" if raw else self.template,
                            "prompt_tokens": len(prompt),
                            "prompt_tokens_dropped": max(0, n_full - len(prompt)),
                            "new_tokens": new, "stop": stop, "seconds": round(seconds, 3)})
        completion = str(results[0]["completion"])
        if callback is not None and stream is not None and completion != shown:
            stream(completion[len(shown):])
        return results


def pipeline(task: str = "text_generation", model: str | Path | None = None,
             ckpt: str | Path | None = None, **kwargs: Any) -> TextGenerationPipeline:
    """MindFormers-style factory: `pipeline("text_generation", model=..., ckpt=...)`.

    Raises:
        InferError: an unknown task or no checkpoint.
    """
    if task.replace("-", "_") not in TASKS:
        raise InferError(f"task {task!r} is not supported (tasks: {', '.join(TASKS)})")
    if ckpt is None:
        raise InferError("pipeline needs ckpt= (a single-device checkpoint)")
    return TextGenerationPipeline(model, ckpt, **kwargs)
