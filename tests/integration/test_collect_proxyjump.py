"""collect-ckpt's download path to a node reachable only through a ProxyJump (2 test hosts).

th1 is made unreachable from this machine (inside th1's namespace, a `prohibit` route to the
bridge address this machine connects from; th0 on the same bridge still reaches it), and is
named in ssh_config with `ProxyJump` via th0. The gather streams (orchestrator/ckpt/nodes.py)
must work with and without the OpenSSH client path: OpenSSH through a ProxyCommand running the
same strict `ssh -W` via th0, and the transport's own paramiko connection through the jump host
(SFTP, from an offset too).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.ckpt import fetch as ckpt_fetch
from orchestrator.ckpt.collect import opener
from orchestrator.ckpt.nodes import open_stream
from orchestrator.config.inventory import load_inventory
from orchestrator.errors import RemoteError
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.ssh import SSHTransport
from tests.integration.conftest import module_host_set, set_tag

pytestmark = pytest.mark.integration

# unique per session; tests/testhosts.sh creates it, the module fixture removes it
STATE = Path(tempfile.gettempdir()) / f"oth-pj-{os.getpid()}-{os.urandom(3).hex()}"


@pytest.fixture(scope="module")
def jump_inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Inventory of th0 (direct) and th1 (only through th0), th1 cut off from this machine."""
    for base_inv in module_host_set(STATE, 2, devices=1):
        base = load_inventory(base_inv)
        th0, th1 = base.nodes[0].host, base.nodes[1].host
        gateway = th1.rsplit(".", 1)[0] + ".1"  # the bridge address this machine uses
        subprocess.run(["ip", "netns", "exec", f"oth-{set_tag(STATE)}-1", "ip", "route", "add",
                        "prohibit", f"{gateway}/32"], check=True, capture_output=True)
        direct = subprocess.run(
            ["ssh", "-F", str(STATE / "ssh_config"), "-o", "ConnectTimeout=2", "th1", "true"],
            capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=30)
        assert direct.returncode == 255, "th1 still reachable directly"
        d = tmp_path_factory.mktemp("jump")
        ident = STATE / "id_ed25519"
        (d / "ssh_config").write_text(
            f"Host jump0\n  HostName {th0}\n  User root\n  IdentityFile {ident}\n"
            f"Host th1-via-jump0\n  HostName {th1}\n  User root\n  IdentityFile {ident}\n"
            "  ProxyJump jump0\n")
        (d / "inventory.yaml").write_text(
            f"known_hosts: {STATE / 'known_hosts'}\nssh_config: {d / 'ssh_config'}\n"
            f"defaults: {{workdir: {STATE / 'work'}, identity_file: {ident}}}\n"
            f"nodes:\n  - {{name: th0, host: {th0}}}\n  - {{name: th1, host: th1-via-jump0}}\n")
        yield d / "inventory.yaml"


def _place(host: str, rel: str, size: int) -> tuple[PurePosixPath, str]:
    """A file of `size` random bytes in `host`'s private workdir; (node path, sha256)."""
    data = os.urandom(size)
    local = STATE / "hosts" / host / "work" / rel
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    return PurePosixPath(STATE / "work" / rel), hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("use_openssh", [True, False], ids=["openssh", "no-openssh"])
def test_gather_through_proxyjump(jump_inventory: Path, tmp_path: Path,
                                  use_openssh: bool) -> None:
    inv = load_inventory(jump_inventory)
    size = 3 * (1 << 20) + 5
    items = []
    for i, node in enumerate(inv.nodes):
        remote, sha = _place(node.name, f"jobs/pj/rank_{i}/shard-{use_openssh}.ckpt", size)
        items.append(ckpt_fetch.Item(node.name, remote, PurePosixPath(f"rank_{i}/s.ckpt"), size,
                                     sha, f"rank {i}"))
    dest = tmp_path / "dest"
    # th1's download was interrupted after 1 MiB: the rerun resumes at that offset
    part = dest / "rank_1" / "s.ckpt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((STATE / "hosts/th1/work" / f"jobs/pj/rank_1/shard-{use_openssh}.ckpt")
                     .read_bytes()[: 1 << 20])
    with NodeGroup(inv, use_openssh=use_openssh) as conns:
        th0, th1 = conns.transport("th0"), conns.transport("th1")
        assert isinstance(th0, SSHTransport) and isinstance(th1, SSHTransport)
        assert th1.run("hostname").stdout == "th1\n"  # through the jump host
        cmd = th1.openssh_command()
        assert (cmd is not None) is use_openssh
        assert (th0.openssh_command() is not None) is use_openssh
        if cmd is not None:  # OpenSSH reaches th1 only through the hop
            assert any(a.startswith("ProxyCommand=") for a in cmd)
            out = subprocess.run([*cmd, "hostname"], capture_output=True, text=True, check=False,
                                 stdin=subprocess.DEVNULL, timeout=30)
            assert (out.returncode, out.stdout) == (0, "th1\n"), out.stderr
        outcomes = ckpt_fetch.fetch_all(dest, items, opener(conns), jobs=2)
        missing = PurePosixPath(STATE / "work/jobs/pj/nope.ckpt")
        with pytest.raises(RemoteError, match=r"\[th1\] reading .*/nope\.ckpt"):
            with open_stream(th1, missing, 0) as stream:
                stream.read(1)
    got = {o.item.node: (o.action, o.fetched) for o in outcomes}
    assert got == {"th0": ("fetched", size), "th1": ("resumed", size - (1 << 20))}
    for it in items:
        assert hashlib.sha256((dest / it.rel).read_bytes()).hexdigest() == it.sha256
