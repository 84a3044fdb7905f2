"""SSH transport and fan-out against real sshd test hosts: keys, auth, timeouts, failures."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.config.inventory import Inventory, load_inventory
from orchestrator.errors import (
    CommandTimeout,
    ConnectError,
    FanoutError,
    HostKeyError,
    RemoteCommandError,
)
from orchestrator.remote.group import NodeGroup, transport_for
from orchestrator.remote.ssh import SSHTransport, known_hosts_name
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration


def variant_inventory(hosts: TestHosts, tmp_path: Path, *, known_hosts: Path | None = None,
                      policy: str | None = None, identity: Path | None = None) -> Inventory:
    """The set's inventory with known_hosts / host_key_policy / identity_file swapped."""
    lines = []
    for line in hosts.inventory.read_text().splitlines():
        if known_hosts is not None and line.startswith("known_hosts:"):
            line = f"known_hosts: {known_hosts}"
        if policy is not None and line.startswith("host_key_policy:"):
            line = f"host_key_policy: {policy}"
        if identity is not None and line.startswith("  identity_file:"):
            line = f"  identity_file: {identity}"
        if (identity is not None or known_hosts is not None) and line.startswith("ssh_config:"):
            continue  # its IdentityFile / UserKnownHostsFile would add the good one back
        lines.append(line)
    path = tmp_path / "inventory.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_inventory(path)


def test_exec_on_all_hosts(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    with NodeGroup(inv) as nodes:
        res = nodes.run("echo out; echo err >&2; hostname")
    assert res.ok and not res.failed
    assert list(res.outcomes) == list(testhosts.names)
    for name, r in res.succeeded.items():
        lines = r.stdout.splitlines()
        assert lines[0] == "out" and r.stderr == "err\n" and r.exit_code == 0
        if testhosts.variant == "netns":
            assert lines[1] == name  # each host has its own hostname


def test_per_host_hccn_conf_differs(netns_hosts: TestHosts) -> None:
    inv = load_inventory(netns_hosts.inventory)
    with NodeGroup(inv) as nodes:
        res = nodes.run("cat /etc/hccn.conf")
    res.raise_on_failure()
    confs = {name: r.stdout for name, r in res.succeeded.items()}
    assert len(set(confs.values())) == len(confs)
    all_ips = []
    for text in confs.values():
        addrs = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("address_")]
        assert len(addrs) == 8
        all_ips += addrs
    assert len(set(all_ips)) == 8 * len(confs)
    assert not Path("/etc/hccn.conf").exists() or Path("/etc/hccn.conf").read_text() not in confs


def test_private_workdir_and_pid_namespace(netns_hosts: TestHosts) -> None:
    inv = load_inventory(netns_hosts.inventory)
    workdir = inv.nodes[0].workdir
    with NodeGroup(inv) as nodes:
        nodes.run(f"echo $(hostname) > {workdir}/whoami").raise_on_failure()
        # other tests may have left job folders in the workdir: count only whoami files
        seen = nodes.run(f"cat {workdir}/whoami; ls {workdir} | grep -c '^whoami'; "
                              "ps -e -o pid= | wc -l")
    for name, r in seen.succeeded.items():
        owner, files, procs = r.stdout.split()
        assert owner == name and files == "1"
        assert int(procs) < 12  # sshd (PID 1), our session, the shell, ps: not the machine's
    # the shared path is a private mount on each host: this machine sees it empty, and each
    # host's file sits in its own DIR/hosts/<name>/work
    assert not (Path(str(workdir)) / "whoami").exists()
    for name in netns_hosts.names:
        assert (netns_hosts.state / "hosts" / name / "work" / "whoami").read_text() == name + "\n"
        (netns_hosts.state / "hosts" / name / "work" / "whoami").unlink()


