"""THE gradient mean of data-parallel CPU ranks that all run on one node, through shared memory.

    means = open_means(rank, world, total, reduce, ok=usable(world, total))  # every rank
    grads_mean, small_sum = means          # None: MindSpore's AllReduce (cells.build_cells)

Why: MindSpore's CPU AllReduce (mccl) is a TCP ring, 2 x (ranks - 1) hops each with a hand-off
through its event-loop threads. With 8 ranks on 2 cores (tiny preset, global batch 16; /proc
schedstat, both cores ~95% busy: the ranks are CPU-bound, not idle) a step took 157 ms and 282 ms
of CPU with it, 104 ms and 192 ms with no reduction at all, 121 ms and 221 ms with this one.
Here each rank copies its gradients into its slot of one shared file, a futex barrier, each rank
sums its 1/ranks chunk over all slots, a second barrier, and every rank copies the mean out:
two wake-ups per rank per step, no sockets. The same steps one by one (reduce_scatter, all_sum,
all_gather) let each rank work on its own chunk in between: shm_step's AdamW updates only its
chunk of the parameters (its moments live once per node in the file's state rows) and every
rank copies the new parameters out instead of the mean. The trainer's small all-reduces (the
logged loss, the stop check: AllReduceSum) go through a second such file, as a sum.
Used only when every rank of the job runs on this node (ORCHESTRATE_LOCAL_RANKS = world size,
set by the launch script), on CPU, on Linux x86_64 or aarch64, and when the buffer
((2 x (ranks + 1) + MOMENT_ROWS) x gradient floats) fits in MAX_BYTES and in /dev/shm's free
space; otherwise MindSpore's AllReduce is used as before. ORCHESTRATE_SHM_REDUCE=0 (inventory
`env:`) turns it off; a rank that has it set makes every rank use MindSpore's AllReduce
(open_means agrees).
The file's name is a random token rank 0 draws; rank 0 creates it exclusively (O_EXCL,
O_NOFOLLOW, 0600: a name or symlink planted by another user is never used), the others open it
only as a regular file of their own user of the expected size; the name travels through the
job's all-reduce, and rank 0 removes it once every rank has it mapped, so nothing is left in
/dev/shm even if a rank dies.
A peer that stops arriving makes the others fail after WAIT_S seconds (RuntimeError).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .cpu_share import LOCAL_RANKS

SHM_DIR = Path("/dev/shm")
SWITCH = "ORCHESTRATE_SHM_REDUCE"  # "0": MindSpore's AllReduce even on one node
MAX_BYTES = 256 * 1024 * 1024  # larger models keep MindSpore's AllReduce
WAIT_S = 600.0  # a peer silent this long at a barrier: the step fails
FLAG_STRIDE = 16  # int32s per rank flag: one cache line each
MOMENT_ROWS = 2  # state rows of the gradient file: AdamW's two moments, once per node (shm_step)
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class ShmMean:
    """The mean (`divide`, else the sum) over `ranks` processes of float32 vectors of `total`
    values (this is rank `rank`), through one shared file that every rank maps. One
    thread per process uses an instance; every rank makes the same calls in the same order.
    `state`: `state_rows` vectors of `total` values that persist across steps, one copy for
    the node (each rank writes only its `chunk` of them)."""

    def __init__(self, fd: int, rank: int, ranks: int, total: int,
                 wait_s: float = WAIT_S, divide: bool = True, state_rows: int = 0) -> None:
        """`fd`: the shared file, file_size(ranks, total, state_rows) bytes (create /
        open_existing); the mapping keeps its own reference, the caller closes fd."""
        self.rank, self.ranks, self.total, self.seq, self.wait_s = rank, ranks, total, 0, wait_s
        self.divide, self.passed, self.exchanges = divide, 0, 0
        self.group: tuple[int, int, int] | None = None  # share_core: (first rank, place, size)
        self.turns_taken = 0
        head = _head_bytes(ranks)
        self.mm = mmap.mmap(fd, file_size(ranks, total, state_rows))
        self.flags = np.frombuffer(self.mm, np.int32, ranks * FLAG_STRIDE, 0)
        self.sums = np.frombuffer(self.mm, np.float64, 2 * ranks,
                                  ranks * FLAG_STRIDE * 4).reshape(2, ranks)  # [parity, rank]
        data = np.frombuffer(self.mm, np.float32, _data_floats(ranks, total), head)
        self.slots = data.reshape(2, ranks + 1, total)  # [parity, rank | mean, value]
        self.state = np.frombuffer(self.mm, np.float32, state_rows * total,
                                   head + data.nbytes).reshape(state_rows, total)
        turns_at = ranks * FLAG_STRIDE * 4 + 2 * ranks * 8
        self.turns = np.frombuffer(self.mm, np.int32, ranks * FLAG_STRIDE, turns_at)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self.addr = [base + k * FLAG_STRIDE * 4 for k in range(ranks)]
        self.turn_addr = [base + turns_at + k * FLAG_STRIDE * 4 for k in range(ranks)]
        self.syscall = ctypes.CDLL(None, use_errno=True).syscall
        self.nr = _SYS_FUTEX[platform.machine()]
        lo = rank * total // ranks
        self.chunk = slice(lo, (rank + 1) * total // ranks)

    def __call__(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of the ranks' concatenated `parts` (a fresh array of `total` values)."""
        self.reduce_scatter(parts)
        return self.all_gather().copy()

    def reduce_scatter(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Start a step: publish this rank's concatenated `parts`, a barrier, and return this
        rank's `chunk` of the mean as a view into the step's shared result row: what this rank
        writes there before all_gather is what every rank gets."""
        self.seq += 1
        slots = self.slots[self.seq % 2]  # two buffers: a fast rank may start the next step
        off = 0
        for part in parts:
            slots[self.rank, off:off + part.size] = part.reshape(-1)
            off += part.size
        self._barrier()
        out = slots[self.ranks, self.chunk]
        np.sum(slots[:self.ranks, self.chunk], axis=0, out=out)
        if self.divide:
            out /= self.ranks
        return out

    def exchange(self, value: float) -> list[float]:
        """Every rank's `value` (float64), in rank order; a barrier. The two rows alternate by
        exchange, not by step: a fast rank's next exchange may start while a slow one still
        reads this one, never the one after (it needs every rank at the next barrier)."""
        self.exchanges += 1
        row = self.sums[self.exchanges % 2]
        row[self.rank] = value
        self._barrier()
        return row.tolist()

    def all_sum(self, value: float) -> float:
        """The sum of one float from every rank (float64, added in rank order: the same value
        on every rank); a barrier."""
        return float(sum(self.exchange(value)))

    def share_core(self, core: int) -> None:
        """Group this rank with the ranks pinned to the same single core (`core`; -1: not
        pinned to one core): from now on turn() lets a group's ranks in one at a time, in
        rank order. Every rank calls it at the same point (a barrier)."""
        cores = self.exchange(float(core))
        group = [k for k in range(self.ranks) if core >= 0 and cores[k] == core]
        self.group = (group[0], group.index(self.rank), len(group)) if len(group) > 1 else None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Run the body when it is this rank's turn on its core (share_core's group; no wait
        without one): each rank of the group once per round, in rank order."""
        if self.group is None:
            yield
            return
        first, place, size = self.group
        target = self.turns_taken * size + place
        deadline = time.monotonic() + self.wait_s
        tick = _Timespec(1, 0)
        while (seen := int(self.turns[first * FLAG_STRIDE])) != target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {first + (seen % size)} did not pass its turn on the "
                                   f"core in {self.wait_s:.0f} s (shared-memory step)")
            self._futex_at(self.turn_addr[first], _FUTEX_WAIT, seen, ctypes.byref(tick))
        try:
            yield
        finally:
            self.turns_taken += 1
            self.turns[first * FLAG_STRIDE] = target + 1
            self._futex_at(self.turn_addr[first], _FUTEX_WAKE, 1 << 30, None)

    def all_gather(self) -> np.ndarray:
        """End the step: a barrier, then the shared result row with every rank's chunk (the
        mean, or what each rank wrote into its chunk); valid until the step after next."""
        self._barrier()
        return self.slots[self.seq % 2, self.ranks]

    def _barrier(self) -> None:
        """Count this barrier in this rank's flag, wake its waiters, wait until every rank's flag
        counts as many."""
        self.passed += 1
        value = self.passed
        self.flags[self.rank * FLAG_STRIDE] = value
        self._futex_at(self.addr[self.rank], _FUTEX_WAKE, 1 << 30, None)
        deadline = time.monotonic() + self.wait_s
        tick = _Timespec(1, 0)
        for k in range(self.ranks):
            while (seen := int(self.flags[k * FLAG_STRIDE])) < value:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rank {k} did not reach the gradient barrier in "
                                       f"{self.wait_s:.0f} s (shared-memory gradient mean)")
                self._futex_at(self.addr[k], _FUTEX_WAIT, seen, ctypes.byref(tick))

    def _futex_at(self, addr: int, op: int, val: int, timeout: Any) -> None:
        """futex(2) on the int32 at `addr` (shared, not FUTEX_PRIVATE: the ranks are
        processes)."""
        self.syscall(ctypes.c_long(self.nr), ctypes.c_void_p(addr), ctypes.c_long(op),
                     ctypes.c_long(val), timeout)


