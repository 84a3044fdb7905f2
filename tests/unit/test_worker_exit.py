"""How the trainer process ends (orchestrate_bloom.train.worker_exit): a finished cluster worker
unregisters explicitly and leaves with os._exit; everything else exits through the interpreter.

    python -m pytest tests/unit/test_worker_exit.py -q

The real path (ComputeGraphNode::Unregister in MindSpore, every worker printing
UNREGISTERED_NOTE, the scheduler logging each unregistration and exiting 0 without a timeout)
is tests/model/test_train.py's two-worker run (assert_cluster_ok).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from orchestrate_bloom.train.worker_exit import SWITCH, UNREGISTERED_NOTE, unregister, wanted

WORKER = {"MS_ROLE": "MS_WORKER"}


def test_only_a_finished_cluster_worker_takes_the_explicit_exit() -> None:
    assert wanted(0, WORKER)
    assert not wanted(1, WORKER)  # a failed worker: the interpreter's exit, as before
    assert not wanted(0, {"MS_ROLE": "MS_SCHED"})
    assert not wanted(0, {})  # single process, rank table
    assert not wanted(0, {**WORKER, SWITCH: "teardown"})
    assert wanted(0, {**WORKER, SWITCH: "explicit"})


def test_unregister_calls_nothing_without_mindspore_or_its_library(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "mindspore", raising=False)
    assert "not found" in unregister()
    fake = types.ModuleType("mindspore")
    fake.__file__ = str(tmp_path / "__init__.py")  # no lib/libmindspore_cluster.so here
    monkeypatch.setitem(sys.modules, "mindspore", fake)
    assert "not found" in unregister()


def _child(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent("""
        import atexit, sys, time
        from orchestrate_bloom.train import worker_exit
        atexit.register(lambda: print("atexit ran", flush=True))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60, check=False)


def test_a_finished_worker_leaves_without_the_teardown_once_unregistered() -> None:
    res = _child("""
        worker_exit.unregister = lambda: print("unregistered", flush=True) or ""
        print("trained", flush=True)
        worker_exit.end(0)
    """, MS_ROLE="MS_WORKER")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["trained", "unregistered"]  # flushed; no atexit handler ran
    assert UNREGISTERED_NOTE in res.stderr


def test_an_unregistration_that_never_returns_is_bounded() -> None:
    res = _child("""
        worker_exit.BOUND_S = 0.5
        worker_exit.unregister = lambda: time.sleep(30) or ""
        worker_exit.end(0)
    """, MS_ROLE="MS_WORKER")
    assert res.returncode == 0
    assert "did not return within 0.5 s" in res.stderr
    assert "atexit ran" not in res.stdout


@pytest.mark.parametrize(("code", "env", "note"), [
    (0, {"MS_ROLE": "MS_WORKER"}, "not found"),  # MindSpore not loaded: the old exit, a note
    (3, {"MS_ROLE": "MS_WORKER"}, ""),  # failed worker
    (0, {"MS_ROLE": "MS_SCHED"}, ""),
    (0, {"MS_ROLE": "MS_WORKER", SWITCH: "teardown"}, ""),
])
def test_every_other_case_exits_through_the_interpreter(code: int, env: dict[str, str],
                                                         note: str) -> None:
    res = _child(f"worker_exit.end({code})\n", **env)
    assert res.returncode == code
    assert res.stdout.split() == ["atexit", "ran"]
    assert (note in res.stderr) if note else res.stderr == ""


def test_a_scheduler_that_does_not_confirm_leaves_through_the_interpreter() -> None:
    res = _child("""
        worker_exit.unregister = lambda: "the scheduler did not confirm the unregistration"
        worker_exit.end(0)
    """, MS_ROLE="MS_WORKER")
    assert res.returncode == 0
    assert res.stdout.split() == ["atexit", "ran"]
    assert "did not confirm the unregistration; exiting through the interpreter" in res.stderr
    assert UNREGISTERED_NOTE not in res.stderr
