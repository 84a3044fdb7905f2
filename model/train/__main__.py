"""`python -m orchestrate_bloom.train`: the trainer (orchestrate_bloom.train.trainer).

The rank's share of the node's cores is applied first, before the trainer's imports load
numpy: OpenBLAS sizes its thread pool from OPENBLAS_NUM_THREADS when numpy is imported, and
threads started before the pinning would keep every core. The share is applied here only,
once, and handed to the trainer.
"""

from __future__ import annotations

import sys

from .cpu_share import apply_from_env

SHARE = apply_from_env()

from .trainer import main  # noqa: E402  (after the share, see the docstring)

sys.exit(main(share=SHARE))
