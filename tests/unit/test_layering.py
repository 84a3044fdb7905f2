"""Import directions, checked two ways: by reading every import statement (AST, lazy imports
inside functions included) and by importing every control-plane module in a fresh interpreter.

    python -m pytest -q tests/unit/test_layering.py

- only orchestrator/remote/ imports fabric, paramiko or invoke (the SSH layer);
- orchestrator/ never imports mindspore or numpy (the CLI starts fast and runs anywhere);
- model/ (orchestrate_bloom) never imports orchestrator;
- orchestrator/config/ and orchestrator/hccl/ import neither remote/ nor job/ nor cli/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SSH_LIBS = {"fabric", "paramiko", "invoke"}
HEAVY = {"mindspore", "numpy"}


def imports(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""


def violations(folder: str, banned: set[str], allowed_under: str | None = None,
               root: Path = REPO) -> list[str]:
    """`file:line imports name` for each import of a banned module (or its submodules)."""
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if allowed_under and rel.startswith(allowed_under):
            continue
        for line, name in imports(path, root):
            if any(name == b or name.startswith(b + ".") for b in banned):
                out.append(f"{rel}:{line} imports {name}")
    return out


def test_only_remote_imports_the_ssh_libraries() -> None:
    assert violations("orchestrator", SSH_LIBS, allowed_under="orchestrator/remote/") == []


def test_control_plane_never_imports_mindspore_or_numpy() -> None:
    assert violations("orchestrator", HEAVY) == []


def test_model_never_imports_the_control_plane() -> None:
    assert violations("model", {"orchestrator"}) == []
    # relative imports in model/ resolve to `model.*`, never out of the package
    assert all(not name.startswith("orchestrator") for p in (REPO / "model").rglob("*.py")
               for _, name in imports(p))


@pytest.mark.parametrize("layer", ["config", "hccl"])
def test_config_and_hccl_do_not_reach_up(layer: str) -> None:
    up = {"orchestrator.remote", "orchestrator.job", "orchestrator.cli", "orchestrator.ckpt"}
    assert violations(f"orchestrator/{layer}", up) == []


def test_the_scan_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The AST scan is not vacuous: a function-level and a relative import are both found."""
    probe = tmp_path / "orchestrator" / "config" / "_layering_probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    import paramiko\n    from ..job import state\n")
    found = violations("orchestrator/config", {"paramiko", "orchestrator.job"}, root=tmp_path)
    assert found == ["orchestrator/config/_layering_probe.py:2 imports paramiko",
                     "orchestrator/config/_layering_probe.py:3 imports orchestrator.job"]


IMPORT_ALL = """
import json, pkgutil, importlib, sys
import orchestrator
from orchestrator.cli.main import main  # what `orchestrate --help` loads
cli = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
    importlib.import_module(info.name)
every = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
print(json.dumps({{"cli": cli, "every": every}}))
"""


def test_importing_every_control_plane_module_loads_no_mindspore_or_numpy() -> None:
    code = IMPORT_ALL.format(heavy=sorted(HEAVY))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.splitlines()[-1]) == {"cli": [], "every": []}
