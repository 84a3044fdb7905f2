"""`orchestrate ranktable`: HCCL rank tables (issue #3)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (not_implemented("ranktable", "Build, merge and check HCCL rank tables.", 3),)
