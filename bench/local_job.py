"""A tiny training job on this machine as one `connection: local` node: the inventory and the
`orchestrate up --wait` command line that bench/cpu_share.py and bench/cluster_start.py run.

    args = up_args(folder, devices=2, steps=30, log_steps=1, env={"MS_RETRY_INTERVAL_UPPER": "5"})
    subprocess.run(args, cwd=folder, env=dict(os.environ, PYTHONPATH=str(REPO)))
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent  # the checkout the job's code comes from


def up_args(folder: Path, devices: int, steps: int, log_steps: int,
            env: Mapping[str, str] | None = None, sets: Sequence[str] = ()) -> list[str]:
    """Write `folder/inv.yaml` (one local node with `devices` CPU ranks, its workdir
    `folder/work`, this Python, the inventory `env:` values) and return the command of a tiny
    job of `steps` steps there, a step line every `log_steps` and one checkpoint at the end
    (state in `folder/state`; extra `--set KEY=VALUE` from `sets`)."""
    defaults: dict[str, object] = {"connection": "local", "devices": devices,
                                   "workdir": str(folder / "work"), "python": sys.executable}
    if env:
        defaults["env"] = dict(env)
    inventory = {"defaults": defaults, "nodes": [{"host": "127.0.0.1", "name": "local"}]}
    (folder / "inv.yaml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    args = [sys.executable, "-m", "orchestrator", "up", "-i", str(folder / "inv.yaml"), "-c",
            "tiny", "--no-check", "--wait", "--no-guard", "--state-dir", str(folder / "state"),
            "--set", f"train.steps={steps}", "--set", f"train.log_steps={log_steps}",
            "--set", f"train.save_steps={steps}"]
    for item in sets:
        args += ["--set", item]
    return args
