"""`orchestrate convert-weights` and `orchestrate infer` (issue #5)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (
    not_implemented(
        "convert-weights", "Convert HF Bloom weights to a MindSpore checkpoint and back.", 5
    ),
    not_implemented("infer", "Generate text from a checkpoint (greedy or sampling).", 5),
)
