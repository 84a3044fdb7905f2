"""Users' ssh_config, read as `ssh` reads it, on real test hosts (4 hosts, 1 device each).

One module-scoped host set; th2 refuses SSH from this machine (reachable through th1), th3
refuses SSH from this machine, th0 and th1 (reachable only through th1 and th2: a two-hop
ProxyJump chain). The refusal is sshd's own `DenyUsers *@ADDR` (MindSpore's node-to-node
traffic stays open, so the tiny job still trains across all four).

Two configs over that set, each with `orchestrate exec`, `up` of a tiny job and
`collect-ckpt`, and a check that the control path (paramiko) and the bulk path (OpenSSH)
reach the same address and port on every node (sshd's own $SSH_CONNECTION):

- `included`: inventory `ssh_config:` whose hosts live in `Include conf.d/*.conf` (a glob; a
  non-.conf file with a bad option beside them is not read), `Host node-* !node-3` (wildcard
  + negation), `Match originalhost node-3`, `Match host ADDR` (on the HostName), `%n` `%h` `%p`
  tokens in IdentityFile, `HostName %h` for an address pattern, `StrictHostKeyChecking no`
  (ignored with a notice), and the chain `ProxyJump node-1,node-2`.
- `home`: no `ssh_config:` in the inventory: ~/.ssh/config of $HOME, alias hosts that sort
  first in rank order (so msrun's scheduler address is a resolved HostName), `Host` patterns
  with `?`, a ProxyJump hop that has its own ProxyJump. Also a DeepSpeed hostfile of the same
  aliases with `exec` and `--exclude`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.remote.group import NodeGroup
from orchestrator.remote.ssh import SSHTransport
from tests.integration.conftest import module_host_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STATE = Path(tempfile.gettempdir()) / f"oth-sshcfg-{os.getpid()}-{os.urandom(3).hex()}"
SEED = REPO / "model" / "assets" / "alpaca_seed_tasks.json"
NAMES = ("th0", "th1", "th2", "th3")


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    """name -> address of 4 hosts; th2 only through th1, th3 only through th1 and th2."""
    for inv_path in module_host_set(STATE, 4, devices=1):
        addr = {n.name: n.host for n in load_inventory(inv_path).nodes}
        gateway = addr["th0"].rsplit(".", 1)[0] + ".1"
        deny = {"th2": [gateway], "th3": [gateway, addr["th0"], addr["th1"]]}
        for name, sources in deny.items():
            cfg = STATE / "hosts" / name / "sshd_config"
            cfg.write_text(cfg.read_text() + "DenyUsers " + " ".join(f"*@{a}" for a in sources)
                           + "\n")
            for step in ("stop", "start"):
                subprocess.run(["bash", str(REPO / "tests/testhosts.sh"), step, name,
                                "--state", str(STATE)], check=True, capture_output=True)
        for name in ("th2", "th3"):  # the reference client cannot reach them directly
            direct = subprocess.run(["ssh", "-F", str(STATE / "ssh_config"), name, "true"],
                                    capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
            assert direct.returncode == 255 and b"denied" in direct.stderr, direct.stderr
        yield addr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "mr"
    prep = _cli(out.parent, "prepare-data", "--input", str(SEED), "--output", str(out),
                "--seq-length", "32")
    assert prep.returncode == 0, prep.stderr
    return out


def _cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def _keys(d: Path, names: list[str]) -> None:
    """Copies of the test client key under the names the configs' tokens expand to."""
    for rel in names:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STATE / "id_ed25519", d / rel)
        os.chmod(d / rel, 0o600)


def included_config(d: Path, addr: dict[str, str]) -> Path:
    net = addr["th0"].rsplit(".", 1)[0]
    (d / "conf.d").mkdir(parents=True)
    (d / "conf.d" / "10-nodes.conf").write_text(
        f"Host node-1\n  HostName {addr['th1']}\nHost node-2\n  HostName {addr['th2']}\n"
        "  ProxyJump node-1\n")
    (d / "conf.d" / "20-far.conf").write_text(
        f"Host node-3\n  HostName {addr['th3']}\n  ProxyJump node-1,node-2\n")
    (d / "conf.d" / "README").write_text("NotAnOption yes\n")  # not *.conf: never read
    (d / "config").write_text(
        f"Include {d}/conf.d/*.conf\n"
        f"Host node-* !node-3\n  User root\n  IdentityFile {d}/keys/%n.key\n"
        "Match originalhost node-3\n  User root\n"
        f"Match host {addr['th3']}\n  IdentityFile {d}/keys/far/%h-%p\n"
        f"Host {net}.*\n  HostName %h\n  User root\n  IdentityFile {d}/keys/by-addr/%h-%p\n"
        f"Host *\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n")
    _keys(d, ["keys/node-1.key", "keys/node-2.key", f"keys/far/{addr['th3']}-22",
              f"keys/by-addr/{addr['th0']}-22"])
    (d / "keys" / "node-3.key").write_text("not a key: the negation keeps node-3 off it\n")
    (d / "inventory.yaml").write_text(
        f"known_hosts: {STATE / 'known_hosts'}\nssh_config: {d / 'config'}\n"
        f"defaults: {{workdir: {STATE / 'work'}, python: {sys.executable}, devices: 1}}\n"
        f"nodes:\n  - {{name: th0, host: {addr['th0']}}}\n  - {{name: th1, host: node-1}}\n"
        "  - {name: th2, host: node-2}\n  - {name: th3, host: node-3}\n")
    return d / "inventory.yaml"


