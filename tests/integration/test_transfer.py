"""put/get over real SSH: atomic, mode kept, sha256 verified; hostile remote trees refused."""

from __future__ import annotations

import hashlib
import os
import threading
import time
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
    assert sha(back) == sha(src) and (back.stat().st_mode & 0o7777) == files.LOG_MODE
    t2 = back.parent / "ro.bin"
    with transport_for(inv.nodes[1], inv, use_openssh=use_openssh) as t:
        t.run(["mkdir", "-p", str(remote.parent)])
        t.put(src, remote, mode=0o6755)
        t.get(remote, t2, mode=files.CKPT_MODE)
        t.run(["rm", "-rf", str(remote.parent)])
    assert (t2.stat().st_mode & 0o7777) == 0o444  # the caller's mode, never the node's
    assert sorted(os.listdir(back.parent)) == ["copy.bin", "ro.bin"]


def test_put_is_0600_from_the_first_byte(testhosts: TestHosts, tmp_path: Path) -> None:
    """A node user watching the folder never sees the secret's temp copy with other bits."""
    inv = load_inventory(testhosts.inventory)
    src = tmp_path / "env.sh"
    src.write_bytes(b"export TOKEN=s3cret\n" * 1_600_000)  # 32 MB: SFTP takes ~0.5 s
    folder = f"/tmp/secret-{os.getpid()}"
    testhosts.ssh("th3", f"mkdir -p {folder}")
    spy_box: list[str] = []
    # the spy watches until told to stop once the put is over (at most 600 rounds, ~6 s)
    spy = threading.Thread(target=lambda: spy_box.append(testhosts.ssh("th3", (
        f"for i in $(seq 600); do [ -e {folder}/spy-stop ] && break; "
        f"for f in {folder}/.env.sh.orchestrate-tmp-*; do "
        '[ -e "$f" ] && stat -c %a "$f" 2>/dev/null; done; sleep 0.01; done')).stdout))
    spy.start()
    try:
        time.sleep(1.0)  # the spy loop is running on the node
        with transport_for(inv.nodes[3], inv, use_openssh=False) as t:
            lines: list[str] = []
            real_run = t.run

            def spy_run(cmd, **kw):  # type: ignore[no-untyped-def]
                lines.append(cmd)
                return real_run(cmd, **kw)

            t.run = spy_run  # type: ignore[method-assign]
            t.put(src, PurePosixPath(folder) / "env.sh", mode=0o600)
            t.run = real_run  # type: ignore[method-assign]
            final = files.remote_stat(t, PurePosixPath(folder) / "env.sh").mode
    finally:
        testhosts.ssh("th3", f"touch {folder}/spy-stop")
        spy.join()
        testhosts.ssh("th3", f"rm -rf {folder}")
    seen = spy_box[0].split()
    assert seen, "the spy never saw the temp copy (upload too fast to observe)"
    assert set(seen) == {"600"} and final == 0o600, seen
    # neither the secret's sha256 nor its size was on the node's command line (/proc/*/cmdline)
    assert not [c for c in lines if sha(src) in str(c) or str(src.stat().st_size) in str(c)]


def test_get_missing_file_leaves_nothing(th0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(TransferError, match=r"\[th0\] cannot read .*/nope"):
        th0.get(th0.node.workdir / "nope", dest)
    assert not dest.exists() and not list(tmp_path.rglob("*.orchestrate-tmp"))


def test_get_keeps_old_file_on_failure(th0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "x.bin"
    dest.write_text("old")
    with pytest.raises(TransferError):
        th0.get(th0.node.workdir, dest)  # a directory, not a regular file
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["x.bin"]
