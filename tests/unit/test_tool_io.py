"""The node tools' protocol (model/tool_io.py): what a tool prints, what the reader accepts.

    python -m pytest -q tests/unit/test_tool_io.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from orchestrate_bloom.tool_io import ToolFailure, failure_reason, read_result, tool_main


def test_tool_main_prints_one_json_line_or_one_error_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert tool_main(lambda: {"adopted": 2}, (ValueError,)) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ('{"adopted": 2}\n', "")
    assert read_result(out, err, 0) == {"adopted": 2}

    def bad() -> dict[str, int]:
        raise ValueError("rank 3: manifest missing")

    assert tool_main(bad, (ValueError,)) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "error: rank 3: manifest missing\n")
    with pytest.raises(ToolFailure, match=r"^rank 3: manifest missing$"):
        read_result(out, err, 1)
    with pytest.raises(KeyError):  # not one of the tool's errors: a bug, with its traceback
        tool_main(lambda: {}[0], (ValueError,))


@pytest.mark.parametrize("stdout", ["", "not json\n", "[1, 2]\n", '{"a": 1}\ntrailing\n',
                                    "\x00" * 10])
def test_reader_refuses_what_is_not_one_json_object(stdout: str) -> None:
    with pytest.raises(ToolFailure, match="printed no JSON result"):
        read_result(stdout, "", 0)


def test_reader_takes_the_last_line_after_chatter() -> None:
    assert read_result('[WARNING] ME(1): noise\n{"ranks": [0]}\n', "", 0) == {"ranks": [0]}


def test_failure_reason_last_error_line_else_last_line_else_exit_code() -> None:
    assert failure_reason("x\nerror: first\nTraceback\nerror: second\nmore\n", 1) == "second"
    assert failure_reason("a\nlast words\n\n", 2) == "last words"
    assert failure_reason("", 137) == "exit 137"


def test_checkpoint_tool_speaks_the_protocol(tmp_path: Path) -> None:
    """The real node tool, run as the control plane runs it, read by the one reader."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrate_bloom.ckpt.layout", *args],
                              capture_output=True, text=True, timeout=60)

    layout = '{"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1}'
    ok = run("steps", "--job-dir", str(tmp_path), "--layout", layout, "--rank", "0")
    assert read_result(ok.stdout, ok.stderr, ok.returncode) == {"0": []}
    bad = run("adopt", "--job-dir", str(tmp_path), "--layout", layout, "--old-layout", layout,
              "--step", "5", "--pair", "1:0")
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error: ")
    with pytest.raises(ToolFailure) as exc:
        read_result(bad.stdout, bad.stderr, bad.returncode)
    assert str(exc.value) == bad.stderr.removeprefix("error: ").strip()
