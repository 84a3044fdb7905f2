"""How the trainer process ends (orchestrate_bloom.train.worker_exit): a finished cluster worker
unregisters explicitly and leaves with os._exit; everything else exits through the interpreter.

    python -m pytest tests/unit/test_worker_exit.py -q

The real path (MindSpore's FinalizeCluster, the scheduler exiting 0 without a timeout) is
tests/model/test_train.py's two-worker run (assert_cluster_ok).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from orchestrate_bloom.train import worker_exit
from orchestrate_bloom.train.worker_exit import SWITCH, finalize_cluster, unregister, wanted

WORKER = {"MS_ROLE": "MS_WORKER"}


def test_only_a_finished_cluster_worker_takes_the_explicit_exit() -> None:
    assert wanted(0, WORKER)
    assert not wanted(1, WORKER)  # a failed worker: the interpreter's exit, as before
    assert not wanted(0, {"MS_ROLE": "MS_SCHED"})
    assert not wanted(0, {})  # single process, rank table
    assert not wanted(0, {**WORKER, SWITCH: "teardown"})
    assert wanted(0, {**WORKER, SWITCH: "explicit"})


def test_finalize_cluster_is_false_without_mindspore_or_its_symbol(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "mindspore", raising=False)
    assert finalize_cluster() is False
    assert unregister() is False
    fake = types.ModuleType("mindspore")
    fake.__file__ = str(tmp_path / "__init__.py")  # no lib/libmindspore_cluster.so here
    monkeypatch.setitem(sys.modules, "mindspore", fake)
    assert finalize_cluster() is False
    assert unregister() is False


def _child(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent("""
        import atexit, sys
        from orchestrate_bloom.train import worker_exit
        atexit.register(lambda: print("atexit ran", flush=True))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60, check=False)


@pytest.mark.parametrize(("switch", "called"), [("", "unregistered"), ("finalize", "finalised")])
def test_a_finished_worker_leaves_without_the_teardown_once_unregistered(
        switch: str, called: str) -> None:
    res = _child("""
        worker_exit.unregister = lambda: print("unregistered", flush=True) or True
        worker_exit.finalize_cluster = lambda: print("finalised", flush=True) or True
        print("trained", flush=True)
        worker_exit.end(0)
    """, MS_ROLE="MS_WORKER", **({SWITCH: switch} if switch else {}))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["trained", called]  # flushed; no atexit handler ran


@pytest.mark.parametrize(("code", "env"), [
    (0, {"MS_ROLE": "MS_WORKER"}),  # MindSpore not found: the old exit, with a note
    (3, {"MS_ROLE": "MS_WORKER"}),  # failed worker
    (0, {"MS_ROLE": "MS_SCHED"}),
    (0, {"MS_ROLE": "MS_WORKER", SWITCH: "teardown"}),
])
def test_every_other_case_exits_through_the_interpreter(code: int, env: dict[str, str]) -> None:
    res = _child(f"worker_exit.end({code})\n", **env)
    assert res.returncode == code
    assert res.stdout.split() == ["atexit", "ran"]
    assert ("not found" in res.stderr) == (worker_exit.wanted(code, env))
