"""What a node prints, as it reaches the user: scrubbed, [0-9] numbers, linear parsers, no
markup, bounded JSON; names with newlines refused (issue 14, docs/security.md).

    python -m pytest tests/unit/test_untrusted.py -q
"""

from __future__ import annotations

import io
import json
import time

import pytest
from orchestrate_bloom.ckpt import layout as ck
from rich.console import Console

from orchestrator.ckpt.select import parse_listing
from orchestrator.errors import CheckpointError, RemoteCommandError, RemoteError
from orchestrator.hccl.discover import parse_npu_mapping, parse_spod_info
from orchestrator.job.logs import _parse_chunks
from orchestrator.job.nodes import parse_status
from orchestrator.job.progress import status_table
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord
from orchestrator.remote.transport import CommandResult, tool_answer
from orchestrator.untrusted import MAX_JSON_DEPTH, lines, loads_json, scrub, to_int

OSC52 = "\x1b]52;c;aGVsbG8=\x07"  # a clipboard write, if a terminal ever saw it


def test_scrub_replaces_control_characters_but_newline_and_tab() -> None:
    assert scrub(f"a\tb\n{OSC52}c\x9b2J\r") == "a\tb\n\ufffd]52;c;aGVsbG8=\ufffdc\ufffd2J\ufffd"


@pytest.mark.parametrize("text,signed,want", [("12", False, 12), ("-3", True, -3),
                                              ("-3", False, None), ("²", False, None),
                                              ("\u0661\u0662", False, None), ("1e3", False, None),
                                              ("9" * 20, False, None), ("", False, None)])
def test_to_int_takes_ascii_digits_only(text: str, signed: bool, want: int | None) -> None:
    assert to_int(text, signed=signed) == want


def test_loads_json_refuses_deep_nesting_in_one_pass() -> None:
    with pytest.raises(json.JSONDecodeError, match=f"deeper than {MAX_JSON_DEPTH}"):
        loads_json("[" * 200_000 + "]" * 200_000)  # json.loads: RecursionError
    assert loads_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "b": [[1]]}')["b"] == [[1]]


def test_status_parser_ignores_long_lines_and_unicode_digits() -> None:
    text = "supervisor running\nslot 0 running - ²\n" + "last 0 " + "step=1 " * 200_000 + "\n"
    report = parse_status("th0", text)
    assert [(s.slot, s.pid, s.metrics) for s in report.slots] == [("0", None, {})]
    assert lines("x" * 5000 + "\nok") == ["ok"]


def test_npu_smi_parsers_on_a_1mb_line() -> None:
    """Correctness only; bench/untrusted_parse.py prints the time against a reference."""
    line = "SDID " + " " * (1 << 20) + "x"
    assert parse_spod_info(line + "\nSDID : 5\n").super_device_id == "5"  # type: ignore[union-attr]
    assert parse_spod_info("SDID : ²") is None
    assert parse_npu_mapping("0 0 0 Ascend\n1 0 ¹ x\n" + "2 " * (1 << 19)) == {0: (0, 0)}


def test_checkpoint_names_with_a_trailing_newline_are_not_checkpoints() -> None:
    assert ck.CKPT_RE.match("bloom_rank_0-5.ckpt") is not None
    assert ck.CKPT_RE.match("bloom_rank_0-5.ckpt\n") is None
    assert ck.CKPT_RE.match("bloom_rank_\u0661-5.ckpt") is None


def test_malformed_listing_is_one_checkpoint_error() -> None:
    for raw in ({"job_dir": "/w", "ranks": []}, {"job_dir": "/w", "ranks": {"0": "x"}}):
        with pytest.raises(CheckpointError, match=r"^\[th0\] malformed checkpoint listing"):
            parse_listing("th0", raw, [0])


def test_log_chunks_survive_a_forged_marker_line() -> None:
    got = _parse_chunks("@@m 0 12\nline\n@@m junk\n@@m 1 x\n", "@@m")
    assert got == {"0": (12, "line\n@@m junk\n"), "1": (0, "")}


