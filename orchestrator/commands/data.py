"""`orchestrate prepare-data` (issue #6)."""

from __future__ import annotations

from orchestrator.commands._stub import not_implemented

COMMANDS = (not_implemented("prepare-data", "Turn Alpaca JSON into MindRecord shards.", 6),)
