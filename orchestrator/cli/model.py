"""`orchestrate convert-weights` and `orchestrate infer` (issue #5).

    orchestrate convert-weights --hf bloom-560m/ -o bloom-560m.ckpt
    orchestrate convert-weights --to-hf --ckpt bloom-560m.ckpt --config 560m -o hf-out/
    orchestrate convert-weights --mindformers mf.ckpt --config run_bloom_560m.yaml -o ours.ckpt
    orchestrate infer --ckpt bloom.ckpt --config tiny "Give three tips for staying healthy."

Both run the model code (`python -m orchestrate_bloom.ckpt.convert` / `... .infer`) in a child
process, because the control plane never imports MindSpore. The child's stdout and stdin are
ours (output streams through, `--chat` is interactive); its stderr is collected and, on failure,
its last `error:` line becomes our one-line error (exit 1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from orchestrate_bloom.tool_io import failure_reason

from orchestrator import bundle
from orchestrator.cli import options as flags
from orchestrator.errors import ModelError

log = logging.getLogger(__name__)


def run_model_module(module: str, args: list[str]) -> None:
    """Run `python -m <module> <args>` with our stdin/stdout; raise ModelError if it fails.

    Raises:
        ModelError: the child exited non-zero; the message is its last error line.
    """
    verbose = log.isEnabledFor(logging.INFO)
    log.info("running %s", " ".join(bundle.model_command(module, args)))
    try:
        proc = bundle.run_model(module, args, quiet_mindspore=not verbose, capture_stdout=False)
    except KeyboardInterrupt:  # run_model has killed the child
        raise SystemExit(130) from None
    stderr = proc.stderr
    if verbose and stderr:
        click.echo(stderr, err=True, nl=False)
    elif proc.returncode == 0:  # the child's notes (e.g. a prompt that does not fit) are shown
        for line in stderr.splitlines():
            if line.startswith("note:"):
                click.echo(line, err=True)
    if proc.returncode != 0:
        has_error_line = any(line.startswith("error:") for line in stderr.splitlines())
        reason = failure_reason(stderr, proc.returncode)
        name = module.rpartition(".")[2]  # the command's word: convert, mindformers, infer
        raise ModelError(f"{name}: {reason}" + ("" if has_error_line or verbose else
                                                 " (run with -v for the full output)"))


def architecture_args(preset: str | None, hf_config: Path | None) -> list[str]:
    """--config/--hf-config for the child; exactly one must be given."""
    if (preset is None) == (hf_config is None):
        raise click.UsageError("give exactly one of --config PRESET / --hf-config FILE")
    return ["--config", preset] if preset is not None else ["--hf-config", str(hf_config)]


@click.command("convert-weights", cls=flags.RenamedOptions, renamed={"--out": "--output"})
@click.option("--hf", "hf_dir", type=click.Path(path_type=Path),
              help="HF folder (config.json + model.safetensors or pytorch_model.bin) to read; "
                   "with --to-hf, use --output for the folder to write.")
@click.option("--mindformers", "mf_ckpt", type=click.Path(path_type=Path),
              help="MindFormers checkpoint (its parameter names) to import as ours "
                   "(with --config or --hf-config).")
@click.option("--output", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Checkpoint to write (.ckpt), or the HF folder to write with --to-hf.")
@click.option("--to-hf", is_flag=True, help="Convert our --ckpt back to a HF folder.")
@click.option("--to-mindformers", is_flag=True,
              help="Convert our --ckpt to MindFormers' parameter names (back into MindFormers).")
@click.option("--ckpt", type=click.Path(path_type=Path),
              help="Our checkpoint (with --to-hf / --to-mindformers).")
@click.option("--config", "-c", "preset",
              help="Preset name, preset YAML or MindFormers run config with the architecture.")
@click.option("--hf-config", type=click.Path(path_type=Path),
              help="HF config.json with the architecture.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Tensor dtype written with --to-hf.")
def convert_weights(hf_dir: Path | None, mf_ckpt: Path | None, out: Path, to_hf: bool,
                    to_mindformers: bool, ckpt: Path | None, preset: str | None,
                    hf_config: Path | None, dtype: str) -> None:
    """Convert HF Bloom weights or a MindFormers checkpoint to ours, or (--to-hf,
    --to-mindformers) back.

    \b
      orchestrate convert-weights --hf bloom-560m/ -o bloom-560m.ckpt
      orchestrate convert-weights --to-hf --ckpt bloom.ckpt --config 560m -o hf/
      orchestrate convert-weights --mindformers mf.ckpt --config run_bloom_560m.yaml -o b.ckpt
      orchestrate convert-weights --to-mindformers --ckpt b.ckpt --config 560m -o mf.ckpt

    HF names may carry the `transformer.` prefix or not; lm_head.weight is optional (tied).
    MindFormers checkpoints may hold optimizer state (ignored, counted). Unknown or missing
    tensors and shape mismatches are errors that name them.
    """
    ways = [w for w, on in (("--hf", hf_dir is not None), ("--to-hf", to_hf),
                            ("--mindformers", mf_ckpt is not None),
                            ("--to-mindformers", to_mindformers)) if on]
    if len(ways) != 1:
        raise click.UsageError("give exactly one of --hf DIR, --mindformers FILE, "
                               "--to-hf / --to-mindformers (with --ckpt FILE)")
    if (to_hf or to_mindformers) and ckpt is None:
        raise click.UsageError(f"{ways[0]} needs --ckpt FILE")
    if to_hf:
        args = ["--to-hf", "--ckpt", str(ckpt), "--out", str(out), "--dtype", dtype,
                *architecture_args(preset, hf_config)]
    elif hf_dir is not None:
        args = ["--hf", str(hf_dir), "--out", str(out)]
    else:
        source = ["--to-mindformers", "--ckpt", str(ckpt)] if to_mindformers else [
            "--mindformers", str(mf_ckpt)]
        run_model_module("ckpt.mindformers", [*source, "--out", str(out),
                                              *architecture_args(preset, hf_config)])
        return
    run_model_module("ckpt.convert", args)


@click.command("infer")
@click.argument("prompts", nargs=-1)
@click.option("--ckpt", type=click.Path(path_type=Path),
              help="Single-device checkpoint: ours, the trainer's, one from collect-ckpt, or "
                   "one with MindFormers' parameter names.")
@click.option("--job", "job_id", default=None,
              help="Use the checkpoint and architecture `collect-ckpt` merged for this job "
                   "('latest': the latest job) instead of --ckpt/--config.")
@flags.state_dir_option()
@click.option("--config", "-c", "preset", help="Preset name or YAML with the architecture.")
@click.option("--hf-config", type=click.Path(path_type=Path),
              help="HF config.json with the architecture (instead of --config).")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="tokenizer.json (default: the shipped small BPE; a real Bloom one works).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens to generate at most per prompt.")
@click.option("--do-sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Sampling temperature.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample among the k most likely tokens (0 = all).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Nucleus sampling: smallest token set with this probability mass.")
@click.option("--seed", type=int, help="Sampling seed (repeatable outputs).")
@click.option("--input", "input_file", type=click.Path(path_type=Path),
              help="File with one prompt per line.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--chat", is_flag=True,
              help="Interactive loop: one prompt per line on stdin; each reply sees the previous "
                   "turns (the oldest dropped to fit the model's seq_length).")
@click.option("--device", type=click.Choice(["CPU", "Ascend", "GPU"]), default="CPU",
              show_default=True, help="MindSpore device to run on.")
@click.option("--raw", is_flag=True,
              help="Send prompts as they are, without the prompt template the model was "
                   "trained with (recorded with the job and the merged checkpoint).")
def infer(prompts: tuple[str, ...], ckpt: Path | None, job_id: str | None, state_dir: Path,
          preset: str | None, hf_config: Path | None,
          tokenizer: Path | None, max_new_tokens: int, do_sample: bool, temperature: float,
          top_k: int, top_p: float, seed: int | None, input_file: Path | None, as_json: bool,
          chat: bool, device: str, raw: bool) -> None:
    """Generate text from a checkpoint (greedy or sampling, KV cache, graph mode).

    \b
      orchestrate infer --ckpt bloom.ckpt --config tiny "Give three tips for staying healthy."
      orchestrate infer --ckpt bloom.ckpt --config tiny --input prompts.txt --json
      orchestrate infer --ckpt bloom.ckpt --config tiny --chat
      orchestrate infer --job latest "Give three tips."   # after collect-ckpt

    Prints each prompt followed by its completion (streamed on a terminal for one prompt).
    Prompts get the template of the training data (e.g. Alpaca's "### Instruction: ...
    ### Response:" for data prepared from Alpaca JSON) as recorded in the job / --config
    (`data.template`); --raw sends the text as is. A thin front of the Python API:

    \b
      from orchestrate_bloom.pipeline import pipeline
      generate = pipeline("text_generation", model="tiny", ckpt="bloom.ckpt")
      print(generate(["Give three tips for staying healthy."], max_new_tokens=32))
    """
    if not prompts and input_file is None and not chat:
        raise click.UsageError("give PROMPT arguments, --input FILE or --chat")
    if job_id is not None:
        if ckpt is not None or preset is not None or hf_config is not None:
            raise click.UsageError("--job replaces --ckpt/--config/--hf-config")
        from orchestrator.ckpt.output import collected_for_job
        from orchestrator.job.state import JobStore

        ckpt, preset = collected_for_job(state_dir, JobStore(state_dir).resolve(job_id))
    if ckpt is None:
        raise click.UsageError("give --ckpt FILE (with --config) or --job JOB")
    args = ["--ckpt", str(ckpt), *architecture_args(preset, hf_config),
            "--max-new-tokens", str(max_new_tokens), "--temperature", str(temperature),
            "--top-k", str(top_k), "--top-p", str(top_p), "--device", device]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    if do_sample:
        args.append("--do-sample")
    if seed is not None:
        args += ["--seed", str(seed)]
    if input_file is not None:
        args += ["--input", str(input_file)]
    if as_json:
        args.append("--json")
    if chat:
        args.append("--chat")
    if raw:
        args.append("--raw")
    run_model_module("infer", [*args, "--", *prompts])


COMMANDS = (convert_weights, infer)
