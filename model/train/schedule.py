"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr`.

    lrs = lr_schedule(steps=1000, lr=1e-4, min_lr=1e-5, warmup_steps=100)  # lrs[s]: step s

Pure numpy: the trainer hands the array to AdamWeightDecay, which indexes it with its own
`global_step` (saved in every checkpoint), so a resumed run continues the same schedule.
"""

from __future__ import annotations

import math

import numpy as np


def lr_at(step: int, steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) in a run of `steps` steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_schedule(steps: int, lr: float, min_lr: float, warmup_steps: int) -> np.ndarray:
    """float32[steps]: `lr_at` for every step."""
    return np.array([lr_at(s, steps, lr, min_lr, warmup_steps) for s in range(steps)],
                    dtype=np.float32)