def home_config(d: Path, home: Path, addr: dict[str, str]) -> Path:
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    shutil.copy(STATE / "known_hosts", ssh / "known_hosts")
    (ssh / "config").write_text(
        f"Host alpha\n  HostName {addr['th0']}\nHost bravo\n  HostName {addr['th1']}\n"
        f"Host charlie\n  HostName {addr['th2']}\n  ProxyJump bravo\n"
        f"Host delta\n  HostName {addr['th3']}\n  ProxyJump charlie\n"  # charlie's own jump
        f"Host ?????\n  User root\n  IdentityFile {d}/keys/%r@%n\n"
        f"Host *\n  User root\n  IdentityFile {d}/keys/%r@%n\n")
    _keys(d, [f"keys/root@{a}" for a in ("alpha", "bravo", "charlie", "delta")])
    (d / "inventory.yaml").write_text(
        f"defaults: {{workdir: {STATE / 'work'}, python: {sys.executable}, devices: 1}}\n"
        "nodes:\n  - {name: th0, host: alpha}\n  - {name: th1, host: bravo}\n"
        "  - {name: th2, host: charlie}\n  - {name: th3, host: delta}\n")
    return d / "inventory.yaml"


def _same_address_both_paths(inv_path: Path) -> None:
    """Control and bulk path land on the same sshd address:port of the right host."""
    inv = load_inventory(inv_path)
    with NodeGroup(inv) as conns:
        for name in [n.name for n in inv.nodes]:
            t = conns.transport(name)
            assert isinstance(t, SSHTransport)
            probe = 'echo "$(hostname) $SSH_CONNECTION"'
            control = t.run(probe).stdout.split()
            argv = t.openssh_command()
            assert argv is not None
            bulk = subprocess.run([*argv, probe], capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL, check=False)
            assert bulk.returncode == 0, bulk.stderr
            got = bulk.stdout.split()
            assert control[0] == got[0] == name  # the right host
            assert (control[3], control[4]) == (got[3], got[4])  # same address and port
            s = t.settings()
            assert (control[3], int(control[4])) == (s.hostname, s.port)


def _exec_up_collect(inv_path: Path, cwd: Path, data: Path) -> None:
    ex = _cli(cwd, "exec", "-i", str(inv_path), "--json", "--", "hostname")
    assert ex.returncode == 0, ex.stdout + ex.stderr
    nodes = json.loads(ex.stdout)["nodes"]
    assert {n["name"]: n["stdout"].strip() for n in nodes} == {n: n for n in NAMES}
    up = _cli(cwd, "up", "-i", str(inv_path), "-c", "tiny", "--set", f"data.path={data}",
              "--set", "train.steps=4", "--set", "train.save_steps=2",
              "--set", "train.seq_length=32", "--wait")
    assert up.returncode == 0, up.stdout + up.stderr
    got = _cli(cwd, "collect-ckpt")
    assert got.returncode == 0, got.stdout + got.stderr
    merged = cwd / got.stdout.strip().split("merged checkpoint: ")[1]
    assert merged.is_file() and merged.name == "bloom_tiny_step4.ckpt"


def test_included_config(hosts: dict[str, str], dataset: Path, tmp_path: Path) -> None:
    inv_path = included_config(tmp_path / "cfg", hosts)
    shown = _cli(tmp_path, "inventory", "-i", str(inv_path), "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["name"]: r for r in json.loads(shown.stdout)["nodes"]}
    assert rows["th0"]["address"] == hosts["th0"] and rows["th0"]["sources"]["hostname"] == \
        "default"  # HostName %h: the address itself
    assert [h["alias"] for h in rows["th3"]["jumps"]] == ["node-1", "node-2"]
    assert [h["address"] for h in rows["th3"]["jumps"]] == [hosts["th1"], hosts["th2"]]
    assert not any(k.endswith("node-3.key") for k in rows["th3"]["identity_files"])
    assert rows["th3"]["identity_files"][0].endswith(f"far/{hosts['th3']}-22")
    assert rows["th1"]["sources"]["hostname"] == rows["th3"]["sources"]["proxyjump"] == \
        "ssh_config"
    assert any("20-far.conf line 1" in b for b in rows["th3"]["applied"])
    assert any("Match originalhost" in b for b in rows["th3"]["applied"])
    _same_address_both_paths(inv_path)
    ex = _cli(tmp_path, "exec", "-i", str(inv_path), "--", "true")
    assert ex.returncode == 0 and "StrictHostKeyChecking no: ignored" in ex.stderr, ex.stderr
    _exec_up_collect(inv_path, tmp_path, dataset)


def test_home_config_and_hostfile(hosts: dict[str, str], dataset: Path, tmp_path: Path,
                                  no_user_ssh_config: Path) -> None:
    inv_path = home_config(tmp_path / "cfg", no_user_ssh_config, hosts)
    inv = load_inventory(inv_path)
    with NodeGroup(inv) as conns:
        t = conns.transport("th3")
        assert isinstance(t, SSHTransport)
        assert [h.alias for h in t.settings().jumps] == ["bravo", "charlie"]
    _same_address_both_paths(inv_path)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# DeepSpeed\nalpha slots=1\nbravo slots=1\ncharlie slots=1\n"
                        "delta slots=1\n")
    ex = _cli(tmp_path, "exec", "-i", str(hostfile), "--exclude", "bravo", "--json", "--",
              "hostname")
    assert ex.returncode == 0, ex.stdout + ex.stderr
    nodes = json.loads(ex.stdout)["nodes"]
    assert {n["name"]: n["stdout"].strip() for n in nodes} == {
        "alpha": "th0", "charlie": "th2", "delta": "th3"}
    _exec_up_collect(inv_path, tmp_path, dataset)
    record = json.loads(next((tmp_path / ".orchestrate" / "jobs").glob("*.json")).read_text())
    assert record["sched_host"] == hosts["th0"]  # alpha's HostName, not the alias
