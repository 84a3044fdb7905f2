"""The CLI grammar (issue 13 item 3), checked over every command click knows.

Positional JOB on job commands (infer: --job), one meaning per short flag, outputs are
-o/--output, node parallelism is --forks, --inventory honours ORCHESTRATE_INVENTORY, old
spellings still work with a deprecation note; and the behaviours: a missing local data.path
is an error naming it, `up` checks the nodes before preparing data, `status` only reads,
`status --watch --json` streams one object per poll.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.cli.options import JOB, upgrade_args

JOB_COMMANDS = ("status", "logs", "plot", "down", "resume", "collect-ckpt")


def commands() -> Iterator[tuple[str, click.Command]]:
    """Every command, sub-commands of groups included, as (path, command)."""
    def walk(prefix: str, cmd: click.Command) -> Iterator[tuple[str, click.Command]]:
        yield prefix, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(f"{prefix} {name}".strip(), sub)

    for name, cmd in cli.commands.items():
        yield from walk(name, cmd)


def options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def test_every_job_command_takes_a_positional_job() -> None:
    for name in JOB_COMMANDS:
        params = cli.commands[name].params
        args = [p for p in params if isinstance(p, click.Argument)]
        assert [a.name for a in args] == ["job_id"] and not args[0].required, name
        assert not any("--job" in p.opts for p in params if isinstance(p, click.Option)), name
    infer = {o for p in options(cli.commands["infer"]) for o in p.opts}
    assert "--job" in infer  # its positional is the prompt


def test_one_meaning_per_short_flag() -> None:
    meaning: dict[str, set[str]] = {}
    for path, cmd in commands():
        for opt in options(cmd):
            longs = [o for o in opt.opts if o.startswith("--")]
            for short in (o for o in opt.opts + opt.secondary_opts if len(o) == 2):
                meaning.setdefault(short, set()).add(longs[0] if longs else f"{path}:{short}")
    assert {k: v for k, v in meaning.items() if len(v) > 1} == {}
    assert meaning["-f"] == {"--forks"} and meaning["-o"] == {"--output"}
    assert meaning["-i"] == {"--inventory"} and meaning["-c"] == {"--config"}


def test_outputs_parallelism_and_inventory_are_spelled_one_way() -> None:
    for path, cmd in commands():
        spelled = {o for p in options(cmd) for o in p.opts}
        assert not spelled & {"--out", "--dest", "--jobs", "--n", "--preset"}, path
        if "--output" in spelled:
            assert "-o" in spelled, path
        for p in options(cmd):
            if "--inventory" in p.opts:
                assert p.envvar == "ORCHESTRATE_INVENTORY", path
                assert "-i" in p.opts, path


def test_old_spellings_are_upgraded_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    renamed = {"--job": JOB, "--dest": "--output", "--jobs": "--forks", "-f": "--follow"}
    assert upgrade_args(["--job", "j1", "--dest", "d", "--jobs=4", "-s", "x"], renamed, "c") == [
        "--output", "d", "--forks=4", "-s", "x", "j1"]
    assert upgrade_args(["--job=j2", "--", "--dest"], renamed, "c") == ["j2", "--", "--dest"]
    assert upgrade_args(["-f"], renamed, "orchestrate logs") == ["--follow"]
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 5 and all(n.startswith("warning: `") and "deprecated" in n
                                   for n in notes)
    assert "`orchestrate logs -f` is deprecated" in notes[-1] and notes[-1].endswith("--follow")


def test_collect_ckpt_old_spellings_still_parse(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["collect-ckpt", "--job", "nosuch", "--dest", str(tmp_path),
                                   "--jobs", "2", "--state-dir", str(tmp_path / "st")],
                             prog_name="orchestrate")
    assert "`orchestrate collect-ckpt --job nosuch` is deprecated" in res.stderr
    assert "`orchestrate collect-ckpt --dest` is deprecated" in res.stderr
    assert res.exit_code == 1 and "nosuch" in res.stderr  # parsed as JOB: no such job


def local_inventory(tmp_path: Path, names: tuple[str, ...] = ("a", "b"),
                    python: str = "python3") -> Path:
    """`connection: local` nodes with one rank each, each with its own workdir."""
    lines = [f"defaults: {{connection: local, devices: 1, python: {python}}}", "nodes:"]
    for i, n in enumerate(names):
        lines.append(f"  - {{host: 127.0.0.{i + 1}, name: {n}, workdir: {tmp_path / n}}}")
    path = tmp_path / "inv.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tmp_path: Path, *args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, [*args, "--state-dir", str(tmp_path / "state")])


def test_a_missing_local_data_path_is_an_error_naming_it(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path)
    for bad in ("alpaca_typo.json", "data/mindrecord", "~/nothing-here"):
        res = run(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--set", f"data.path={bad}",
                  "--dry-run")
        assert res.exit_code == 1, res.output
        assert f"data.path {bad!r}: no such file or folder here" in res.stderr, res.stderr
    ok = run(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--set", "data.path=/data/on/nodes",
             "--dry-run")
    assert ok.exit_code == 0, ok.output  # absolute: a path on the nodes, used as is


def test_up_checks_the_nodes_before_preparing_data(tmp_path: Path) -> None:
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "there"}]))
    inv = local_inventory(tmp_path, python="/nonexistent/python3")
    res = run(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--set", f"data.path={data}")
    assert res.exit_code == 1 and "check failed on 2 node(s)" in res.stderr, res.output
    prepared = list((tmp_path / "state").rglob("*.mindrecord*"))
    assert prepared == []  # nothing prepared: the check came first


SLEEP_OR_FAIL = 'if [ "$MS_NODE_ID" = 1 ]; then sleep 1; exit 3; fi; exec sleep 300'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_status_only_reads_and_clean_stops(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path)
    up = run(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--set", "data.path=",
             "--no-check", "--no-guard", "--entrypoint", SLEEP_OR_FAIL, "--stop-grace", "1")
    assert up.exit_code == 0, up.output
    try:
        def status() -> dict:
            res = run(tmp_path, "status", "--json")
            return json.loads(res.stdout)

        _wait_for(lambda: status()["status"] == "FAILED")
        doc = status()
        assert doc["failure"]["node"] == "b" and doc["failure"]["rank"] == "1"
        assert doc["failure"]["exit_code"] == 3 and doc["failure"]["cause"] == "exit"
        a = next(n for n in doc["nodes"] if n["name"] == "a")
        pid = a["ranks"][0]["pid"]
        assert a["ranks"][0]["state"] == "running" and _pid_alive(pid)
        assert run(tmp_path, "status").exit_code == 0
        assert _pid_alive(pid) and not doc["cleaned"]  # status read, stopped nothing
        res = run(tmp_path, "status", "--clean")
        assert res.exit_code == 0 and "stopped a/sched, a/0" in res.stderr, res.output
        _wait_for(lambda: not _pid_alive(pid))
        assert status()["cleaned"]
    finally:
        run(tmp_path, "down", "--all", "--yes")


def test_status_watch_json_streams_one_object_per_poll(tmp_path: Path) -> None:
    inv = local_inventory(tmp_path, names=("a",))
    up = run(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--set", "data.path=",
             "--no-check", "--no-guard", "--entrypoint", "sleep 2")
    assert up.exit_code == 0, up.output
    try:
        res = run(tmp_path, "status", "--watch", "--json", "--interval", "0.2")
        assert res.exit_code == 0, res.output
        docs = [json.loads(line) for line in res.stdout.splitlines()]
        assert len(docs) >= 2, res.stdout  # a poll while it ran, then the end
        assert docs[0]["status"] == "RUNNING" and docs[-1]["status"] == "SUCCEEDED"
        assert all(d["job_id"] == docs[0]["job_id"] for d in docs)
    finally:
        run(tmp_path, "down", "--all", "--yes")
