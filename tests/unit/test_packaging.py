"""pyproject's package list is the tree: a wheel ships every package of orchestrator/ and of
model/ (installed as orchestrate_bloom, sub-packages train/, data/, ckpt/ included).

    python -m pytest tests/unit/test_packaging.py -q

A package missing from `[tool.setuptools] packages` installs nothing of its folder (the editable
install of a checkout hides this; tests/e2e/test_wheel.py sees it only after minutes).
"""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def _declared() -> tuple[set[str], dict[str, str]]:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(conf["packages"]), conf["package-dir"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """The checkout folder setuptools builds `package` from (longest package-dir prefix)."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        base = ".".join(parts[:n])
        if base in package_dir:
            return REPO / package_dir[base] / Path(*parts[n:])
    return REPO / Path(*parts)


def test_every_package_folder_is_declared_and_every_declared_package_exists() -> None:
    packages, package_dir = _declared()
    roots = {"orchestrator": REPO / "orchestrator", "orchestrate_bloom": REPO / "model"}
    found = {name + "".join("." + q for q in init.parent.relative_to(root).parts)
             for name, root in roots.items() for init in root.rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert found - packages == set(), "packages missing from pyproject [tool.setuptools]"
    assert {"orchestrate_bloom.train", "orchestrate_bloom.data", "orchestrate_bloom.ckpt"} <= found
    for package in packages:
        folder = _folder(package, package_dir)
        assert folder.is_dir(), f"{package}: {folder} is not a folder"
        assert (folder / "__init__.py").is_file(), f"{package}: no __init__.py in {folder}"
