"""Node settings from OpenSSH's own evaluator (`ssh -G`, no network needed): Include of a glob,
Host wildcards and negations, Match host/originalhost, %-tokens, ProxyJump chains, errors,
StrictHostKeyChecking only stricter, the paramiko fallback without an OpenSSH client, and the
OpenSSH bulk argv reaching what the control path reaches (checked with `ssh -G` again)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config.inventory import HostKeyPolicy, Node
from orchestrator.errors import SSHConfigError
from orchestrator.remote import sshconfig, sshroute

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an OpenSSH client")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sshconfig.clear_cache()
    sshconfig._notice_once.cache_clear()
    yield
    sshconfig.clear_cache()


def write_config(d: Path) -> Path:
    (d / "cfg.d").mkdir(parents=True)
    (d / "cfg.d" / "10-web.conf").write_text(
        "Host web*\n  HostName 10.1.0.%h\n  Port 2201\n")  # %h: the alias (web1 -> ...)
    (d / "cfg.d" / "20-db.conf").write_text("Host db\n  HostName 10.2.0.5\n  User dba\n")
    (d / "cfg.d" / "ignored.txt").write_text("Host db\n  HostName 6.6.6.6\n")
    cfg = d / "config"
    cfg.write_text(
        f"Include {d}/cfg.d/*.conf\n"
        "Host *.lab !bad.lab\n  User labuser\n  Port 2222\n"
        "Match originalhost n?.lab\n  HostName 10.3.0.1\n"
        "Match host 10.2.0.5\n  Port 5432\n"
        f"Host *\n  IdentityFile {d}/keys/%n-%p-%r\n  IdentityFile {d}/keys/by-host/%h\n")
    return cfg


def test_include_glob_wildcards_negation_match_and_tokens(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    n1 = sshconfig.resolve(Node(name="a", host="n1.lab"), cfg)
    assert (n1.hostname, n1.port, n1.user) == ("10.3.0.1", 2222, "labuser")
    assert n1.identity_files == (f"{tmp_path}/keys/n1.lab-2222-labuser",
                                 f"{tmp_path}/keys/by-host/10.3.0.1")
    assert n1.sources["hostname"] == n1.sources["port"] == "ssh_config"
    assert f"{cfg} line 5: Match originalhost \"n1.lab\"" in n1.applied
    bad = sshconfig.resolve(Node(name="b", host="bad.lab"), cfg)  # negated: no User/Port
    assert (bad.hostname, bad.port, bad.sources["port"]) == ("bad.lab", 22, "default")
    db = sshconfig.resolve(Node(name="c", host="db"), cfg)  # included; Match host on HostName
    assert (db.hostname, db.port, db.user) == ("10.2.0.5", 5432, "dba")
    assert any("20-db.conf line 1" in b for b in db.applied)
    assert not any("ignored.txt" in b for b in db.applied)


def test_inventory_values_win_and_tokens_see_them(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    s = sshconfig.resolve(Node(name="a", host="n1.lab", user="root", port=22), cfg)
    assert (s.hostname, s.port, s.user) == ("10.3.0.1", 22, "root")
    assert s.identity_files[0] == f"{tmp_path}/keys/n1.lab-22-root"  # %p %r: the inventory's
    assert s.sources["user"] == s.sources["port"] == "inventory"
    k = sshconfig.resolve(Node(name="a", host="n1.lab", identity_file="~/k"), cfg)
    assert k.identity_files == (str(tmp_path / "home" / "k"),) and k.identities_only
    assert k.sources["identityfile"] == "inventory"


def test_proxyjump_chains_flatten_as_ssh_J_does(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host j1\n  HostName 10.0.0.1\n  ProxyJump j0\n"
                   "Host j0\n  HostName 10.0.0.254\n  User edge\n"
                   "Host j2\n  HostName 10.0.0.2\n  ProxyJump nowhere\n"
                   "Host far\n  HostName 10.0.0.3\n  ProxyJump j1,admin@j2:2022\n")
    s = sshconfig.resolve(Node(name="far", host="far"), cfg)
    assert [(h.alias, h.hostname, h.port, h.user) for h in s.jumps] == [
        ("j0", "10.0.0.254", 22, "edge"), ("j1", "10.0.0.1", 22, s.jumps[1].user),
        ("j2", "10.0.0.2", 2022, "admin")]  # j2's own ProxyJump is replaced by the chain
    assert s.describe().endswith("via j0 -> j1 -> j2")


def test_proxyjump_loop_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(SSHConfigError, match=r"\[n\] ssh_config for .*ProxyJump chain longer"):
        sshconfig.resolve(Node(name="n", host="a"), cfg)


def test_errors_name_node_alias_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "x.conf").write_text("Host th0\n  HostName 10.0.0.1\n  Bogus yes\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {tmp_path}/inc/*.conf\n")
    with pytest.raises(SSHConfigError) as info:
        sshconfig.resolve(Node(name="node0", host="th0"), cfg)
    msg = str(info.value)
    assert msg.startswith("[node0] ssh_config for 'th0': ")
    assert f"{tmp_path}/inc/x.conf" in msg and "line 3" in msg and "ogus" in msg
    cfg.write_text("Host *\n  IdentityFile /k/%Q\n")
    with pytest.raises(SSHConfigError, match=r"\[node0\] .*IdentityFile '/k/%Q'.*unknown token"):
        sshconfig.resolve(Node(name="node0", host="th1"), cfg)


def test_strict_host_key_checking_only_stricter(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host lax\n  StrictHostKeyChecking no\nHost tight\n  StrictHostKeyChecking yes\n"
                   "Host new\n  StrictHostKeyChecking accept-new\n")
    lax = sshconfig.resolve(Node(name="n", host="lax"), cfg)
    with caplog.at_level(logging.WARNING, logger="orchestrator.remote.ssh"):
        for _ in range(3):
            assert sshconfig.effective_policy("n", HostKeyPolicy.STRICT, lax) \
                is HostKeyPolicy.STRICT
    notices = [r.message for r in caplog.records if "StrictHostKeyChecking no" in r.message]
    assert len(notices) == 1 and "ignored" in notices[0] and str(cfg) in notices[0]
    tight = sshconfig.resolve(Node(name="n", host="tight"), cfg)
    assert sshconfig.effective_policy("n", HostKeyPolicy.ACCEPT_NEW, tight) \
        is HostKeyPolicy.STRICT
    new = sshconfig.resolve(Node(name="n", host="new"), cfg)
    assert sshconfig.effective_policy("n", HostKeyPolicy.STRICT, new) is HostKeyPolicy.STRICT
    assert sshconfig.effective_policy("n", HostKeyPolicy.ACCEPT_NEW, new) \
        is HostKeyPolicy.ACCEPT_NEW
    plain = sshconfig.resolve(Node(name="n", host="other"), cfg)  # OpenSSH's default: ask
    assert sshconfig.effective_policy("n", HostKeyPolicy.ACCEPT_NEW, plain) \
        is HostKeyPolicy.ACCEPT_NEW


def test_home_ssh_config_is_read_when_home_is_not_the_account_home(tmp_path: Path) -> None:
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "config").write_text("Host mine\n  HostName 10.9.9.9\n")
    s = sshconfig.resolve(Node(name="m", host="mine"), None)
    assert s.hostname == "10.9.9.9" and s.config == str(tmp_path / "home" / ".ssh" / "config")


def test_resolved_once_per_command(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for _ in range(5):
        sshconfig.resolve(Node(name="a", host="n1.lab"), cfg)
    info = sshconfig._evaluate.cache_info()
    assert info.misses == 2 and info.hits == 4  # the node and its OpenSSH defaults, once


def test_no_config_defaults_run_once_and_equal_each_aliases_own() -> None:
    """One `ssh -G -F /dev/null` per (port, user) serves every plain host name and gives what
    evaluating the alias itself gives; a user@host alias is evaluated for itself."""
    for given in [(), ("-p", "2222", "-l", "bob")]:
        for alias in ["th0", "10.1.2.3", "Web-1.Example.COM", "a_b"]:
            own, _ = sshconfig._evaluate(("-F", "/dev/null", *given), alias, "n")
            assert sshconfig._defaults(given, alias, "n") == own, (given, alias)
    assert sshconfig._no_config.cache_info().misses == 2
    assert sshconfig._defaults((), "bob@h1", "n")["user"] == ["bob"]
    assert sshconfig._no_config.cache_info().misses == 2


def test_fallback_without_openssh_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host th0\n  HostName 10.0.0.1\n  Port 2200\n  User u\n"
                   "  IdentityFile /k/%h-%p\n  ProxyJump j\nHost j\n  HostName 10.0.0.9\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `ssh` on PATH: as if uninstalled
    with caplog.at_level(logging.WARNING, logger="orchestrator.remote.ssh"):
        s = sshconfig.resolve(Node(name="t", host="th0"), cfg)
        sshconfig.resolve(Node(name="t", host="th0"), cfg)
    assert (s.hostname, s.port, s.user, s.evaluator) == ("10.0.0.1", 2200, "u", "paramiko")
    assert s.identity_files == ("/k/10.0.0.1-2200",) and [h.hostname for h in s.jumps] == [
        "10.0.0.9"]
    assert [r.message for r in caplog.records].count(
        "no OpenSSH client (`ssh`) installed: reading ssh_config with paramiko's parser "
        "(no Include, partial Match)") == 1


def _ssh_G(argv: list[str]) -> dict[str, str]:
    """What OpenSSH makes of an argv we built (`ssh -G` with the same options)."""
    import subprocess

    out = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_openssh_argv_reaches_the_resolved_address_through_every_hop(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("Host j1\n  HostName 10.0.0.1\nHost j2\n  HostName 10.0.0.2\n  Port 23\n"
                   "Host far\n  HostName 10.0.0.3\n  Port 2022\n  User root\n"
                   "  ProxyJump j1,j2\n  StrictHostKeyChecking no\n")
    s = sshconfig.resolve(Node(name="far", host="far"), cfg)
    argv = sshroute.openssh_argv(s, [tmp_path / "kh"], 5)
    seen = _ssh_G(argv)
    assert (seen["hostname"], seen["port"], seen["user"]) == ("10.0.0.3", "2022", "root")
    assert seen["stricthostkeychecking"] == "true"  # the user's `no` does not reach the bulk path
    outer = seen["proxycommand"]
    assert "-W 10.0.0.3:2022" in outer and outer.rstrip().endswith("-- 10.0.0.2")
    assert "ProxyCommand=" in outer and "-W 10.0.0.2:23" in outer and "10.0.0.1" in outer
    conn = sshroute.fabric_connection(s, 5)  # the control path: same target, same hops
    assert [(c.host, c.port) for c in sshroute.hops(conn)] == [
        ("10.0.0.3", 2022), ("10.0.0.2", 23), ("10.0.0.1", 22)]