def test_one_host_down_is_named_others_succeed(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    testhosts.stop("th1")
    try:
        with NodeGroup(inv, connect_timeout=2, connect_attempts=2, backoff=0.1) as nodes:
            res = nodes.run("hostname")
    finally:
        testhosts.start("th1")
    assert set(res.failed) == {"th1"}
    assert set(res.succeeded) == set(testhosts.names) - {"th1"}
    err = res.failed["th1"]
    assert isinstance(err, ConnectError) and "[th1]" in str(err) and "refused" in str(err)
    with pytest.raises(FanoutError, match=r"1 of 4 nodes failed: th1: \[th1\] connection refused"):
        res.raise_on_failure()


def test_unknown_host_key_refused(testhosts: TestHosts, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inv = variant_inventory(testhosts, tmp_path, known_hosts=empty)
    with transport_for(inv.nodes[0], inv) as t, pytest.raises(HostKeyError) as info:
        t.run("true")
    msg = str(info.value)
    host = inv.nodes[0].host
    assert "[th0]" in msg and "unknown host key" in msg and host in msg and str(empty) in msg
    assert empty.read_text() == ""  # strict never writes


def test_changed_host_key_refused_even_with_accept_new(testhosts: TestHosts,
                                                       tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    node_host = load_inventory(testhosts.inventory).nodes[0]
    name = known_hosts_name(node_host.host, node_host.port or 22)
    wrong = tmp_path / "known_hosts"
    wrong.write_text("# another machine once had this address\n"
                     f"{name} {(tmp_path / 'k.pub').read_text().split(' ')[0]} "
                     f"{(tmp_path / 'k.pub').read_text().split(' ')[1]}\n")
    before = wrong.read_text()
    for policy in ("strict", "accept-new"):
        inv = variant_inventory(testhosts, tmp_path, known_hosts=wrong, policy=policy)
        with transport_for(inv.nodes[0], inv) as t, pytest.raises(HostKeyError) as info:
            t.open()
        msg = str(info.value)
        assert "CHANGED" in msg and f"{wrong}:2" in msg and "[th0]" in msg
    assert wrong.read_text() == before


def test_accept_new_adds_the_real_key(testhosts: TestHosts, tmp_path: Path) -> None:
    kh = tmp_path / "new_known_hosts"
    inv = variant_inventory(testhosts, tmp_path, known_hosts=kh, policy="accept-new")
    with NodeGroup(inv) as nodes:
        nodes.run("true").raise_on_failure()
    added = sorted(kh.read_text().splitlines())
    real = sorted(testhosts.known_hosts.read_text().splitlines())
    assert added == real
    strict = variant_inventory(testhosts, tmp_path, known_hosts=kh, policy="strict")
    with NodeGroup(strict) as nodes:
        nodes.run("true").raise_on_failure()
    assert sorted(kh.read_text().splitlines()) == real  # nothing added twice


def test_auth_failure_named_and_not_retried(testhosts: TestHosts, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "bad")],
                   check=True)
    inv = variant_inventory(testhosts, tmp_path, identity=tmp_path / "bad")
    t0 = time.monotonic()
    with transport_for(inv.nodes[0], inv, backoff=5.0) as t, pytest.raises(ConnectError) as info:
        t.run("true")
    assert time.monotonic() - t0 < 5.0  # no backoff sleep: auth errors are not retried
    msg = str(info.value)
    assert not isinstance(info.value, HostKeyError)
    assert "[th0]" in msg and "authentication failed" in msg and str(tmp_path / "bad") in msg


def test_unreachable_address_times_out_named(netns_hosts: TestHosts, tmp_path: Path) -> None:
    inv = load_inventory(netns_hosts.inventory)
    host = inv.nodes[0].host.rsplit(".", 1)[0] + ".250"  # in the subnet, nobody there
    text = netns_hosts.inventory.read_text() + f"  - {{name: ghost, host: {host}}}\n"
    (tmp_path / "inv.yaml").write_text(text)
    inv = load_inventory(tmp_path / "inv.yaml")
    t0 = time.monotonic()
    with NodeGroup(inv, [inv.node("ghost")], connect_timeout=1, connect_attempts=2,
                  backoff=0.1) as nodes:
        res = nodes.run("true")
    elapsed = time.monotonic() - t0
    err = res.failed["ghost"]
    assert isinstance(err, ConnectError) and "[ghost]" in str(err) and host in str(err)
    assert elapsed < 15


def test_command_timeout_kills_remote_command(netns_hosts: TestHosts) -> None:
    inv = load_inventory(netns_hosts.inventory)
    with transport_for(inv.nodes[0], inv) as t:
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout, match=r"\[th0\] `sleep 77` did not finish in 1s"):
            t.run("sleep 77", timeout=1)
        assert time.monotonic() - t0 < 5
        time.sleep(0.3)
        left = t.run("ps -e -o args= | grep -c '^sleep 77' || true").stdout.strip()
    assert left == "0"


