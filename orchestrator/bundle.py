"""Where the bundled parts live, installed or in a checkout: the model package, presets, templates.

The MindSpore Bloom lives in the checkout's `model/` folder and is installed under the import
name `orchestrate_bloom` (never the generic `model`, which users' own `model.py` would shadow).
Everything that needs its folder, its presets, the launch templates, or runs one of its entry
points as a child (`python -m orchestrate_bloom.train ...`) asks this module.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path, PurePosixPath

MODEL_PACKAGE = "orchestrate_bloom"
"""Import name of the bundled model package (the checkout's `model/` folder)."""
_CHECKOUT_PREFIX = "model/"  # presets name shipped files as in the checkout: model/assets/...


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed (pip install orchestrate)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@cache
def model_dir() -> Path:
    """The folder of the model package (what `stage` ships to nodes as code/orchestrate_bloom/)."""
    return _package_dir(MODEL_PACKAGE)


def presets_dir() -> Path:
    """The shipped presets: tiny.yaml, 560m.yaml, ..., defaults.yaml."""
    return model_dir() / "configs"


@cache
def templates_dir() -> Path:
    """The Jinja2 launch templates (the checkout's `templates/`, package data when installed)."""
    return _package_dir("orchestrator.templates")


def shipped_file(path: str) -> Path | None:
    """A path a preset names relative to the checkout (`model/assets/x.json`), as installed."""
    if not path.startswith(_CHECKOUT_PREFIX):
        return None
    return model_dir().joinpath(*PurePosixPath(path[len(_CHECKOUT_PREFIX):]).parts)


def model_command(module: str, args: Sequence[str], python: str = sys.executable) -> list[str]:
    """The argv that runs `python -m orchestrate_bloom.<module> ARGS`."""
    return [python, "-m", f"{MODEL_PACKAGE}.{module}", *args]


def run_model(module: str, args: Sequence[str], *, python: str = sys.executable,
              env: Mapping[str, str] | None = None, quiet_mindspore: bool = True,
              capture_stdout: bool = True, timeout: float | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """Run `python -m orchestrate_bloom.<module> ARGS` here as a child and wait: the one local
    subprocess helper (stderr always captured, for tool_io.failure_reason; stdout unless told
    not to).
    An exception while waiting (KeyboardInterrupt, timeout) kills the child first."""
    return subprocess.run(model_command(module, args, python),
                          env=child_env(env, quiet_mindspore=quiet_mindspore),
                          stdout=subprocess.PIPE if capture_stdout else None,
                          stderr=subprocess.PIPE, text=True, errors="replace", timeout=timeout,
                          check=False)


def node_model_line(python: str, code_dir: str, module: str, args: Sequence[str]) -> str:
    """The shell line that runs `python -m orchestrate_bloom.<module> ARGS` on a node from the
    job's staged code (`code_dir`: the node's job_dir/code as a shell word, e.g. from
    job.render.shell_path). It runs in code_dir, so the staged package is the one imported
    whatever the login directory holds; every argument is quoted."""
    argv = shlex.join([python, "-m", f"{MODEL_PACKAGE}.{module}", *args])
    return f"cd {code_dir} && exec {argv}"


def child_env(extra: Mapping[str, str] | None = None,
              quiet_mindspore: bool = True) -> dict[str, str]:
    """Environment for a local child running model code: ours, MindSpore errors-only by default."""
    env = dict(os.environ)
    if quiet_mindspore:
        env.setdefault("GLOG_v", "3")
    env.update(extra or {})
    return env
