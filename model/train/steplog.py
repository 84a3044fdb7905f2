"""THE trainer log line (what `orchestrate status` parses) and the rank-0 step logger.

    log = StepLogger(job, global_batch=16, is_rank0=True, t0=time.monotonic(), start=0)
    log(step, loss)
    # prints `step=120 loss=2.3141 lr=1.0e-04 tokens_per_s=3120.5 elapsed_s=61.234`
"""

from __future__ import annotations

import math
import time

from .job import Job
from .schedule import lr_at


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite."""


def log_line(step: int, loss: float, lr: float, tokens_per_s: float, elapsed_s: float) -> str:
    """The machine-readable step line `orchestrate status` parses."""
    return (f"step={step} loss={loss:.4f} lr={lr:.1e} tokens_per_s={tokens_per_s:.1f} "
            f"elapsed_s={elapsed_s:.3f}")


class StepLogger:
    """Prints the step line on rank 0 (tokens/s since the last logged step)."""

    def __init__(self, job: Job, global_batch: int, is_rank0: bool, t0: float,
                 start: int) -> None:
        self.t, self.is_rank0, self.t0 = job.train, is_rank0, t0
        self.tokens_per_step = global_batch * int(job.model["seq_length"])
        self.last_t, self.last_step = time.monotonic(), start

    def __call__(self, step: int, value: float) -> float:
        """Log the global loss `value` of `step`; returns it.

        Raises:
            NonFiniteLoss: the loss is NaN or infinite.
        """
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss is {value} at step {step}")
        t, now = self.t, time.monotonic()
        if self.is_rank0:
            rate = (step - self.last_step) * self.tokens_per_step / max(now - self.last_t, 1e-9)
            lr = lr_at(step - 1, int(t["steps"]), float(t["lr"]), float(t["min_lr"]),
                       int(t["warmup_steps"]))
            print(log_line(step, value, lr, rate, now - self.t0), flush=True)
        self.last_t, self.last_step = now, step
        return value
