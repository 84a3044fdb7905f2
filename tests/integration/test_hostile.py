"""A hostile node on the real test hosts: what it sends never decides a local mode, size or
allocation (issue 14, docs/security.md).

    python -m pytest tests/integration/test_hostile.py -s     # -s prints the measurements

Each case has the node do the hostile thing itself (a setuid 6777 "log", an endless stream
behind a 1 KiB manifest entry, a 500 MB `launch.sh status` reply, names with newlines and
escape sequences) and checks the one-line refusal and what was (not) written locally.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
import yaml

from orchestrator.ckpt import fetch as ckpt_fetch
from orchestrator.ckpt import nodes as ckpt_nodes
from orchestrator.ckpt.select import parse_listing
from orchestrator.config.inventory import load_inventory
from orchestrator.errors import CheckpointError
from orchestrator.remote.group import transport_for
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLEEPER = 'trap "exit 143" TERM; for i in $(seq 600); do echo "step=$i loss=1.5"; sleep 0.5; done'


def orch(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args, "--state-dir",
                           str(state)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120"),
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrate {args[0]} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def sleeper_job(testhosts: TestHosts, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[tuple[Path, Path, str, str]]:
    """A shell-loop job on th0 alone (1 rank): (inventory, state dir, job id, job dir)."""
    doc = yaml.safe_load(testhosts.inventory.read_text())
    doc["defaults"]["devices"] = 1
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] == "th0"]
    base = tmp_path_factory.mktemp("hostile")
    inv, state = base / "th0.yaml", base / "state"
    inv.write_text(yaml.safe_dump(doc))
    orch(state, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--no-guard",
         "--set", "data.path=", "--entrypoint", SLEEPER)
    (rec,) = (state / "jobs").glob("*.json")
    job_id = rec.stem
    job_dir = yaml.safe_load(rec.read_text())["nodes"][0]["job_dir"]
    try:
        yield inv, state, job_id, job_dir
    finally:
        testhosts.ssh("th0", f"cd {shlex.quote(job_dir)} && [ -f launch.orig.sh ] && "
                             "mv -f launch.orig.sh launch.sh; true")
        orch(state, "down", job_id, "--yes", "-i", str(inv), check=False)


def test_setuid_log_is_fetched_without_exec_or_setuid_bits(
        testhosts: TestHosts, sleeper_job: tuple[Path, Path, str, str], tmp_path: Path) -> None:
    inv, state, job_id, job_dir = sleeper_job
    log = shlex.quote(f"{job_dir}/ranks/0/stdout.log")
    res = testhosts.ssh("th0", f"cp /bin/id {log}.x && chmod 6777 {log}.x && mv -f {log}.x {log}"
                               f" && stat -c %a {log}")
    assert res.stdout.strip() == "6777", res.stderr
    out = orch(state, "logs", job_id, "-i", str(inv), "--fetch", str(tmp_path / "logs"))
    got = tmp_path / "logs" / "th0" / "rank_0.log"
    assert got.read_bytes() == Path("/bin/id").read_bytes(), out.stderr
    assert got.stat().st_mode & 0o7777 == 0o644  # chosen here, not the node's 6777
    assert not [p.name for p in got.parent.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("use_openssh", [True, False], ids=["openssh", "sftp"])
def test_endless_stream_behind_a_1k_manifest_entry(testhosts: TestHosts, tmp_path: Path,
                                                   use_openssh: bool) -> None:
    inv = load_inventory(testhosts.inventory)
    dest = tmp_path / "ckpt"
    # the node's manifest says 1 KiB; what it streams under that name never ends
    item = ckpt_fetch.Item("th1", PurePosixPath("/dev/zero"), PurePosixPath("rank_0/x.ckpt"),
                           1024, "0" * 64, "rank 0")
    with transport_for(inv.nodes[1], inv, use_openssh=use_openssh) as t:
        def opener(_node: str, path: PurePosixPath, offset: int):  # type: ignore[no-untyped-def]
            return ckpt_nodes.open_stream(t, path, offset)

        with pytest.raises(CheckpointError) as err:
            ckpt_fetch.fetch_all(dest, [item], opener, jobs=1)
    assert str(err.value).splitlines() == [
        "[th1] rank 0: /dev/zero is longer than its manifest entry (1024 bytes); "
        "stopped after 0 bytes"]
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"\nendless stream ({'openssh' if use_openssh else 'sftp'}): {written} bytes "
          f"written locally for a 1024-byte manifest entry")
    assert written <= 1024


def test_get_of_a_growing_file_is_read_as_it_was_stated(testhosts: TestHosts,
                                                        tmp_path: Path) -> None:
    """A log still being written: the bytes the node stat'ed and hashed, never the growth."""
    inv = load_inventory(testhosts.inventory)
    remote = f"/tmp/grow-{os.getpid()}.log"
    q = shlex.quote(remote)
    testhosts.ssh("th2", f"head -c 1024 /dev/zero > {q}")
    stop = shlex.quote(remote + ".stop")  # appends until both gets are over (at most ~15 s)
    writer = threading.Thread(target=testhosts.ssh, args=(
        "th2", f"for i in $(seq 1500); do [ -e {stop} ] && break; "
               f"head -c 4096 /dev/zero >> {q}; sleep 0.01; done; rm -f {q} {stop}"))
    got = {}
    with transport_for(inv.nodes[2], inv) as t:
        writer.start()
        try:
            for use_openssh in (True, False):
                t.options = dataclasses.replace(t.options, use_openssh=use_openssh)
                time.sleep(1 if use_openssh else 0)  # the writer is appending by now
                local = tmp_path / f"grow-{use_openssh}.log"
                t.get(PurePosixPath(remote), local)
                got[use_openssh] = local.read_bytes()
        finally:
            testhosts.ssh("th2", f"touch {stop}")
            writer.join()
    for data in got.values():  # verified against the stat: its size, its sha256
        assert len(data) >= 1024 and data == b"\0" * len(data)