def test_status_table_shows_node_text_literally() -> None:
    now = time.time()
    record = JobRecord(job_id="tiny-abcd", status=JobStatus.FAILED, created_at=now,
                       updated_at=now, inventory_path="inv.yaml", inventory_digest="",
                       preset="tiny", overrides=(), mode="msrun", world_size=1,
                       nodes=(NodeRecord("a", "10.0.0.1", 0, 1, (0,), "/w/j"),),
                       message=f"rank 0: [red]boom[/red] {OSC52}")
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system=None).print(
        status_table(record, {"a": RuntimeError(f"[bold]x[/] {OSC52}")}))
    text = out.getvalue()
    assert "[red]boom[/red]" in text and "[bold]x[/]" in text and "\x1b]52" not in text


def test_remote_error_tail_is_scrubbed_and_bounded() -> None:
    res = CommandResult("th0", "launch.sh stop", 1, "", "ok\n" + OSC52 + "x" * 5000, 0.1)
    text = str(RemoteCommandError(res))
    assert "\x1b" not in text and "\x07" not in text and len(text) < 400


def test_yaml_aliases_are_refused_in_set_values_and_preset_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from orchestrate_bloom.presets import SettingsError, apply_override, defaults, read_yaml

    bomb = ("train.lr=[&a [1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
            "[*b,*b,*b,*b,*b,*b,*b,*b,*b]]")  # 58 MB of repr before the fix
    with pytest.raises(SettingsError, match=r"YAML aliases \(\*a\) are not allowed here") as e:
        apply_override(defaults(), bomb)
    assert len(str(e.value)) < 300
    preset = tmp_path / "p.yaml"
    preset.write_text("x: &a [1, 1]\ny: &b [*a, *a]\nz: [*b, *b]\n")  # aliases that multiply
    with pytest.raises(SettingsError, match=r"aliases \(\*b\) may not point at a node holding"):
        read_yaml(preset)
    preset.write_text("train: &t {lr: 1.0}\neval: *t\n")  # as MindFormers run configs do
    assert read_yaml(preset)["eval"] == {"lr": 1.0}
    preset.write_text("t: &t 1\nl: [" + ", ".join(["*t"] * 65) + "]\n")
    with pytest.raises(SettingsError, match="limited to 64 per file"):
        read_yaml(preset)
    with pytest.raises(SettingsError, match=r"got 'xxxx.*… \(5002 chars\)$"):
        apply_override(defaults(), "train.lr=" + "x" * 5000)


@pytest.mark.parametrize(("res", "reason"), [
    # a tool's own error line, with a terminal escape and 5,000 more characters
    (CommandResult("th1", "t", 1, "", "Traceback\nerror: bad " + OSC52 + "x" * 5000, 0.1),
     "bad \ufffd]52;c;aGVsbG8=\ufffd" + "x" * 280 + "..."),
    (CommandResult("th1", "t", 137, "", "", 0.1), "exit 137"),
    # exit 0 but no JSON object: nested 200,000 deep (json.loads alone: RecursionError), a
    # list, chatter
    (CommandResult("th1", "t", 0, "[" * 200_000 + "]" * 200_000, "", 0.1),
     "printed no JSON result: '" + "]" * 200 + "'"),
    (CommandResult("th1", "t", 0, "[1]\n", "", 0.1), "printed no JSON result: '[1]'"),
])
def test_a_node_tools_failure_is_one_bounded_line_naming_the_node(res: CommandResult,
                                                                  reason: str) -> None:
    with pytest.raises(RemoteError) as exc:
        tool_answer(res, "listing checkpoints")
    assert str(exc.value) == f"[th1] listing checkpoints: {reason}"
    assert exc.value.node == "th1" and "\n" not in str(exc.value)


def test_a_node_tools_answer_is_its_last_json_object_line() -> None:
    res = CommandResult("th1", "t", 0, '[WARNING] noise\n{"0": [5, 10]}\n', "", 0.1)
    assert tool_answer(res, "checkpoint steps") == {"0": [5, 10]}
