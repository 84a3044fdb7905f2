"""Hostfiles as inventories and DeepSpeed's --include/--exclude, mirroring the facts of
DeepSpeed's own launcher tests (tests/unit/launcher/test_run.py: _parse_hostfile,
parse_resource_filter, parse_inclusion_exclusion)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.filters import apply_filters
from orchestrator.config.hostfile import looks_like_hostfile, parse_hostfile
from orchestrator.config.inventory import load_inventory, parse_inventory
from orchestrator.errors import InventoryError


def slots(inv) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    return {n.name: list(n.devices) for n in inv.nodes}


GOOD = """
    worker-1 slots=2
    worker-2 slots=2

    localhost slots=1
    123.23.12.10 slots=2

    #worker-1 slots=3
    # this is a comment

"""


def test_deepspeed_hostfile_good_with_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "hostfile"
    path.write_text(GOOD)
    inv = load_inventory(path)  # detected by content
    assert slots(inv) == {"worker-1": [0, 1], "worker-2": [0, 1], "localhost": [0],
                          "123.23.12.10": [0, 1]}
    assert inv.world_size == 7 and [n.host for n in inv.nodes][3] == "123.23.12.10"
    assert all(n.user is None and n.port is None for n in inv.nodes)  # ssh_config decides


@pytest.mark.parametrize("text, line, what", [
    ("worker-1 slots=2\nworker-2 slots=1\nworker-1 slots=1\n", 3, "duplicate host 'worker-1'"),
    ("this is bad slots=1\n", 1, "is not a hostfile entry"),
    ("worker-1 slots=2\nmissingslots\n", 2, "has no slots=N"),
    ("worker-1 slots=2\nthis is bad slots=1\nworker-2 slots=4\nmissingslots\n", 2,
     "is not a hostfile entry"),
    ("worker-1 slots=0\n", 1, "expected a slot count"),
    ("worker-1 slots=x\n", 1, "expected a slot count"),
    ("worker-1:x\n", 1, "expected a slot count"),
    ("bad_host! slots=1\n", 1, "is not a host name"),
])
def test_bad_hostfiles_name_file_and_line(tmp_path: Path, text: str, line: int,
                                          what: str) -> None:
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and what in str(info.value)


def test_empty_hostfile_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "hostfile"
    path.write_text("\n   \n# only a comment\n")
    with pytest.raises(InventoryError, match=f"{path}: expected a mapping .*got nothing"):
        load_inventory(path)  # an empty file is neither: the inventory's message
    with pytest.raises(InventoryError, match="no host entry"):
        parse_hostfile("# only a comment\n", path)


def test_open_mpi_and_mpich_hostfiles() -> None:
    ompi = parse_hostfile("n1 slots=2 max_slots=4\nn2 max-slots=8\nn3 slots=3  # fast\n")
    assert slots(ompi) == {"n1": [0, 1], "n2": [0], "n3": [0, 1, 2]}
    mpich = parse_hostfile("n1:4\nn2\nn3:1\n")
    assert slots(mpich) == {"n1": [0, 1, 2, 3], "n2": [0], "n3": [0]}
    assert slots(parse_hostfile("a\nb\n")) == {"a": [0], "b": [0]}  # bare hosts: MPICH


def test_detection_keeps_yaml_inventories_yaml() -> None:
    assert looks_like_hostfile("worker-1 slots=2\n") and looks_like_hostfile("n1:4\nn2\n")
    assert not looks_like_hostfile("hosts: [10.0.0.1]\n")
    assert not looks_like_hostfile("nodes:\n  - host: 10.0.0.1\n")
    assert not looks_like_hostfile("- host: 10.0.0.1\n")


HOSTS = "worker-0 slots=4\nworker-1 slots=4\n"


def test_filter_mutually_exclusive() -> None:
    with pytest.raises(InventoryError, match="not both"):
        apply_filters(parse_hostfile(HOSTS), "worker-0", "worker-1")


def test_filter_one_node() -> None:
    inv = parse_hostfile("worker-0 slots=4\n")
    assert slots(apply_filters(inv, None, None)) == {"worker-0": [0, 1, 2, 3]}
    assert slots(apply_filters(inv, None, "worker-0:1")) == {"worker-0": [0, 2, 3]}
    assert slots(apply_filters(inv, None, "worker-0:1,2")) == {"worker-0": [0, 3]}
    assert slots(apply_filters(inv, "worker-0:1", None)) == {"worker-0": [1]}
    assert slots(apply_filters(inv, "worker-0:1,1", None)) == {"worker-0": [1]}  # harmless
    assert slots(apply_filters(inv, "worker-0:1@worker-0:0,1", None)) == {"worker-0": [0, 1]}
    assert slots(apply_filters(inv, "worker-0", None)) == {"worker-0": [0, 1, 2, 3]}
    # DeepSpeed returns {} here; an inventory without nodes is an error for us
    for exclude in ("worker-0", "worker-0:0,1,2,3"):
        with pytest.raises(InventoryError, match="leaves no node"):
            apply_filters(inv, None, exclude)


def test_filter_multinode() -> None:
    inv = parse_hostfile(HOSTS)
    assert slots(apply_filters(inv, "worker-1:0,3", None)) == {"worker-1": [0, 3]}
    assert slots(apply_filters(inv, None, "worker-1")) == {"worker-0": [0, 1, 2, 3]}
    assert slots(apply_filters(inv, None, "worker-0:0,1@worker-1:3")) == {
        "worker-0": [2, 3], "worker-1": [0, 1, 2]}
    assert slots(apply_filters(inv, "worker-0@worker-1:0,2", None)) == {
        "worker-0": [0, 1, 2, 3], "worker-1": [0, 2]}
    assert slots(apply_filters(inv, None, "worker-0:1")) == {
        "worker-0": [0, 2, 3], "worker-1": [0, 1, 2, 3]}


@pytest.mark.parametrize("include, exclude, what", [
    ("jeff", None, "no host 'jeff'"),
    (None, "jeff", "no host 'jeff'"),
    ("worker-1:4", None, "no slot 4 on 'worker-1'"),
    (None, "worker-1:4", "no slot 4 on 'worker-1'"),
    ("worker-0:0,4", None, "no slot 4"),
    ("worker-0:99", None, "no slot 99"),
    (None, "worker-1@worker-0:1@5", "no host '5'"),
    ("worker-0:", None, "expected host[:slot"),
    ("worker-0@@worker-1", None, "expected host[:slot"),
    ("worker-0:a", None, "must be device ids"),
])
def test_filter_errors(include: str | None, exclude: str | None, what: str) -> None:
    with pytest.raises(InventoryError) as info:
        apply_filters(parse_hostfile(HOSTS), include, exclude)
    assert what in str(info.value)


def test_filter_on_yaml_inventory_uses_device_ids_and_names(tmp_path: Path) -> None:
    inv = parse_inventory("defaults: {devices: [4, 5, 6, 7]}\nnodes:\n"
                          "  - {host: 10.0.0.1, name: a}\n  - {host: 10.0.0.2, name: b}\n",
                          tmp_path / "inv.yaml")
    assert slots(apply_filters(inv, "a:5,7@10.0.0.2", None)) == {"a": [5, 7], "b": [4, 5, 6, 7]}
    with pytest.raises(InventoryError, match=r"no slot 0 on 'a' \(devices 4,5,6,7\)"):
        apply_filters(inv, "a:0", None)
    kept = apply_filters(inv, None, "b")
    assert [n.name for n in kept.nodes] == ["a"] and kept.digest == inv.digest
