"""`orchestrate inventory` and --include/--exclude on plan, ranktable and exec (CliRunner).

ssh_config resolution runs the real `ssh -G` (no network needed); HOME points at an empty
directory so the developer's ~/.ssh/config stays out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.remote import sshconfig

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs an OpenSSH client")


@pytest.fixture(autouse=True)
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sshconfig.clear_cache()


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_inventory_of_a_hostfile_with_ssh_config_aliases(tmp_path: Path) -> None:
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "config").write_text("Host worker-*\n  User ubuntu\nHost worker-1\n"
                                "  HostName 10.0.0.11\n  Port 2222\n  ProxyJump bastion\n"
                                "Host bastion\n  HostName 10.0.0.1\n")
    (tmp_path / "hostfile").write_text("worker-0 slots=2\nworker-1 slots=4\n")
    code, out = invoke("inventory", "-i", str(tmp_path / "hostfile"), "--json")
    assert code == 0, out
    doc = json.loads(out)
    rows = {r["name"]: r for r in doc["nodes"]}
    assert doc["world_size"] == 6
    assert (rows["worker-1"]["address"], rows["worker-1"]["port"], rows["worker-1"]["user"],
            rows["worker-1"]["devices"]) == ("10.0.0.11", 2222, "ubuntu", [0, 1, 2, 3])
    assert rows["worker-1"]["sources"]["port"] == "ssh_config"
    assert rows["worker-0"]["sources"]["port"] == "default"
    assert [h["address"] for h in rows["worker-1"]["jumps"]] == ["10.0.0.1"]
    code, text = invoke("inventory", "-i", str(tmp_path / "hostfile"), "--include",
                        "worker-1:1,3")
    assert code == 0, text
    assert "worker-1  10.0.0.11  2222  ubuntu  1,3      bastion" in text
    assert "worker-0" not in text.split("where")[0]
    assert "address ssh_config, port ssh_config, user ssh_config" in text
    assert "1 node(s), 2 device(s)" in text


def test_inventory_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "hostfile").write_text("a slots=1\nb slots=1\na slots=2\n")
    code, out = invoke("inventory", "-i", str(tmp_path / "hostfile"))
    assert code == 1 and out.strip() == f"Error: {tmp_path}/hostfile:3: duplicate host 'a' " \
                                         "(first on line 1)"
    (tmp_path / "ok").write_text("a slots=1\n")
    code, out = invoke("inventory", "-i", str(tmp_path / "ok"), "--include", "a",
                       "--exclude", "a")
    assert code == 1 and "not both" in out
    (tmp_path / "cfg").write_text("Host a\n  Nonsense 1\n")
    (tmp_path / "inv.yaml").write_text(f"ssh_config: {tmp_path}/cfg\nhosts: [a]\n")
    code, out = invoke("inventory", "-i", str(tmp_path / "inv.yaml"))
    assert code == 1 and f"[a] ssh_config for 'a': {tmp_path}/cfg: line 2: Bad configuration " \
                         "option: nonsense" in out


def test_plan_and_ranktable_take_the_filters(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("10.0.0.1 slots=8\n10.0.0.2 slots=8\n10.0.0.3 slots=8\n")
    code, out = invoke("plan", "-i", str(hostfile), "-c", "tiny", "--exclude", "10.0.0.3",
                       "--json")
    assert code == 0, out
    assert json.loads(out)["world_size"] == 16
    code, out = invoke("plan", "-i", str(hostfile), "-c", "tiny", "--include", "10.0.0.9")
    assert code == 1 and "no host '10.0.0.9'" in out
    inv = tmp_path / "inv.yaml"
    inv.write_text("nodes:\n  - {host: 10.0.0.1, device_ips: {0: 192.98.92.10, 1: 192.98.93.10}}"
                   "\n  - {host: 10.0.0.2, device_ips: {0: 192.98.92.11}}\n"
                   "defaults: {devices: [0, 1]}\n")
    code, out = invoke("ranktable", "-i", str(inv), "--include", "10.0.0.1:0,1@10.0.0.2:0",
                       "-o", str(tmp_path / "t.json"))
    assert code == 0, out
    table = json.loads((tmp_path / "t.json").read_text())
    assert [len(s["device"]) for s in table["server_list"]] == [2, 1]
