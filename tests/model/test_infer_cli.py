"""`orchestrate infer` end to end on a tiny-preset checkpoint written by the test."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt.convert import save_checkpoint_arrays
from orchestrate_bloom.config import load_preset

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Give three tips for staying healthy."


def orchestrate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny-preset checkpoint with our parameter names."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape in load_preset("tiny").parameter_shapes().items():
        if "layernorm" in name or "ln_f" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            arrays[name] = np.full(shape, base, np.float32)
        else:
            arrays[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return save_checkpoint_arrays(arrays, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def tiny_generator(tiny_ckpt: Path):
    """A Generator in this process on the same checkpoint (the expected outputs)."""
    from orchestrate_bloom.infer import Generator, load_model, set_graph_mode

    set_graph_mode("CPU")
    return Generator(load_model(tiny_ckpt, load_preset("tiny")))


def test_infer_prints_prompt_and_greedy_completion(tiny_ckpt: Path, tiny_generator,
                                                   tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a color.\n\nWrite a haiku about rain.\n")
    result = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny",
                         "--max-new-tokens", "8", "--input", str(prompts), "--json", PROMPT)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["prompt"] for r in results] == [PROMPT, "Name a color.", "Write a haiku about rain."]

    from orchestrate_bloom.infer import GenerateConfig
    from orchestrate_bloom.tokenizer import load_tokenizer

    tok = load_tokenizer()
    expected = tiny_generator.generate([tok.encode(r["prompt"]) for r in results],
                                       GenerateConfig(max_new_tokens=8))
    assert [r["new_tokens"] for r in results] == expected
    assert [r["completion"] for r in results] == [tok.decode(e) for e in expected]

    text = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny",
                       "--max-new-tokens", "8", PROMPT)
    assert text.returncode == 0, text.stderr
    assert text.stdout == PROMPT + results[0]["completion"] + "\n\n"
    assert streamed_on_a_terminal(tiny_ckpt) == PROMPT + results[0]["completion"] + "\r\n"


def streamed_on_a_terminal(ckpt: Path) -> str:
    """stdout of `orchestrate infer` when stdout is a terminal (a pty): the streaming path."""
    import os
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "infer", "--ckpt", str(ckpt),
                             "--config", "tiny", "--max-new-tokens", "8", PROMPT], cwd=REPO,
                            stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


def test_chat_prompt_keeps_the_latest_whole_turns_that_fit() -> None:
    from orchestrate_bloom.infer import chat_prompt

    turns = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert chat_prompt(turns, [10, 11], 20) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert chat_prompt(turns, [10, 11], 11) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert chat_prompt(turns, [10, 11], 10) == [4, 5, 6, 7, 8, 9, 10, 11]  # oldest dropped
    assert chat_prompt(turns, [10, 11], 7) == [6, 7, 8, 9, 10, 11]
    assert chat_prompt(turns, [10, 11], 5) == [10, 11]  # no whole turn fits
    assert chat_prompt([], [10, 11, 12], 2) == [11, 12]  # the prompt alone, left-truncated
    assert chat_prompt([[1], [2, 3, 4, 5, 6], [7]], [8], 4) == [7, 8]  # history stays contiguous


def test_chat_loop_keeps_the_history_in_the_prompt(tiny_ckpt: Path, tiny_generator) -> None:
    """Drive `infer --chat` through stdin; each reply must be the greedy continuation of the
    previous turns (oldest dropped to fit the tiny preset's seq_length) plus the new line."""
    from orchestrate_bloom.infer import GenerateConfig, chat_prompt
    from orchestrate_bloom.tokenizer import load_tokenizer

    lines = ["Hello there", "", "How are you?", "Give three tips for staying healthy.",
             "Write a haiku about rain in the mountains at night.",
             "Write a haiku about rain in the mountains at night, then one about snow on the sea "
             "at dawn, and a third about the wind in a city street at noon."]
    result = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny", "--chat",
                         "--max-new-tokens", "8", stdin="\n".join(lines) + "\nexit\n")
    assert result.returncode == 0, result.stderr

    tok = load_tokenizer()
    gen = GenerateConfig(max_new_tokens=8)
    room = load_preset("tiny").seq_length - 8
    expected = "Bloom chat: type a prompt and press Enter; 'exit' or Ctrl-D to quit.\n"
    turns: list[list[int]] = []
    prompts, replies, alone = [], [], []
    for line in lines:
        if line:
            ids = tok.encode(line if not turns else "\n" + line)
            prompts.append(chat_prompt(turns, ids, room))
            replies.append(tiny_generator.generate([prompts[-1]], gen)[0])
            alone.append(tiny_generator.generate([tok.encode(line)], gen)[0])
            turns.append(ids + replies[-1])
            expected += "> " + tok.decode(replies[-1]) + "\n"
        else:
            expected += "> "  # an empty line is skipped
    assert result.stdout == expected + "> "
    assert prompts[1] == turns[0] + tok.encode("\nHow are you?")  # the history is sent
    assert prompts[-1][:len(turns[0])] != turns[0]  # the oldest turn no longer fits
    last = tok.encode("\n" + lines[-1])
    assert len(prompts[-1]) <= room and prompts[-1][-len(last):] == last
    assert replies[1:] != alone[1:]  # the history changes the replies: the check can fail


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/none.ckpt", "--config", "tiny", "Hi"],
     "Error: infer: {tmp}/none.ckpt: checkpoint not found"),
    (["--ckpt", "{tmp}/corrupt.ckpt", "--config", "tiny", "Hi"],
     "Error: infer: {tmp}/corrupt.ckpt: cannot read checkpoint"),
    (["--ckpt", "{ckpt}", "--hf-config", "{tmp}/config.json", "Hi"],
     "Error: infer: {ckpt}: transformer.word_embeddings.weight has shape (1000, 64), "
     "config expects (1000, 32)"),
    (["--ckpt", "{ckpt}", "--config", "tiny", "--input", "{tmp}/none.txt"],
     "Error: infer: {tmp}/none.txt: cannot read prompts"),
    (["--ckpt", "{ckpt}", "--config", "nope", "Hi"],
     "Error: infer: unknown preset 'nope'"),
    (["--ckpt", "{ckpt}", "--config", "tiny", "--tokenizer", "{tmp}/config.json", "Hi"],
     "Error: infer: {tmp}/config.json: not a tokenizer.json"),
    (["--ckpt", "{ckpt}", "--config", "{tmp}/alpaca.yaml", "--max-new-tokens", "100",
      "Give three tips for staying healthy."],  # the template is never cut: a refusal
     "Error: infer: prompt 'Give three tips for staying healthy.' is 47 tokens with the alpaca "
     "template but only 28 fit (model seq_length 128 - max_new_tokens 100): shorten it, lower "
     "max_new_tokens or send it raw"),
])
def test_bad_inputs_are_one_line_errors(tiny_ckpt: Path, tmp_path: Path, args: list[str],
                                        message: str) -> None:
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint" * 64)
    (tmp_path / "alpaca.yaml").write_text(json.dumps({  # as collect-ckpt records a tiny job
        "model": dataclasses.asdict(load_preset("tiny")), "data": {"template": "alpaca"}}))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "n_layer": 2,
                                                      "n_head": 4, "vocab_size": 1000}))
    subst = {"tmp": str(tmp_path), "ckpt": str(tiny_ckpt)}
    result = orchestrate("infer", *[a.format(**subst) for a in args])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(**subst)), result.stderr


def test_usage_errors_exit_2(tiny_ckpt: Path) -> None:
    both = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny", "--hf-config",
                       "x.json", "Hi")
    assert both.returncode == 2 and "exactly one of --config" in both.stderr
    nothing = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny")
    assert nothing.returncode == 2 and "PROMPT" in nothing.stderr
