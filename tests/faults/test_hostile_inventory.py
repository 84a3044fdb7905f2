"""Hostile inventories on real sshd test hosts (th0, th1 x 2 ranks): a node name with shell
metacharacters, `..`/`.` as a node name, secrets in `env:`. Every value reaches the nodes quoted
or is refused in one line; secrets stay out of argv, logs and the job record. The table of cases
is docs/faults.md.

    python -m pytest tests/faults/test_hostile_inventory.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import (
    HOSTS,
    REPO,
    assert_nothing_left,
    edited_inventory,
    no_traceback,
    orch,
    record,
    wait_for,
)
from tests.faults.helpers import (
    TRIVIAL_UP as UP,
)
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults]


# --- hostile input ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a;touch {marker}", "..", "."])
def test_node_named_a_semicolon_touch_is_refused(two_hosts: Path, state: Path,
                                                 tmp_path: Path, name: str) -> None:
    """Also `..` / `.`: a node name becomes a local folder (`logs --fetch DIR/<node>/`)."""
    marker = tmp_path / "pwned"
    bad = name.format(marker=marker)

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc["nodes"][0]["name"] = bad

    res = orch(state, "up", "-i", str(edited_inventory(two_hosts, tmp_path, edit)), *UP,
               "--entrypoint", "true", check=False)
    no_traceback(res)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "nodes[0].name" in res.stderr and repr(bad) in res.stderr
    assert not marker.exists() and not (state / "jobs").exists()


def test_shell_metacharacters_in_inventory_reach_nodes_quoted(testhosts: TestHosts,
                                                              two_hosts: Path, state: Path,
                                                              tmp_path: Path) -> None:
    tag = format(abs(hash(str(tmp_path))) % 10**6, "06d")
    names = [f"pw{tag}{i}" for i in range(5)]
    # Accepted as a name (no '/'): every payload cds home first, so a leak lands in $HOME.
    evil_name = (f"a;cd;touch {names[0]};$(cd;touch {names[1]})`cd;touch {names[2]}`")
    evil_env = f"$(cd;touch {names[3]})'; cd; touch {names[4]}; '"

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc["nodes"][0]["name"] = evil_name
        doc["defaults"]["env"] = {"EVIL": evil_env}

    inv = edited_inventory(two_hosts, tmp_path, edit)
    show = 'printf "step=1 evil=%s\\n" "$EVIL"'
    res = orch(state, "up", "-i", str(inv), *UP, "--wait", "--entrypoint", show)
    no_traceback(res)
    job_id = record(state)["job_id"]
    logs = orch(state, "logs", job_id).stdout
    assert f"[{evil_name}/0] step=1 evil={evil_env}" in logs, logs  # verbatim, both ways
    local_home = Path.home()
    for name in names:
        assert not (local_home / name).exists() and not (REPO / name).exists()
        for host in HOSTS:
            check = testhosts.ssh(host, f"ls ~ /tmp {testhosts.state}/work | grep -F {name} "
                                        "|| true")
            assert check.stdout.strip() == "", f"{name} created on {host}"
    assert_nothing_left(testhosts, job_id)


def test_inventory_secrets_stay_out_of_argv_logs_and_record(testhosts: TestHosts,
                                                           two_hosts: Path, state: Path,
                                                           tmp_path: Path) -> None:
    secret = f"s3cr3t-{tmp_path.name[-12:]}-tok"

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc["defaults"]["env"] = {"HF_TOKEN": secret}

    inv = edited_inventory(two_hosts, tmp_path, edit)
    probe = ('trap "exit 143" TERM; [ -n "$HF_TOKEN" ] && echo "step=1 token_seen=${#HF_TOKEN}";'
             ' sleep 600 & wait')
    up = orch(state, "up", "-i", str(inv), *UP, "--entrypoint", probe)
    job_id = record(state)["job_id"]
    wait_for(lambda: "token_seen" in orch(state, "logs", job_id).stdout, timeout=30)
    assert f"token_seen={len(secret)}" in orch(state, "logs", job_id).stdout  # the rank has it
    for name in HOSTS:
        ps = testhosts.ssh(name, "ps -eo args")
        assert ps.returncode == 0 and "sleep 600" in ps.stdout
        assert secret not in ps.stdout, f"secret in a process list on {name}"
        job_dir = record(state, job_id)["nodes"][HOSTS.index(name)]["job_dir"]
        files = testhosts.ssh(name, f"cd {job_dir} && grep -rlF -- {secret} . || true")
        assert files.stdout.split() == ["./env.sh"], files.stdout  # only the 0600 env file
        mode = testhosts.ssh(name, f"stat -c %a {job_dir}/env.sh").stdout.strip()
        assert mode == "600"
    status = orch(state, "status", job_id, "--json")
    down = orch(state, "down", job_id, "--yes")
    for text in (up.stdout, up.stderr, status.stdout, down.stdout,
                 (state / "jobs" / f"{job_id}.json").read_text()):
        assert secret not in text
    assert_nothing_left(testhosts, job_id)
