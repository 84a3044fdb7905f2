"""The package installs: build the wheel, install it into a fresh venv, and run the README flow
from a folder outside the checkout that holds a user's own `model.py` and `model/` package
(also on PYTHONPATH), with nothing of the checkout importable.

    python -m pytest -q tests/e2e/test_wheel.py        # slow: ~2 min on 2 cores

The fresh venv is made with --system-site-packages and one `.pth` line naming the test
venv's site-packages, so MindSpore and the other dependencies need no download; `.pth` files
there (the editable install's finder) are not processed, so only the wheel provides
`orchestrator` and `orchestrate_bloom` (checked: their `__file__` is in the new venv).
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def fresh_venv(tmp: Path) -> Path:
    """A new venv with the built wheel installed (not editable); its python."""
    wheels = tmp / "wheels"
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", wheels, REPO, cwd=tmp)
    (wheel,) = wheels.glob("orchestrate-*.whl")
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp)
    py = venv / "bin" / "python"
    purelib = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                 cwd=tmp).stdout.strip()
    deps = [p for p in site.getsitepackages() if p != sysconfig.get_paths()["stdlib"]]
    Path(purelib, "test-deps.pth").write_text("\n".join(deps) + "\n")  # paths only
    sh(py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    return py


def test_wheel_installs_and_runs_up_collect_infer_outside_the_checkout(tmp_path: Path) -> None:
    py = fresh_venv(tmp_path)
    venv = py.parent.parent
    user = tmp_path / "project"  # a user's own ML project
    (user / "model").mkdir(parents=True)
    (user / "model.py").write_text("raise ImportError('the user model.py was imported')\n")
    (user / "model" / "__init__.py").write_text("raise ImportError('the user model/ was "
                                                "imported')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", PYTHONPATH=str(user), COLUMNS="120",
               VIRTUAL_ENV=str(venv))
    where = sh(py, "-c", "import orchestrator, orchestrate_bloom, json; print(json.dumps("
               "[orchestrator.__file__, orchestrate_bloom.__file__]))", cwd=user, env=env)
    for f in json.loads(where.stdout):
        assert Path(f).is_relative_to(venv) and not Path(f).is_relative_to(REPO), f
    inv = user / "local.yaml"
    inv.write_text(f"defaults: {{connection: local, devices: 2, workdir: {user / 'run'}, "
                   f"python: {py}}}\nnodes:\n  - {{host: 127.0.0.1, name: local}}\n")
    orchestrate = venv / "bin" / "orchestrate"
    up = sh(orchestrate, "up", "-i", inv, "-c", "tiny", "--set", "train.steps=5", "--wait",
            cwd=user, env=env)
    assert "SUCCEEDED" in up.stdout, up.stdout
    got = sh(orchestrate, "collect-ckpt", cwd=user, env=env)
    merged = user / got.stdout.strip().splitlines()[-1].removeprefix("merged checkpoint: ")
    assert merged.is_file() and merged.is_relative_to(user), got.stdout
    out = sh(orchestrate, "infer", "--job", "latest", "--max-new-tokens", "4", "--json",
             "Give three tips.", cwd=user, env=env)
    doc = json.loads(out.stdout)
    assert doc, out.stdout
    templates = sh(py, "-c", "from orchestrator import bundle; print(bundle.templates_dir(), "
                   "bundle.presets_dir())", cwd=user, env=env).stdout.split()
    for folder in templates:  # package data, from the installed wheel
        assert Path(folder).is_relative_to(venv), folder
