"""The layer rule of DESIGN.md, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_orchestrator_never_imports_mindspore() -> None:
    offenders = [
        p for p in (REPO / "orchestrator").rglob("*.py") if "mindspore" in imported_roots(p)
    ]
    assert offenders == []


def test_only_remote_imports_fabric_or_paramiko() -> None:
    offenders = [
        p
        for p in (REPO / "orchestrator").rglob("*.py")
        if {"fabric", "paramiko"} & imported_roots(p)
        and "remote" not in p.relative_to(REPO / "orchestrator").parts
    ]
    assert offenders == []


def test_model_never_imports_orchestrator() -> None:
    offenders = [p for p in (REPO / "model").rglob("*.py") if "orchestrator" in imported_roots(p)]
    assert offenders == []
