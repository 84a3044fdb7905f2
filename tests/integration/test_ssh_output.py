"""Command output is complete even when sshd sends the exit status before the last bytes.

sshd reports the exit status as soon as the command exits, while output may still sit in its
pipe; a client that stops reading at the exit status loses the tail. That lost the tail of
stage's `missing SHA` list once (a blob "present" that was never sent: `cp: cannot stat`).
"""

from __future__ import annotations

import pytest

from orchestrator.config.inventory import load_inventory
from orchestrator.remote.group import transport_for
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration


def test_output_after_the_exit_status_is_kept(testhosts: TestHosts) -> None:
    inv = load_inventory(testhosts.inventory)
    with transport_for(inv.nodes[0], inv) as t:
        # the shell exits at once (exit status sent); its child writes a second later, then EOF
        res = t.run("echo early; (sleep 1; echo late; echo err >&2) &", check=True)
        assert res.stdout == "early\nlate\n" and res.stderr == "err\n" and res.exit_code == 0
        many = t.run("for s in $(seq 1 5000); do echo \"missing $s\"; done", check=True)
        assert many.stdout.splitlines() == [f"missing {s}" for s in range(1, 5001)]
