"""Wall-clock time per phase of one command, so a regression shows where it is (issue #17).

    orchestrate up -v -i inventories/local.yaml -c tiny        # prints the table at the end

    clock = PhaseClock.start()            # the active clock of this process
    with phase("stage"):                  # no-op when no clock is active
        ...
    for line in clock.lines(): print(line)

`startup` is the time from the process start (the kernel's, from /proc) to the clock's start:
the interpreter, the imports and argument parsing. Phases are timed on the main thread; a
phase entered again adds up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

_ACTIVE: PhaseClock | None = None


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None where unknown."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class PhaseClock:
    """Seconds per named phase, in the order first entered."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        age = process_age()
        if age is not None:
            self.seconds["startup"] = age

    @classmethod
    def start(cls) -> PhaseClock:
        """A new clock, made the active one (what `phase` records into)."""
        global _ACTIVE
        _ACTIVE = cls()
        return _ACTIVE

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def lines(self) -> list[str]:
        """`phase  seconds  share` rows plus the total since the clock started."""
        total = time.perf_counter() - self.t0 + self.seconds.get("startup", 0.0)
        rows = [f"{'phase':<12} {'s':>7} {'share':>6}"]
        for name, s in self.seconds.items():
            rows.append(f"{name:<12} {s:>7.3f} {100 * s / total if total else 0:>5.0f}%")
        other = total - sum(self.seconds.values())
        rows.append(f"{'other':<12} {other:>7.3f} {100 * other / total if total else 0:>5.0f}%")
        rows.append(f"{'total':<12} {total:>7.3f}")
        return rows


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block into the active clock under `name` (nothing when none is active)."""
    clock = _ACTIVE
    t = time.perf_counter()
    try:
        yield
    finally:
        if clock is not None:
            clock.add(name, time.perf_counter() - t)
