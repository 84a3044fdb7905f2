"""Warmup + cosine LR schedule (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from orchestrate_bloom.train.schedule import lr_at, lr_schedule


def test_warmup_is_linear_up_to_lr() -> None:
    lrs = lr_schedule(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) * 1e-4, rtol=1e-6)
    assert lrs[10] == pytest.approx(1e-3)


def test_cosine_decays_to_min_lr() -> None:
    lrs = lr_schedule(steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert np.all(np.diff(lrs[10:]) <= 0)
    mid = lr_at(60, 110, 1e-3, 1e-4, 10)
    assert mid == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, 110, 1e-3, 1e-4, 10) == pytest.approx(1e-4)
    assert lr_at(500, 110, 1e-3, 1e-4, 10) == pytest.approx(1e-4)  # stays at the floor


def test_no_warmup_starts_at_lr() -> None:
    assert lr_at(0, 50, 2e-4, 0.0, 0) == pytest.approx(2e-4)
