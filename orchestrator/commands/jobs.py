"""Job lifecycle commands: check, up, status, logs, down (issue #7)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (
    not_implemented("check", "Check nodes are ready: SSH, python, mindspore, devices, disk.", 7),
    not_implemented("up", "Plan, stage and start a training job on every node.", 7),
    not_implemented("status", "Show a job's state, asked from the nodes.", 7),
    not_implemented("logs", "Show or fetch the ranks' logs of a job.", 7),
    not_implemented("down", "Stop a job on every node and verify nothing is left.", 7),
)
