"""THE gradient mean of data-parallel CPU ranks that all run on one node, through shared memory.

    reducer = shm_grad_reducer(dist, reduce, sizes)   # None: use MindSpore's AllReduce
    step_cell.grad_reducer = reducer                   # a Cell: grads tuple -> mean over ranks

Why: MindSpore's CPU AllReduce (mccl) is a TCP ring, 2 x (ranks - 1) hops each with a hand-off
through its event-loop threads. With 8 ranks on 2 cores (tiny preset, global batch 16; /proc
schedstat, both cores ~95% busy: the ranks are CPU-bound, not idle) a step took 157 ms and 282 ms
of CPU with it, 104 ms and 192 ms with no reduction at all, 121 ms and 221 ms with this one.
Here each rank copies its gradients into its slot of one shared file, a futex barrier, each rank
sums its 1/ranks chunk over all slots, a second barrier, and every rank copies the mean out:
two wake-ups per rank per step, no sockets. Used only when every rank of the job runs on this
node (ORCHESTRATE_LOCAL_RANKS = world size, set by the launch script), on CPU, on Linux x86_64 or
aarch64, and when the buffer (2 x (ranks + 1) x gradient floats) fits in MAX_BYTES and in
/dev/shm's free space; otherwise MindSpore's AllReduce is used as before.
The file's name is a random token rank 0 draws, agreed through the job's all-reduce; rank 0
removes it once every rank has it mapped, so nothing is left in /dev/shm even if a rank dies.
A peer that stops arriving makes the others fail after WAIT_S seconds (RuntimeError).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cpu_share import LOCAL_RANKS

SHM_DIR = Path("/dev/shm")
MAX_BYTES = 256 * 1024 * 1024  # larger models keep MindSpore's AllReduce
WAIT_S = 600.0  # a peer silent this long at a barrier: the step fails
FLAG_STRIDE = 16  # int32s per rank flag: one cache line each
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class ShmMean:
    """The mean over `ranks` processes of float32 vectors of `total` values (this is rank
    `rank`), through the shared file at `path` (every rank maps the same file)."""

    def __init__(self, path: Path, rank: int, ranks: int, total: int,
                 wait_s: float = WAIT_S) -> None:
        self.rank, self.ranks, self.total, self.seq, self.wait_s = rank, ranks, total, 0, wait_s
        head = ranks * FLAG_STRIDE * 4
        size = head + 2 * (ranks + 1) * total * 4
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.flags = np.frombuffer(self.mm, np.int32, ranks * FLAG_STRIDE, 0)
        data = np.frombuffer(self.mm, np.float32, 2 * (ranks + 1) * total, head)
        self.slots = data.reshape(2, ranks + 1, total)  # [parity, rank | mean, value]
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self.addr = [base + k * FLAG_STRIDE * 4 for k in range(ranks)]
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall
        self.nr = _SYS_FUTEX[platform.machine()]
        lo = rank * total // ranks
        self.chunk = slice(lo, (rank + 1) * total // ranks)

    def __call__(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of the ranks' concatenated `parts` (a fresh array of `total` values)."""
        self.seq += 1
        slots = self.slots[self.seq % 2]  # two buffers: a fast rank may start the next step
        off = 0
        for part in parts:
            slots[self.rank, off:off + part.size] = part.reshape(-1)
            off += part.size
        self._barrier(2 * self.seq - 1)
        np.sum(slots[:self.ranks, self.chunk], axis=0, out=slots[self.ranks, self.chunk])
        slots[self.ranks, self.chunk] /= self.ranks
        self._barrier(2 * self.seq)
        return slots[self.ranks].copy()

    def _barrier(self, value: int) -> None:
        """Publish `value` as this rank's flag, wake its waiters, wait until every flag has it."""
        self.flags[self.rank * FLAG_STRIDE] = value
        self._futex(self.rank, _FUTEX_WAKE, 1 << 30, None)
        deadline = time.monotonic() + self.wait_s
        tick = _Timespec(1, 0)
        for k in range(self.ranks):
            while (seen := int(self.flags[k * FLAG_STRIDE])) < value:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rank {k} did not reach the gradient barrier in "
                                       f"{self.wait_s:.0f} s (shared-memory gradient mean)")
                self._futex(k, _FUTEX_WAIT, seen, ctypes.byref(tick))

    def _futex(self, k: int, op: int, val: int, timeout: Any) -> None:
        """futex(2) on rank k's flag (shared, not FUTEX_PRIVATE: the ranks are processes)."""
        self.syscall(ctypes.c_long(self.nr), ctypes.c_void_p(self.addr[k]), ctypes.c_long(op),
                     ctypes.c_long(val), timeout)


def usable(world: int, total: int, env: dict[str, str] | None = None) -> bool:
    """Whether this job's gradient mean can go through shared memory (see module docstring)."""
    env = dict(os.environ) if env is None else env
    size = 2 * (world + 1) * total * 4
    if world < 2 or env.get(LOCAL_RANKS) != str(world) or size > MAX_BYTES:
        return False
    if platform.machine() not in _SYS_FUTEX or not SHM_DIR.is_dir():
        return False
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize > 2 * size


def open_mean(rank: int, world: int, total: int, reduce: Callable[[Sequence[float]], Any],
              ok: bool) -> ShmMean | None:
    """Every rank calls this at the same point, `ok`: whether it can (usable()). The job's SUM
    all-reduce (`reduce`, two values) agrees on it (None unless every rank can) and tells every
    rank the file name rank 0 drew; a second one that all have it mapped, then rank 0 removes
    the name."""
    draw = float(secrets.randbelow(1 << 24)) if rank == 0 else 0.0
    agreed = reduce([1.0 if ok else 0.0, draw])
    if agreed[0] < world - 0.5:
        return None
    path = SHM_DIR / f"orchestrate-grads-{os.getuid()}-{int(agreed[1]):06x}"
    mean = ShmMean(path, rank, world, total)
    reduce([0.0, 0.0])  # every rank has mapped it
    if rank == 0:
        path.unlink(missing_ok=True)
    return mean
