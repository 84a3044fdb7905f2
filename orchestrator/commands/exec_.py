"""`orchestrate exec`: run a command on every node (issue #4)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (
    not_implemented("exec", "Run a shell command on every node, output prefixed [node].", 4),
)
