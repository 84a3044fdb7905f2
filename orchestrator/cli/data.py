"""`orchestrate prepare-data`: Alpaca JSON -> MindRecord shards (`-m orchestrate_bloom.data`).

    orchestrate prepare-data --input alpaca_data.json --seq-length 2048 --output data/alpaca \
        [--tokenizer tokenizer.json] [--n 10240] [--shards 4] [--mask-prompt]

The control plane never imports MindSpore: the work runs in a child Python process whose
progress lines drive the progress bar here and whose one-line error becomes ours (exit 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from orchestrate_bloom.tool_io import failure_reason

from orchestrator import bundle
from orchestrator.cli import options as flags


@click.command("prepare-data", cls=flags.RenamedOptions, renamed={"--n": "--limit"})
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="Alpaca-format JSON: a list of {instruction, input, output} records.")
@click.option("--output", "-o", "output_dir", type=click.Path(path_type=Path), required=True,
              help="Directory for alpaca.mindrecord* and summary.json (created if missing).")
@click.option("--seq-length", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Sequence length; each sample holds seq_length + 1 token ids.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(path_type=Path), default=None,
              help="tokenizers JSON file (default: the small tokenizer shipped for `tiny`).")
@click.option("--limit", "limit", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="Use only the first N records (-1: all).")
@click.option("--shards", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Number of MindRecord files to write.")
@click.option("--mask-prompt", is_flag=True,
              help="Also write a loss_mask column so the loss counts response tokens only.")
def prepare_data_command(input_path: Path, output_dir: Path, seq_length: int,
                         tokenizer_path: Path | None, limit: int, shards: int,
                         mask_prompt: bool) -> None:
    """Turn Alpaca JSON into MindRecord shards for the trainer.

    Each record becomes the Alpaca prompt (the with-input variant only when `input` is
    non-empty), the response and eos, tokenized, truncated to seq_length + 1 and padded with
    eos. Malformed input (not a list, a record missing instruction/output, a non-string
    field, bad UTF-8) stops with an error naming the record index; nothing is half-written.
    """
    cmd = bundle.model_command("data", [
        "--input", str(input_path), "--output", str(output_dir), "--seq-length", str(seq_length),
        "--n", str(limit), "--shards", str(shards), "--progress"])
    if tokenizer_path is not None:
        cmd += ["--tokenizer", str(tokenizer_path)]
    if mask_prompt:
        cmd.append("--mask-prompt")
    summary = _run(cmd, bundle.child_env())  # MindSpore's log lines would drown the progress bar
    click.echo(f"wrote {summary['records']} records ({summary['truncated']} truncated, "
               f"{summary['tokens']} tokens) in {summary['seconds']:.1f} s to {output_dir} "
               f"[{', '.join(summary['files'])}]")


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run the child, drive a progress bar from its lines, return its summary.

    Raises:
        ModelError: the child failed; its one-line error (or last stderr line) is the message.
    """
    from orchestrator.errors import ModelError

    summary: dict[str, Any] | None = None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        bar = None
        try:
            for line in proc.stdout:
                if line.startswith("progress "):
                    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
                    done, total = int(fields["done"]), int(fields["total"])
                    if bar is None:
                        bar = click.progressbar(length=total, label="tokenizing + writing",
                                                file=sys.stderr)
                        bar.__enter__()
                    bar.update(done - bar.pos)
                elif line.startswith("summary "):
                    summary = json.loads(line[len("summary "):])
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        stderr = proc.stderr.read()
    if proc.returncode == 0 and summary is not None:
        return summary
    raise ModelError(f"prepare-data: {failure_reason(stderr, proc.returncode)}")


COMMANDS = (prepare_data_command,)
