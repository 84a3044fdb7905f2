"""One module per command family; each exports COMMANDS, the click commands it defines.

Command modules import only click and light modules at import time, so `--help` stays instant.
"""

from __future__ import annotations

from orchestrator.commands import ckpt, data, exec_, jobs, model, plan, ranktable

COMMAND_MODULES = (plan, ranktable, exec_, jobs, ckpt, data, model)
