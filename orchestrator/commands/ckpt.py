"""`orchestrate collect-ckpt` (issue #8)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (
    not_implemented(
        "collect-ckpt", "Gather rank checkpoints + strategies, merge to one checkpoint.", 8
    ),
)
