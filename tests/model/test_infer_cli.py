"""`orchestrate infer` end to end on a tiny-preset checkpoint written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.config import load_preset
from model.convert import save_checkpoint_arrays

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


def test_infer_prints_prompt_and_greedy_completion(tiny_ckpt: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a color.\n\nWrite a haiku about rain.\n")
    result = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny",
                         "--max-new-tokens", "8", "--input", str(prompts), "--json", PROMPT)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)["results"]
    assert [r["prompt"] for r in results] == [PROMPT, "Name a color.", "Write a haiku about rain."]

    from model.infer import GenerateConfig, Generator, load_model, set_graph_mode
    from model.tokenizer import load_tokenizer

    set_graph_mode("CPU")
    tok = load_tokenizer()
    expected = Generator(load_model(tiny_ckpt, load_preset("tiny"))).generate(
        [tok.encode(r["prompt"]) for r in results], GenerateConfig(max_new_tokens=8))
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


def test_chat_loop_reads_stdin(tiny_ckpt: Path) -> None:
    result = orchestrate("infer", "--ckpt", str(tiny_ckpt), "--config", "tiny", "--chat",
                         "--max-new-tokens", "4", "--do-sample", "--seed", "1",
                         stdin="Hello there\n\nexit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Bloom chat:")
    assert result.stdout.count("> ") == 3  # two prompts read, then "exit"


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/none.ckpt", "--config", "tiny", "Hi"],
     "Error: model.infer: {tmp}/none.ckpt: checkpoint not found"),
    (["--ckpt", "{tmp}/corrupt.ckpt", "--config", "tiny", "Hi"],
     "Error: model.infer: {tmp}/corrupt.ckpt: cannot read checkpoint"),
    (["--ckpt", "{ckpt}", "--hf-config", "{tmp}/config.json", "Hi"],
     "Error: model.infer: {ckpt}: transformer.word_embeddings.weight has shape (1000, 64), "
     "config expects (1000, 32)"),
    (["--ckpt", "{ckpt}", "--config", "tiny", "--input", "{tmp}/none.txt"],
     "Error: model.infer: {tmp}/none.txt: cannot read prompts"),
    (["--ckpt", "{ckpt}", "--config", "nope", "Hi"],
     "Error: model.infer: unknown preset 'nope'"),
    (["--ckpt", "{ckpt}", "--config", "tiny", "--tokenizer", "{tmp}/config.json", "Hi"],
     "Error: model.infer: {tmp}/config.json: not a tokenizer.json"),
])
def test_bad_inputs_are_one_line_errors(tiny_ckpt: Path, tmp_path: Path, args: list[str],
                                        message: str) -> None:
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint" * 64)
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