def test_a_500mb_status_reply_is_capped(testhosts: TestHosts,
                                        sleeper_job: tuple[Path, Path, str, str]) -> None:
    inv, state, job_id, job_dir = sleeper_job
    d = shlex.quote(job_dir)
    hostile = ('if [ "$1" = status ]; then head -c 500000000 /dev/zero | tr "\\0" x; exit 0; fi;'
               f' exec bash {d}/launch.orig.sh "$@"')
    res = testhosts.ssh("th0", f"cd {d} && cp launch.sh launch.orig.sh && "
                               f"printf '%s\\n' {shlex.quote(hostile)} > launch.sh")
    assert res.returncode == 0, res.stderr
    try:
        probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], "
                 "capture_output=True, text=True); print(p.returncode); print(p.stdout); "
                 "print(p.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        proc = subprocess.run(
            [sys.executable, "-c", probe, sys.executable, "-m", "orchestrator", "status", job_id,
             "--json", "-i", str(inv), "--state-dir", str(state)], capture_output=True,
            text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    finally:
        testhosts.ssh("th0", f"cd {d} && mv -f launch.orig.sh launch.sh")
    lines = proc.stdout.splitlines()
    peak_kib = int(lines[-1])
    print(f"\n`orchestrate status` against a 500 MB reply: peak RSS {peak_kib / 1024:.0f} MiB")
    text = "\n".join(lines[:-1])
    assert "printed more than 16777216 bytes on stdout" in text, text[-2000:]
    assert "ORCHESTRATE_MAX_OUTPUT" in text
    assert peak_kib < 200 * 1024  # 16 MiB cap; ~1 GB before the cap


def test_names_with_newlines_and_escape_sequences(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    job = f"/tmp/hjob-{os.getpid()}"
    rank0 = f"{job}/output/checkpoint/rank_0"
    names = ["bloom_rank_0-5.ckpt\n", "bloom_rank_0-6.ckpt\nx", "\x1b]52;c;aGk=\x07.ckpt"]
    make = f"import os; os.makedirs({rank0!r}); [open(os.path.join({rank0!r}, n), 'w').close() " \
           f"for n in {names!r}]; print(len(os.listdir({rank0!r})))"
    res = testhosts.ssh("th1", f"python3 -c {shlex.quote(make)}")
    assert res.stdout.strip() == "3", res.stderr
    try:
        with transport_for(inv.nodes[1], inv) as t:
            listing = parse_listing("th1", ckpt_nodes.list_job(t, PurePosixPath(job), [0]), [0])
    finally:
        testhosts.ssh("th1", f"rm -rf {job}")
    assert listing.ckpts[0] == {}  # no name with a newline became a checkpoint
    problems = " ".join(listing.problems[0])
    assert "'bloom_rank_0-5.ckpt\\n'" in problems and "\\x1b]52" in problems
    # what `orchestrate exec` shows of a node's escape sequence: replaced, never sent raw
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "exec", "-i", str(testhosts.inventory),
         "--include", "th1", "--", "printf", "'\\033]52;c;aGk=\\007hi\\n'"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[th1] \ufffd]52;c;aGk=\ufffdhi\n" and "\x1b" not in out.stderr


def test_a_symlinked_temp_name_is_never_written_through(testhosts: TestHosts,
                                                        tmp_path: Path) -> None:
    inv = load_inventory(testhosts.inventory)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    dest = tmp_path / "ckpt"
    (dest / "rank_0").mkdir(parents=True)
    (dest / "rank_0" / "x.ckpt.part").symlink_to(victim)  # planted at the resume name
    testhosts.ssh("th1", "head -c 1024 /dev/urandom > /tmp/x.ckpt")
    item = ckpt_fetch.Item("th1", PurePosixPath("/tmp/x.ckpt"), PurePosixPath("rank_0/x.ckpt"),
                           1024, None, "rank 0")
    with transport_for(inv.nodes[1], inv) as t:
        def opener(_node: str, path: PurePosixPath, offset: int):  # type: ignore[no-untyped-def]
            return ckpt_nodes.open_stream(t, path, offset)

        with pytest.raises(CheckpointError, match="symlink"):
            ckpt_fetch.fetch_all(dest, [item], opener, jobs=1)
        (dest / "rank_0" / "x.ckpt.part").unlink()
        ckpt_fetch.fetch_all(dest, [item], opener, jobs=1)  # without the plant: fetched
    assert victim.read_text() == "precious\n"
    assert (dest / "rank_0" / "x.ckpt").stat().st_mode & 0o7777 == 0o444
