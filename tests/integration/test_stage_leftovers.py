"""Staging over real SSH removes an interrupted stage's stale temp names, never a live one's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.job.render import RenderedFile
from orchestrator.job.stage import Tree, stage_node, tree_manifest
from orchestrator.remote.group import transport_for
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration

STALE = ["blobs/.unpack-dead0001", "blobs/.incoming-j-old-0123456789ab-dead0001-0.tar",
         "blobs/..incoming-j-old-0123456789ab-dead0002-0.tar.orchestrate-tmp-dead0002",
         "trees/.0123456789abcdef.partial-dead0001"]
# a live stager's names: a fresh file, a folder whose own mtime is old but which holds a
# fresh file (tar keeps archived mtimes), a fresh partial tree; and names no stager uses
FRESH = ["blobs/.unpack-live0001", "blobs/.unpack-live0002",
         "trees/.0123456789abcdef.partial-live0001", "blobs/.incoming-j-new-0-live0001-0.tar"]
KEEP = ["blobs/" + "ab" * 32, "trees/.keep-me"]


def test_stage_removes_stale_leftovers_only(testhosts: TestHosts, tmp_path: Path) -> None:
    inv = load_inventory(testhosts.inventory)
    node = inv.nodes[0]
    wd = str(node.workdir)
    old = "touch -h -d '2 hours ago'"
    setup = [
        "set -eu", f"cd {wd}", "mkdir -p blobs trees",
        # stale: the entries and everything inside them 2 hours old
        f"mkdir -p {STALE[0]} && touch {STALE[0]}/x && {old} {STALE[0]}/x {STALE[0]}",
        f"touch {STALE[1]} {STALE[2]} && {old} {STALE[1]} {STALE[2]}",
        f"mkdir -p {STALE[3]}/model && touch {STALE[3]}/model/a.py && "
        f"{old} {STALE[3]}/model/a.py {STALE[3]}/model {STALE[3]}",
        # fresh
        f"mkdir -p {FRESH[0]} && touch {FRESH[0]}/y",
        f"mkdir -p {FRESH[1]} && touch {FRESH[1]}/z && {old} {FRESH[1]}",
        f"mkdir -p {FRESH[2]}", f"touch {FRESH[3]}",
        # not a stager's temp name, however old
        f"touch {KEEP[0]} {KEEP[1]} && {old} {KEEP[0]} {KEEP[1]}",
    ]
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "m.py").write_text(f"X = {os.urandom(8).hex()!r}\n")
    tree = Tree.of(tree_manifest(src, "pkg"), "code")
    job = f"leftovers-{os.getpid()}"
    with transport_for(node, inv) as t:
        t.run("\n".join(setup))
        staged = stage_node(t, job, wd, [tree], {"launch.sh": RenderedFile("true\n", 0o755)},
                            {}, tmp_path)
        check = " ".join(f"[ -e {p} ] && echo {p};" for p in STALE + FRESH + KEEP)
        present = set(t.run(f"cd {wd}; {check} true").stdout.split())
        code = t.run(["cat", f"{staged.job_dir}/code/pkg/m.py"]).stdout
        t.run(f"cd {wd}; rm -rf {' '.join(FRESH + KEEP)} jobs/{job}")
    assert present == set(FRESH + KEEP), f"present after stage: {sorted(present)}"
    assert sorted(staged.leftovers) == sorted(p.split("/")[1] for p in STALE)
    assert code == (src / "m.py").read_text()
