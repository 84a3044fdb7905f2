"""put/get over real SSH: atomic, mode kept, sha256 verified; hostile remote trees refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.errors import TransferError
from orchestrator.remote import files
from orchestrator.remote.group import transport_for
from orchestrator.remote.ssh import SSHTransport
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def th0(testhosts: TestHosts):  # type: ignore[no-untyped-def]
    inv = load_inventory(testhosts.inventory)
    with transport_for(inv.nodes[0], inv) as t:
        yield t


@pytest.fixture
def remote_dir(th0) -> PurePosixPath:  # type: ignore[no-untyped-def]
    d = th0.node.workdir / f"xfer-{os.getpid()}-{os.urandom(3).hex()}"
    th0.run(["mkdir", "-p", str(d)])
    yield d
    th0.run(["rm", "-rf", str(d)])


@pytest.mark.parametrize("use_openssh", [True, False], ids=["openssh", "paramiko"])
def test_put_get_round_trip(testhosts: TestHosts, tmp_path: Path, use_openssh: bool) -> None:
    inv = load_inventory(testhosts.inventory)
    src = tmp_path / "src file.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    src.chmod(0o640)
    with transport_for(inv.nodes[1], inv, use_openssh=use_openssh) as t:
        assert isinstance(t, SSHTransport)
        remote = inv.nodes[1].workdir / f"rt-{use_openssh}" / "a 'b' $c.bin"
        t.run(["mkdir", "-p", str(remote.parent)])
        t.put(src, remote)
        listing = t.run(["ls", "-A", str(remote.parent)]).stdout.splitlines()
        assert listing == [remote.name]  # no temp file left behind
        info = files.remote_stat(t, remote)
        assert (info.size, info.mode, info.sha256) == (src.stat().st_size, 0o640, sha(src))
        t.put(src, remote, mode=0o600)  # overwrite, explicit mode
        assert files.remote_stat(t, remote).mode == 0o600
        back = tmp_path / "back" / "copy.bin"
        t.get(remote, back)
        t.run(["rm", "-rf", str(remote.parent)])
    assert sha(back) == sha(src) and (back.stat().st_mode & 0o777) == 0o600
    assert os.listdir(back.parent) == ["copy.bin"]


def test_get_missing_file_leaves_nothing(th0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(TransferError, match=r"\[th0\] cannot read .*/nope"):
        th0.get(th0.node.workdir / "nope", dest)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


def test_get_keeps_old_file_on_failure(th0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "x.bin"
    dest.write_text("old")
    with pytest.raises(TransferError):
        th0.get(th0.node.workdir, dest)  # a directory, not a regular file
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["x.bin"]
