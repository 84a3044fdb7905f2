"""LocalTransport (bash + atomic copies on this machine) and the fan-out's result semantics."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.config.inventory import Connection, Node, load_inventory
from orchestrator.errors import CommandTimeout, FanoutError, RemoteCommandError, TransferError
from orchestrator.remote import files
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.local import LocalTransport


def local(name: str) -> LocalTransport:
    return LocalTransport(Node(name=name, host="127.0.0.1", connection=Connection.LOCAL))


def test_run_env_and_exit_codes() -> None:
    t = local("l0")
    assert t.run('printf %s "$X"', env={"X": "a 'b' $(c)"}).stdout == "a 'b' $(c)"
    assert t.run(["printf", "%s|", "a b", "$HOME"]).stdout == "a b|$HOME|"
    with pytest.raises(RemoteCommandError, match=r"\[l0\] `exit 4` exited 4"):
        t.run("exit 4")
    assert t.run("exit 4", check=False).exit_code == 4


def test_run_timeout_kills_process_group(tmp_path: Path) -> None:
    t = local("l0")
    marker, pidfile = tmp_path / "late", tmp_path / "child.pid"
    with pytest.raises(CommandTimeout, match=r"\[l0\] .* did not finish in 0.3s"):
        t.run(f"(echo $BASHPID > {pidfile}; sleep 1; touch {marker}) & sleep 5", timeout=0.3)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while _alive(pid):  # the background child dies with the group (poll, never sleep-then-look)
        assert time.monotonic() < deadline, f"child {pid} outlived the timeout kill"
        time.sleep(0.02)
    assert not marker.exists()  # dead before it could touch it: it can never appear now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_put_get_atomic_and_mode(tmp_path: Path) -> None:
    t = local("l0")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(1000))
    src.chmod(0o640)
    dst = tmp_path / "out" / "d"
    t.put(src, PurePosixPath(str(dst)), mode=0o600)
    assert dst.read_bytes() == src.read_bytes() and (dst.stat().st_mode & 0o777) == 0o600
    back = tmp_path / "back"
    t.get(PurePosixPath(str(dst)), back)
    assert files.sha256_file(back) == files.sha256_file(src)
    with pytest.raises(TransferError, match=r"\[l0\] get .*missing"):
        t.get(PurePosixPath(str(tmp_path / "missing")), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "out", "src"]


def local_group(tmp_path: Path, names: list[str], forks: int = 64) -> NodeGroup:
    """A NodeGroup over `connection: local` nodes named `names`."""
    lines = ["defaults: {connection: local, devices: 1, workdir: " + str(tmp_path) + "}",
             "nodes:"] + [f"  - {{host: 127.0.0.{i + 1}, name: {n}}}" for i, n in enumerate(names)]
    path = tmp_path / "inv.yaml"
    path.write_text("\n".join(lines) + "\n")
    return NodeGroup(load_inventory(path), forks=forks)


def test_fanout_runs_all_and_collects_failures(tmp_path: Path) -> None:
    nodes = local_group(tmp_path, [f"l{i}" for i in range(5)], forks=2)
    res = nodes.run('test "$N" != 2', env={"N": "2"})
    assert list(res.outcomes) == [f"l{i}" for i in range(5)]
    assert set(res.failed) == {f"l{i}" for i in range(5)}
    assert all(isinstance(e, RemoteCommandError) for e in res.failed.values())
    res = nodes.run("exit 1", check=False)
    assert res.ok and all(r.exit_code == 1 for r in res.succeeded.values())
    nodes.close()


def test_fanout_never_stops_early_and_is_bounded(tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(6)]
    lock = threading.Lock()
    running, peak = [0], [0]

    def work(t: LocalTransport) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if t.node.name in ("n1", "n4"):
            raise TransferError(t.node.name, "boom")
        return t.node.name

    done: list[str] = []
    with local_group(tmp_path, names, forks=3) as group:
        res = group.map(work, on_done=lambda name, _v: done.append(name))
    assert peak[0] <= 3 and sorted(done) == names
    assert res.succeeded == {"n0": "n0", "n2": "n2", "n3": "n3", "n5": "n5"}
    assert list(res.failed) == ["n1", "n4"]
    with pytest.raises(FanoutError, match=r"^2 of 6 nodes failed: n1: \[n1\] boom; n4: "):
        res.raise_on_failure()


def test_fanout_rejects_bad_forks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="forks"):
        local_group(tmp_path, ["a"], forks=0)
