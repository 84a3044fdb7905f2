"""`python -m orchestrate_bloom.train`: the trainer (orchestrate_bloom.train.trainer)."""

from __future__ import annotations

import sys

from .trainer import main

sys.exit(main())