def test_check_and_env_quoting(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    with transport_for(inv.nodes[0], inv) as t:
        with pytest.raises(RemoteCommandError) as info:
            t.run("echo boom >&2; exit 7")
        assert info.value.result.exit_code == 7 and "boom" in str(info.value)
        assert t.run("exit 7", check=False).exit_code == 7
        tricky = "a b 'c' \"d\" $(touch /tmp/should-not-exist) `x` ; |"
        out = t.run('printf %s "$V"', env={"V": tricky}).stdout
        assert out == tricky
        argv = t.run(["printf", "%s|", "x y", "$HOME", "';'"]).stdout
        assert argv == "x y|$HOME|';'|"
    assert not Path("/tmp/should-not-exist").exists()


def test_connection_is_reused(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    t = transport_for(inv.nodes[0], inv)
    assert isinstance(t, SSHTransport)
    with t:
        t.run("true")
        first = t._conn
        t.run("true")
        assert t._conn is first and t.connected
    assert not t.connected


def test_user_ssh_config_alias_and_proxyjump(netns_hosts: TestHosts, tmp_path: Path,
                                             no_user_ssh_config: Path) -> None:
    """~/.ssh/config (from HOME) is honoured: Host alias, HostName, User, IdentityFile, ProxyJump;
    every hop's host key is checked against known_hosts."""
    base = load_inventory(netns_hosts.inventory)
    th0, th1 = base.nodes[0].host, base.nodes[1].host
    ssh_dir = no_user_ssh_config / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(
        f"Host jump0\n  HostName {th0}\n  User root\n  IdentityFile {netns_hosts.identity}\n"
        f"Host alias1\n  HostName {th1}\n  User root\n  IdentityFile {netns_hosts.identity}\n"
        f"Host via0\n  HostName {th1}\n  User root\n  IdentityFile {netns_hosts.identity}\n"
        "  ProxyJump jump0\n")
    lines = netns_hosts.known_hosts.read_text().splitlines()
    only_th1 = tmp_path / "only_th1"
    only_th1.write_text("".join(ln + "\n" for ln in lines if ln.startswith(f"{th1} ")))
    for kh, expect_ok in ((netns_hosts.known_hosts, True), (only_th1, False)):
        (tmp_path / "inv.yaml").write_text(
            f"known_hosts: {kh}\nnodes:\n  - {{host: alias1, name: a}}\n"
            "  - {host: via0, name: j}\n")
        inv = load_inventory(tmp_path / "inv.yaml")
        with NodeGroup(inv) as nodes:
            res = nodes.run("hostname")
            if expect_ok:
                assert {k: r.stdout for k, r in res.succeeded.items()} == {"a": "th1\n",
                                                                          "j": "th1\n"}
                src = tmp_path / "payload"
                src.write_bytes(b"x" * 100_000)
                remote = base.nodes[1].workdir / "via-alias.bin"
                nodes.transport("a").put(src, remote)  # bulk path: OpenSSH with the same config
                nodes.transport("j").get(remote, tmp_path / "back")  # through the jump: paramiko
                assert (tmp_path / "back").read_bytes() == src.read_bytes()
                nodes.transport("a").run(["rm", "-f", str(remote)])
            else:
                assert "a" in res.succeeded  # th1's own key is known
                err = res.failed["j"]  # the jump host's key is not: refused
                assert isinstance(err, HostKeyError) and th0 in str(err)


def test_retries_connect_errors_with_backoff_never_commands(testhosts: TestHosts,
                                                           tmp_path: Path) -> None:
    inv = load_inventory(testhosts.inventory)
    testhosts.stop("th3")
    try:
        with transport_for(inv.node("th3"), inv, connect_attempts=3, backoff=0.3) as t:
            t0 = time.monotonic()
            with pytest.raises(ConnectError, match="refused"):
                t.open()
            assert time.monotonic() - t0 >= 0.3 + 0.6  # two backoff sleeps: three tries
    finally:
        testhosts.start("th3")
    counter = inv.node("th3").workdir / f"count-{tmp_path.name}"
    with transport_for(inv.node("th3"), inv) as t:
        with pytest.raises(RemoteCommandError):
            t.run(f"echo x >> {counter}; exit 1")
        assert t.run(["cat", str(counter)]).stdout == "x\n"  # ran exactly once
        t.run(["rm", "-f", str(counter)])
