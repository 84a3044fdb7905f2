"""The inventory's scheduler keys: which backend runs the ranks, and Slurm's submit options.

    backend: slurm            # ssh (default) | slurm | k8s
    partition: debug          # Slurm: sbatch --partition, --account, --qos, --time
    account: proj42
    qos: normal
    time: "01:00:00"
    slurm_conf: /etc/slurm/slurm.conf   # SLURM_CONF for sbatch/squeue/scancel (default: theirs)
    stage: allocation         # Slurm: code and data through the allocation (default: ssh)
    spool: /shared/spool      # ... from this folder, which the submit host and nodes share

Every error names the file, the key and the bad value (InventoryError).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import InventoryError

BACKENDS = ("ssh", "slurm", "k8s")
KEYS = frozenset({"backend", "partition", "account", "qos", "time", "slurm_conf", "stage",
                  "spool"})
STAGES = ("ssh", "allocation")
_WORD = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+(:\d{2}(:\d{2})?)?|UNLIMITED)$")


@dataclass(frozen=True)
class Scheduler:
    """Where ranks run (`backend`) and the Slurm submit options of an inventory."""

    backend: str = "ssh"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    slurm_conf: Path | None = None
    stage: str = "ssh"  # ssh: staged over SSH; allocation: by a step of the Slurm job
    spool: Path | None = None  # allocation: the bundle's folder, seen by submit host and nodes

    def sbatch_options(self) -> list[str]:
        """`--partition=...` etc. for the keys that are set."""
        pairs = (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                 ("time", self.time))
        return [f"--{k}={v}" for k, v in pairs if v is not None]

    def source(self, key: str) -> str:
        """`partition 'foo'`: how an error names where a value came from."""
        return f"{key} {getattr(self, key)!r}"


def parse_scheduler(src: str, doc: Mapping[str, Any]) -> Scheduler:
    """The scheduler keys of an inventory document (top level)."""
    backend = doc.get("backend", "ssh")
    if backend not in BACKENDS:
        raise InventoryError(src, "backend", f"expected one of {', '.join(BACKENDS)}, "
                                             f"got {backend!r}")
    words = {k: _word(src, k, doc.get(k)) for k in ("partition", "account", "qos")}
    time = doc.get("time")
    if time is not None:
        time = str(time)
        if not _TIME.match(time):
            raise InventoryError(src, "time", "expected a Slurm time limit (minutes, HH:MM:SS "
                                              f"or D-HH:MM:SS), got {time!r}")
    conf = doc.get("slurm_conf")
    stage = doc.get("stage", "ssh")
    if stage not in STAGES:
        raise InventoryError(src, "stage", f"expected one of {', '.join(STAGES)}, got {stage!r}")
    spool = _path(src, "spool", doc.get("spool"))
    if stage == "allocation" and spool is None:
        raise InventoryError(src, "spool", "stage: allocation needs a folder that this machine "
                                           "and the nodes share, got none")
    return Scheduler(backend=str(backend), time=time, slurm_conf=_path(src, "slurm_conf", conf),
                     stage=str(stage), spool=spool, **words)


def _path(src: str, key: str, value: Any) -> Path | None:
    """A file or folder key: `~` expanded, relative to the inventory's folder."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InventoryError(src, key, f"expected a file path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(src).parent / path


def _word(src: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _WORD.match(value):
        raise InventoryError(src, key, f"expected a Slurm name (letters, digits, _.+-), "
                                       f"got {value!r}")
    return value
