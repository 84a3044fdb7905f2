"""MindSpore fault tolerance from the inventory and msrun's log layout (issue 15.6).

    python -m pytest tests/unit/test_fault_tolerance.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config.inventory import parse_inventory
from orchestrator.errors import InventoryError

BASE = "defaults: {devices: 8, workdir: /w}\nhosts: [192.168.0.0, 192.168.0.1]\n"


@pytest.mark.parametrize(("block", "key", "message"), [
    ("{recovery: yes please}", "fault_tolerance.recovery", "expected true/false"),
    ("{recover: true}", "fault_tolerance.recover", "unknown key"),
    ("{tft: 'TTP:1', tft_port: 8500}", "fault_tolerance.tft", "like \"{TTP:1,UCE:1}\""),
    ("{tft: '{TTP:1}'}", "fault_tolerance.tft_port", "`tft` and `tft_port` go together"),
    ("{tft: '{TTP:1}', tft_port: 80}", "fault_tolerance.tft_port", "in [1024, 65535]"),
    ("[recovery]", "fault_tolerance", "expected a mapping"),
])
def test_bad_fault_tolerance_is_one_line_naming_file_and_key(block: str, key: str,
                                                             message: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(BASE + f"fault_tolerance: {block}\n", "inv.yaml")
    text = str(e.value)
    assert text.startswith("inv.yaml") and key in text and message in text
    assert "\n" not in text


def _up(tmp_path: Path, inv: Path, *extra: str):
    return CliRunner().invoke(cli, ["up", "-i", str(inv), *extra,
                                    "--state-dir", str(tmp_path / "state")])


def test_env_rendered_for_msrun_and_recovery_refused_in_ranktable_mode(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(BASE + "fault_tolerance: {recovery: true, tft: '{TTP:1,UCE:1}', "
                          "tft_port: 8500}\n")
    res = _up(tmp_path, inv, "-c", "7.1b", "--set", "data.path=/d", "--dry-run")
    assert res.exit_code == 0, res.output
    launch = next((tmp_path / "state").rglob("nodes/192.168.0.1/launch.sh")).read_text()
    for line in ("export MS_ENABLE_RECOVERY=1", "export MS_ENABLE_TFT='{TTP:1,UCE:1}'",
                 "export MS_TFT_IP=192.168.0.0", "export MS_TFT_PORT=8500",
                 'export MS_RECOVERY_PATH="$JOB_DIR/recovery"'):
        assert line in launch
    state = tmp_path / "state"
    before = sorted(p.name for p in (state / "jobs").iterdir())
    res = _up(tmp_path, inv, "-c", "7.1b", "--set", "data.path=/d", "--dry-run",
              "--mode", "ranktable")
    assert res.exit_code == 1
    assert "fault_tolerance.recovery: MS_ENABLE_RECOVERY needs msrun mode" in res.output
    assert sorted(p.name for p in (state / "jobs").iterdir()) == before  # nothing new


def test_local_msrun_job_gets_env_and_msrun_log_layout(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"defaults: {{connection: local, devices: 1, workdir: {tmp_path / 'w'}}}\n"
                   "fault_tolerance: {recovery: true}\n"
                   "nodes: [{host: 127.0.0.1, name: here}]\n")
    res = _up(tmp_path, inv, "-c", "tiny", "--set", "data.path=", "--no-check", "--no-guard",
              "--wait", "--entrypoint", 'echo "ft=$MS_ENABLE_RECOVERY:$MS_RECOVERY_PATH"')
    assert res.exit_code == 0, res.output
    job = next((tmp_path / "w" / "jobs").glob("tiny-*"))
    logs = job / "output" / "msrun_log"
    assert sorted(p.name for p in logs.iterdir()) == ["scheduler.log", "worker_0.log"]
    assert f"ft=1:{job.resolve()}/recovery" in (logs / "worker_0.log").read_text()
    assert (logs / "scheduler.log").resolve() == (job / "ranks" / "sched" / "stdout.log").resolve()


def test_check_probes_the_tft_port_beside_the_scheduler_port(tmp_path: Path) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        for port, ok in ((busy, False), (busy + 1 if busy < 65535 else busy - 1, True)):
            inv = tmp_path / "inv.yaml"
            inv.write_text(f"defaults: {{connection: local, devices: 1, workdir: {tmp_path}}}\n"
                           f"fault_tolerance: {{tft: '{{TTP:1}}', tft_port: {port}}}\n"
                           "nodes: [{host: 127.0.0.1, name: here}]\n")
            res = CliRunner().invoke(cli, ["check", "-i", str(inv), "-c", "tiny",
                                           "--sched-port", "23457"])
            assert (res.exit_code == 0) is ok, res.output
            if not ok:
                assert f"[here] tft: 127.0.0.1:{port} busy on here" in res.output
                assert "fault_tolerance.tft_port" in res.output
    finally:
        holder.close()
