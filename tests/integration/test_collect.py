"""`collect-ckpt` against 2 real sshd test hosts (tests/testhosts.sh, 2 ranks each).

Checkpoints are placed in each host's private workdir as a job leaves them; collect reads
them over real SSH (strict host keys), real files, real MindSpore for strip/transform/check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.ckpt.collect import Options, collect
from orchestrator.config.inventory import load_inventory
from orchestrator.errors import CheckpointError
from tests.integration.conftest import default_sigint, module_host_set, set_tag


def collect_on(inventory: Path, *args: Any, **kwargs: Any) -> Any:
    """ckpt.collect over a NodeGroup of `inventory`'s nodes (as the CLI does)."""
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(load_inventory(inventory)) as group:
        return collect(group, *args, **kwargs)


pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(tempfile.gettempdir()) / f"orchestrate-testhosts-collect-{os.getpid()}"
MODEL = {"vocab_size": 64, "hidden_size": 16, "n_layer": 4, "n_head": 2, "seq_length": 8}


def _hosts(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "tests/testhosts.sh"), *args, "--state", str(STATE)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def hosts() -> Iterator[Path]:
    yield from module_host_set(STATE, 2, devices=2)


def _workdir(host: int) -> Path:
    return STATE / "hosts" / f"th{host}" / "work"


def _full() -> dict[str, np.ndarray]:
    from orchestrate_bloom.ckpt.tools import model_shapes

    rng = np.random.default_rng(7)
    shapes = model_shapes(MODEL)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def _manifest(path: Path, rank: int, step: int, layout: dict[str, int]) -> None:
    data = path.read_bytes()
    doc = {
        "step": step,
        "rank": rank,
        "file": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "layout": layout,
        "model": MODEL,
        "job_id": "j",
    }
    path.with_suffix(".json").write_text(json.dumps(doc))


