"""`python -m orchestrate_bloom.infer`: the command line of the text-generation pipeline.

    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny "Give three tips."
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --hf-config bloom/config.json --tokenizer \
        bloom/tokenizer.json --max-new-tokens 64 --do-sample --top-p 0.9 --seed 1 "Hello"
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny --input prompts.txt --json
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config tiny --chat
    python -m orchestrate_bloom.infer --ckpt bloom.ckpt --config merged.yaml --raw "Once upon"

A thin front of pipeline.TextGenerationPipeline (what `orchestrate infer` runs): prompts get the
template recorded in --config (`data.template`; collect-ckpt records the job's) unless --raw.
`--chat` sends the previous turns with each prompt (see `Chat`). Generation itself (KV cache,
compiled graphs, sampling) is generate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .ckpt.convert import ConvertError
from .config import ConfigError
from .generate import GenerateConfig as GenerateConfig
from .generate import Generator as Generator
from .generate import InferError
from .generate import left_pad as left_pad
from .generate import load_model as load_model
from .generate import select_tokens as select_tokens
from .generate import set_graph_mode as set_graph_mode
from .pipeline import TextGenerationPipeline
from .tokenizer import TokenizerError


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
    p.add_argument("--raw", action="store_true",
                   help="Send prompts as they are (no prompt template).")
    p.add_argument("--template", help="Prompt template (default: the one --config records).")
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


def note_dropped(results: list[dict[str, Any]], room: int) -> None:
    """One `note:` line on stderr per prompt whose (templated) text did not fit."""
    for r in results:
        if r["prompt_tokens_dropped"]:
            total = r["prompt_tokens"] + r["prompt_tokens_dropped"]
            shape = f"with the {r['template']} template " if r["template"] else ""
            print(f"note: prompt {r['prompt'][:40]!r} is {total} tokens {shape}but only {room} "
                  "fit (model seq_length - max_new_tokens): the first "
                  f"{r['prompt_tokens_dropped']} were dropped", file=sys.stderr)


def shown_prompt(result: dict[str, Any]) -> str:
    """How a prompt is printed before its completion: as typed, and on a line of its own when a
    template put the answer after `### Response:` (the completion does not continue the text)."""
    return str(result["prompt"]) + ("\n" if result["template"] else "")


def run_prompts(session: TextGenerationPipeline, prompts: list[str], as_json: bool,
                raw: bool = False) -> None:
    """Generate for all prompts in one batch and print them (streamed for one prompt on a tty)."""
    if as_json:
        results = session.complete(prompts, raw=raw)
        print(json.dumps({"results": results}, indent=2))
    elif len(prompts) == 1 and sys.stdout.isatty():
        print(shown_prompt({"prompt": prompts[0], "template": "" if raw else session.template}),
              end="", flush=True)
        results = session.complete(prompts, lambda piece: print(piece, end="", flush=True),
                                   raw=raw)
        print()
    else:
        results = session.complete(prompts, raw=raw)
        for result in results:
            print(shown_prompt(result) + result["completion"])
            print()
    note_dropped(results, session.room())


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

    def __init__(self, session: TextGenerationPipeline, raw: bool = False) -> None:
        self.session = session
        self.turns: list[list[int]] = []
        self.raw = raw

    def say(self, line: str, stream: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Generate the reply to `line` after the history; returns the `complete` result."""
        text = self.session.format(line, self.raw)
        ids = self.session.tokenizer.encode(text if not self.turns else "\n" + text)
        self.session.check_fits(line, len(ids), self.raw)
        prompt = chat_prompt(self.turns, ids, self.session.room())
        result = self.session.complete([line], stream, [prompt], raw=self.raw)[0]
        self.turns.append(ids + list(result["new_tokens"]))
        return result


def run_chat(session: TextGenerationPipeline, raw: bool = False) -> None:
    """The interactive loop: one prompt per line, streamed answers that see the previous turns;
    'exit' or EOF ends it."""
    print("Bloom chat: type a prompt and press Enter; 'exit' or Ctrl-D to quit.", flush=True)
    chat = Chat(session, raw)
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
        session = TextGenerationPipeline(
            args.config, args.ckpt, hf_config=args.hf_config, tokenizer=args.tokenizer,
            device=args.device, template=args.template, max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed)
        if prompts:
            run_prompts(session, prompts, args.json, args.raw)
        if args.chat:
            run_chat(session, args.raw)
    except (InferError, ConfigError, ConvertError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
