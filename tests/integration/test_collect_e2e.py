"""Lifecycle e2e: `up` a DP job on 2 test hosts x 2 ranks, `collect-ckpt`, `infer --job`.

Everything real: sshd test hosts, the tiny trainer under msrun on CPU, MindSpore merge/check,
the inference CLI. ~1.5 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import module_host_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STATE = Path(tempfile.gettempdir()) / f"orchestrate-testhosts-collect-{os.getpid()}"
SEED = Path(__file__).resolve().parents[2] / "model" / "assets" / "alpaca_seed_tasks.json"


@pytest.fixture(scope="module")
def hosts() -> Iterator[Path]:
    yield from module_host_set(STATE, 2, devices=2)


def _cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_up_collect_infer(hosts: Path, tmp_path: Path) -> None:
    records = SEED if SEED.is_file() else None
    if records is None:
        records = tmp_path / "alpaca.json"
        records.write_text(
            json.dumps(
                [
                    {"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
                    for i in range(64)
                ]
            )
        )
    prep = _cli(
        tmp_path,
        "prepare-data",
        "--input",
        str(records),
        "--output",
        str(tmp_path / "data"),
        "--seq-length",
        "32",
    )
    assert prep.returncode == 0, prep.stderr
    up = _cli(
        tmp_path,
        "up",
        "-i",
        str(hosts),
        "-c",
        "tiny",
        "--set",
        f"data.path={tmp_path / 'data'}",
        "--set",
        "train.steps=10",
        "--set",
        "train.save_steps=5",
        "--set",
        "train.seq_length=32",
        "--wait",
    )
    assert up.returncode == 0, up.stdout + up.stderr

    got = _cli(tmp_path, "collect-ckpt")  # the latest job, its own inventory
    assert got.returncode == 0, got.stderr
    assert "fetching ranks [0] only" in got.stderr  # one replica of the 4 DP ranks
    merged = Path(tmp_path, got.stdout.strip().split("merged checkpoint: ")[1])
    assert merged.name == "bloom_tiny_step10.ckpt"
    assert sorted(p.name for p in merged.parent.parent.iterdir()) == [
        ".verified.json",
        "merged",
        "rank_0",
    ]
    assert "check" in got.stderr  # loaded into BloomLMHeadModel

    inf = _cli(tmp_path, "infer", "--job", "latest", "--max-new-tokens", "5", "Add 2 and 1.")
    assert inf.returncode == 0, inf.stderr
    assert inf.stdout.startswith("Add 2 and 1.") and len(inf.stdout.strip()) > len("Add 2 and 1.")