def usable(world: int, total: int, env: dict[str, str] | None = None) -> bool:
    """Whether this job's gradient mean can go through shared memory (see module docstring)."""
    env = dict(os.environ) if env is None else env
    size = (_data_floats(world, total) + MOMENT_ROWS * total) * 4  # vectors; not the flags
    if world < 2 or env.get(SWITCH, "1") == "0" or env.get(LOCAL_RANKS) != str(world):
        return False
    if size > MAX_BYTES:
        return False
    if platform.machine() not in _SYS_FUTEX or not SHM_DIR.is_dir():
        return False
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize > 2 * size


SMALL = 8  # values of the small sums (the trainer's loss and stop-check all-reduces)


def file_size(ranks: int, total: int, state_rows: int = 0) -> int:
    """Bytes of the shared file of a ShmMean: the head, 2 x (ranks + 1) vectors, the state."""
    return _head_bytes(ranks) + (_data_floats(ranks, total) + state_rows * total) * 4


def _head_bytes(ranks: int) -> int:
    """The ranks' barrier flags at the start of the file (one cache line, FLAG_STRIDE, each),
    exchange's float64 values [parity 2][rank], then the turn counters (one line per rank)."""
    return 2 * ranks * FLAG_STRIDE * 4 + 2 * ranks * 8


