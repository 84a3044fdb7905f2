"""MindSpore's fault-tolerance environment, asked for by the inventory's `fault_tolerance:`.

    fault_tolerance:
      recovery: true              # MS_ENABLE_RECOVERY=1, MS_RECOVERY_PATH=<job dir>/recovery
      recovery_interval: 30       # MS_RECOVERY_INTERVAL (s between persisted cluster states)
      tft: "{TTP:1,UCE:1,ARF:1}"  # MS_ENABLE_TFT (MindIO TFT features), needs tft_port
      tft_port: 8500              # MS_TFT_IP = the scheduler's node, MS_TFT_PORT

Recovery is a feature of MindSpore's dynamic cluster (msrun mode): the scheduler persists the
cluster state under MS_RECOVERY_PATH and a restarted node rejoins. TFT (MindIO's
training-fault-tolerance) runs its controller beside rank 0, on the node the launch scripts
give as MS_SCHED_HOST, at `tft_port`, which must be free there and reachable from every node.
Errors are one line naming the inventory file, the key and the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import InventoryError

_KEYS = ("recovery", "recovery_interval", "tft", "tft_port")
_TFT = re.compile(r"\{[A-Z]+:[01](,[A-Z]+:[01])*\}")  # e.g. {TTP:1,UCE:1}


@dataclass(frozen=True)
class FaultTolerance:
    """What the inventory asks of MindSpore's fault tolerance."""

    recovery: bool = False  # MS_ENABLE_RECOVERY
    recovery_interval: int | None = None  # MS_RECOVERY_INTERVAL, seconds
    tft: str | None = None  # MS_ENABLE_TFT value
    tft_port: int | None = None  # MS_TFT_PORT on the scheduler's node


def parse_fault_tolerance(src: str, value: Any) -> FaultTolerance | None:
    """The `fault_tolerance:` mapping (None when absent).

    Raises:
        InventoryError: unknown key, wrong type, a TFT spec that is not `{NAME:0|1,...}`,
            or `tft` without `tft_port`.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InventoryError(src, "fault_tolerance", f"expected a mapping, got {value!r}")
    for key in value:
        if key not in _KEYS:
            raise InventoryError(src, f"fault_tolerance.{key}",
                                 f"unknown key (known: {', '.join(_KEYS)})")
    recovery = value.get("recovery", False)
    if not isinstance(recovery, bool):
        raise InventoryError(src, "fault_tolerance.recovery", f"expected true/false, got "
                             f"{recovery!r}")
    interval = _int(src, "recovery_interval", value.get("recovery_interval"), 1, 86400)
    port = _int(src, "tft_port", value.get("tft_port"), 1024, 65535)
    tft = value.get("tft")
    if tft is not None and (not isinstance(tft, str) or not _TFT.fullmatch(tft)):
        raise InventoryError(src, "fault_tolerance.tft",
                             f"expected MindSpore's MS_ENABLE_TFT form like \"{{TTP:1,UCE:1}}\", "
                             f"got {tft!r}")
    if (tft is None) != (port is None):
        raise InventoryError(src, "fault_tolerance.tft_port" if port is None
                             else "fault_tolerance.tft",
                             "`tft` and `tft_port` go together (the TFT controller's port)")
    return FaultTolerance(recovery=recovery, recovery_interval=interval, tft=tft, tft_port=port)


def _int(src: str, key: str, value: Any, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InventoryError(src, f"fault_tolerance.{key}",
                             f"expected an integer in [{low}, {high}], got {value!r}")
    return value


def fault_env(ft: FaultTolerance | None, sched_host: str, mode: str,
              src: str = "inventory") -> dict[str, str]:
    """The environment every rank (and the scheduler) gets. With recovery the launch script
    adds MS_RECOVERY_PATH="$JOB_DIR/recovery" (a path known only on the node).

    Raises:
        InventoryError: recovery asked for in ranktable mode (it needs the dynamic cluster).
    """
    if ft is None:
        return {}
    env: dict[str, str] = {}
    if ft.recovery:
        if mode != "msrun":
            raise InventoryError(src, "fault_tolerance.recovery",
                                 "MS_ENABLE_RECOVERY needs msrun mode (the dynamic cluster's "
                                 "scheduler keeps the state); drop --mode ranktable/--rank-table")
        env["MS_ENABLE_RECOVERY"] = "1"
        if ft.recovery_interval is not None:
            env["MS_RECOVERY_INTERVAL"] = str(ft.recovery_interval)
    if ft.tft is not None and ft.tft_port is not None:
        env["MS_ENABLE_TFT"] = ft.tft
        env["MS_TFT_IP"] = sched_host
        env["MS_TFT_PORT"] = str(ft.tft_port)
    return env