def _place_dp(job: str, steps: tuple[int, ...] = (10, 20)) -> dict[str, np.ndarray]:
    """A DP=4 job: ranks 0,1 on th0 and 2,3 on th1, identical params + Adam state."""
    import mindspore as ms

    full = _full()
    layout = {"data_parallel": 4, "model_parallel": 1, "pipeline_stage": 1}
    for rank in range(4):
        folder = _workdir(rank // 2) / "jobs" / job / "output" / "checkpoint" / f"rank_{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        for step in steps:
            items = [{"name": n, "data": ms.Tensor(a + step)} for n, a in full.items()]
            items += [{"name": f"adam_m.{n}", "data": ms.Tensor(a)} for n, a in full.items()]
            items.append({"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))})
            path = folder / f"bloom_rank_{rank}-{step}.ckpt"
            ms.save_checkpoint(items, str(path))
            _manifest(path, rank, step, layout)
    return {n: a + max(steps) for n, a in full.items()}


def _place_sharded(
    job: str, step: int = 30, drop_strategy: int | None = None, dp: int = 1, pp: int = 2
) -> dict:
    """A DP x MP2 x PP job from tests/tools/shards.py, laid out as a job leaves it."""
    from tests.tools.shards import write_sharded

    full = _full()
    tmp = STATE / f"synth-{job}"
    write_sharded(tmp, full, dp=dp, mp=2, pp=pp, n_layer=MODEL["n_layer"])
    layout = {"data_parallel": dp, "model_parallel": 2, "pipeline_stage": pp}
    for rank in range(4):
        out = _workdir(rank // 2) / "jobs" / job / "output"
        folder = out / "checkpoint" / f"rank_{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bloom_rank_{rank}-{step}.ckpt"
        shutil.copy(tmp / "checkpoint" / f"rank_{rank}" / "shard.ckpt", path)
        _manifest(path, rank, step, layout)
        if rank != drop_strategy:
            (out / "strategy").mkdir(exist_ok=True)
            name = f"ckpt_strategy_rank_{rank}.ckpt"
            shutil.copy(tmp / "strategy" / name, out / "strategy" / name)
    shutil.rmtree(tmp)
    return full


def _load(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {n: p.asnumpy() for n, p in ms.load_checkpoint(str(path)).items()}


def test_dp_job_fetches_one_replica_merges_and_loads(hosts: Path, tmp_path: Path) -> None:
    want = _place_dp("dp1")
    said: list[str] = []
    res = collect_on(hosts, "dp1", tmp_path / "d", say=said.append)
    assert res.step == 20 and res.fetched_ranks == [0] and res.saved_bytes > 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        ".verified.json",
        "merged",
        "rank_0",
    ]
    got = _load(res.merged)
    assert set(got) == set(want)  # optimizer state stripped
    for n, a in want.items():
        np.testing.assert_array_equal(got[n], a)
    manifest = json.loads(res.manifest.read_text())
    assert manifest["step"] == 20 and manifest["job_id"] == "dp1" and manifest["model"] == MODEL
    assert "check" in res.seconds  # loaded into BloomLMHeadModel

    again = collect_on(
        hosts, "dp1", tmp_path / "d", Options(check=False), say=said.append
    )
    assert again.downloaded == 0 and "rank 0: verified earlier" in said


def test_cli_progress_and_step_flag(hosts: Path, tmp_path: Path) -> None:
    _place_dp("dp2")
    cmd = [
        sys.executable,
        "-m",
        "orchestrator",
        "collect-ckpt",
        "-i",
        str(hosts),
        "dp2",
        "-o",
        str(tmp_path / "d"),
        "--step",
        "10",
        "--no-load-check",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("bloom_unknown_step10.ckpt")
    assert "gather" in proc.stderr and "KiB" in proc.stderr
    bad = subprocess.run(
        [*cmd[:-3], "--step", "15"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert "step 15 is not complete on every rank" in bad.stderr
    assert "rank 3 on th1 lacks step 15" in bad.stderr


def test_corrupted_shard_on_a_node_is_named_and_skipped(hosts: Path, tmp_path: Path) -> None:
    _place_dp("bad")
    victim = _workdir(1) / "jobs/bad/output/checkpoint/rank_3/bloom_rank_3-20.ckpt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=r"step 20 is corrupt.*\n  rank 3 on th1: .*"
        r"bloom_rank_3-20.ckpt sha256",
    ):
        collect_on(hosts, "bad", tmp_path / "d", Options(step=20))
    said: list[str] = []
    res = collect_on(
        hosts, "bad", tmp_path / "d", Options(check=False), say=said.append
    )
    assert res.step == 10
    assert any("skipping step 20" in s and "rank 3 on th1" in s for s in said)


def test_unreachable_host_is_named_with_its_ranks(hosts: Path, tmp_path: Path) -> None:
    _place_dp("down")
    assert _hosts("stop", "th1").returncode == 0
    try:
        with pytest.raises(CheckpointError, match=r"\[th1\] .*holds ranks 2-3"):
            collect_on(hosts, "down", tmp_path / "d")
    finally:
        assert _hosts("start", "th1").returncode == 0


@pytest.mark.parametrize(("dp", "pp", "fetched"), [(1, 2, [0, 1, 2, 3]), (2, 1, [0, 1])])
def test_sharded_job_reassembles_exactly(
    hosts: Path, tmp_path: Path, dp: int, pp: int, fetched: list[int]
) -> None:
    """MP2 x PP2 (ranks spread over both hosts) and DP2 x MP2 (th1 holds replicas only)."""
    want = _place_sharded(f"mp{dp}{pp}", dp=dp, pp=pp)
    res = collect_on(hosts, f"mp{dp}{pp}", tmp_path / "d")
    assert res.fetched_ranks == fetched and (res.saved_bytes > 0) == (dp > 1)
    assert sorted(p.name for p in (tmp_path / "d" / "strategy").iterdir()) == [
        f"ckpt_strategy_rank_{r}.ckpt" for r in range(4)
    ]
    got = _load(res.merged)
    assert set(got) == set(want)
    for n, a in want.items():
        np.testing.assert_array_equal(got[n], a, err_msg=n)


def test_missing_strategy_names_the_rank(hosts: Path, tmp_path: Path) -> None:
    _place_sharded("nostrat", drop_strategy=3)
    with pytest.raises(CheckpointError, match=r"strategy file missing for rank 3 on th1"):
        collect_on(hosts, "nostrat", tmp_path / "d")


def test_too_little_local_disk_is_refused_before_download(hosts: Path, tmp_path: Path) -> None:
    _place_dp("disk")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(CheckpointError, match=r"not enough disk in .*small.*need"):
            collect_on(hosts, "disk", small / "d")
        assert not list((small / "d").rglob("*.ckpt*"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_interrupted_gather_resumes_without_refetching(hosts: Path, tmp_path: Path) -> None:
    """SIGINT mid-gather (one stream at a time), rerun: verified files kept, partial resumed."""
    import signal
    import time

    from tests.tools.shards import write_sharded

    rng = np.random.default_rng(1)
    full = _full()
    full["transformer.word_embeddings.weight"] = rng.standard_normal(
        (1 << 21, MODEL["hidden_size"])
    ).astype(np.float32)  # 128 MiB: 64 MiB on ranks 0, 1
    synth = STATE / "synth-int"
    write_sharded(synth, full, dp=1, mp=2, pp=2, n_layer=MODEL["n_layer"])
    layout = {"data_parallel": 1, "model_parallel": 2, "pipeline_stage": 2}
    model = {**MODEL, "vocab_size": 1 << 21}
    for rank in range(4):
        out = _workdir(rank // 2) / "jobs" / "int" / "output"
        (out / "checkpoint" / f"rank_{rank}").mkdir(parents=True, exist_ok=True)
        (out / "strategy").mkdir(exist_ok=True)
        path = out / "checkpoint" / f"rank_{rank}" / f"bloom_rank_{rank}-1.ckpt"
        shutil.copy(synth / "checkpoint" / f"rank_{rank}" / "shard.ckpt", path)
        name = f"ckpt_strategy_rank_{rank}.ckpt"
        shutil.copy(synth / "strategy" / name, out / "strategy" / name)
        data = path.read_bytes()
        path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "step": 1,
                    "rank": rank,
                    "size": len(data),
                    "layout": layout,
                    "model": model,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        )
    shutil.rmtree(synth)
    dest = tmp_path / "d"
    cmd = [
        sys.executable,
        "-m",
        "orchestrator",
        "collect-ckpt",
        "-i",
        str(hosts),
        "int",
        "-o",
        str(dest),
        "--forks",
        "1",
        "--no-check",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    # th0 sends at 100 Mbit/s (~5 s per 64 MiB rank): the SIGINT lands while rank 1 streams
    # (unthrottled, a 64 MiB file can finish between seeing its .part and the signal)
    tc = ["ip", "netns", "exec", f"oth-{set_tag(STATE)}-0", "tc", "qdisc"]
    subprocess.run([*tc, "replace", "dev", "eth0", "root", "tbf", "rate", "100mbit",
                    "burst", "256kb", "latency", "400ms"], check=True, timeout=30)
    try:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=default_sigint,
        )
        part = dest / "rank_1" / "bloom_rank_1-1.ckpt.part"
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        subprocess.run([*tc, "del", "dev", "eth0", "root"], check=False, timeout=30,
                       capture_output=True)
    assert proc.returncode != 0, err
    assert (dest / "rank_0" / "bloom_rank_0-1.ckpt").is_file()
    assert part.is_file() and 0 < part.stat().st_size
    assert not (dest / "merged").exists()

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "rank 0: verified earlier" in again.stderr
    assert "rank 1: resumed" in again.stderr
    got = _load(dest / "merged" / "bloom_unknown_step1.ckpt")
    for n, a in full.items():
        np.testing.assert_array_equal(got[n], a, err_msg=n)


@pytest.mark.parametrize("source", ["mp2pp2", "dp4"])
def test_dst_strategy_writes_every_destination_rank(
    hosts: Path, tmp_path: Path, source: str
) -> None:
    """To a DP2 x MP2 layout, 2 processes: each rank equals that layout's own shard."""
    import mindspore as ms
    from orchestrate_bloom.ckpt.tools import merge_strategies

    from tests.tools.shards import write_sharded

    job = f"dst{source}"
    if source == "mp2pp2":
        full = _place_sharded(job)
    else:
        full = _place_dp(job, steps=(30,))
    want = tmp_path / "want"
    write_sharded(want, full, dp=2, mp=2, pp=1, n_layer=MODEL["n_layer"])
    dst = tmp_path / "dp2mp2.ckpt"
    merge_strategies(want / "strategy", dst)
    res = collect_on(
        hosts, job, tmp_path / "d", Options(dst_strategy=dst, processes=2)
    )
    assert res.merged == tmp_path / "d" / "merged" / "bloom_unknown_step30_dp2mp2"
    manifest = json.loads(res.manifest.read_text())
    assert [f["path"] for f in manifest["files"]] == [
        f"rank_{r}/bloom_unknown_step30.ckpt" for r in range(4)
    ]
    for r in range(4):
        got = ms.load_checkpoint(str(res.merged / f"rank_{r}" / "bloom_unknown_step30.ckpt"))
        exp = ms.load_checkpoint(str(want / "checkpoint" / f"rank_{r}" / "shard.ckpt"))
        names = set(exp) - {"adam_m.synthetic"}
        assert set(got) == names
        for n in names:
            np.testing.assert_array_equal(got[n].asnumpy(), exp[n].asnumpy(), err_msg=n)