def _data_floats(ranks: int, total: int) -> int:
    """The float32s after the flags: [parity 2][each rank's vector, the mean][total]."""
    return 2 * (ranks + 1) * total


def create(path: Path, size: int) -> int | None:
    """A new shared file of `size` zero bytes, mode 0600, or None when the name exists (another
    user may have planted it, or a symlink: never opened, never removed)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return None
    os.ftruncate(fd, size)
    return fd


def open_existing(path: Path, size: int) -> int | None:
    """The shared file rank 0 created, or None unless it is a regular file of this user of
    exactly `size` bytes, reached without a symlink."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_size == size:
        return fd
    os.close(fd)
    return None


def open_means(rank: int, world: int, total: int, reduce: Callable[[Sequence[float]], Any],
               ok: bool) -> tuple[ShmMean, ShmMean] | None:
    """(the gradient mean of `total` values, a SUM of up to SMALL values for the trainer's
    main thread), or None. Every rank calls this at the same point, `ok`: whether it can
    (usable()). Rank 0 draws a name and creates both files exclusively; the job's SUM
    all-reduce (`reduce`, two values) agrees (None unless every rank can) and tells every rank
    the name; a second one that every rank has both mapped (else None everywhere); then rank
    0 removes the names it created."""
    sizes = (file_size(world, total, MOMENT_ROWS), file_size(world, SMALL))
    draw = 0
    fds: list[int | None] = []
    created: list[Path] = []
    try:
        if rank == 0 and ok:
            draw = secrets.randbelow(1 << 24)
            for path, size in zip(_paths(draw), sizes, strict=True):
                fds.append(fd := create(path, size))
                created += [path] if fd is not None else []
            ok = None not in fds
        agreed = reduce([1.0 if ok else 0.0, float(draw)])
        if agreed[0] < world - 0.5:
            return None
        if rank != 0:
            fds = [open_existing(p, n) for p, n in zip(_paths(int(agreed[1])), sizes, strict=True)]
        means = None
        grads_fd, small_fd = fds
        if grads_fd is not None and small_fd is not None:
            means = (ShmMean(grads_fd, rank, world, total, state_rows=MOMENT_ROWS),
                     ShmMean(small_fd, rank, world, SMALL, divide=False))
        every = reduce([1.0 if means is not None else 0.0, 0.0])
        return means if every[0] >= world - 0.5 else None
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
        for path in created:
            path.unlink(missing_ok=True)


def _paths(draw: int) -> tuple[Path, Path]:
    name = f"orchestrate-grads-{os.getuid()}-{draw:06x}"
    return SHM_DIR / name, SHM_DIR / f"{name}-small"
