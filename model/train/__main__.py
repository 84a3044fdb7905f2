"""`python -m orchestrate_bloom.train`: the trainer (orchestrate_bloom.train.trainer).

The rank's share of the node's cores is applied first, before the trainer's imports load
numpy: OpenBLAS sizes its thread pool from OPENBLAS_NUM_THREADS when numpy is imported, and
threads started before the pinning would keep every core. The share is applied here only,
once, and handed to the trainer.

Once the trainer returned, every object alive is moved out of the garbage collector's reach
(gc.freeze) before the interpreter's teardown: a cluster worker now and then died of SIGSEGV in
the collection at exit, after all its work was done ("Garbage-collecting, <no Python frame>";
about 1 in 37 two-worker runs, once in 9 8-rank runs), which failed a finished job. Ending
with os._exit instead is not an option: the worker would skip MindSpore's cluster
finalisation and the scheduler would report it as timed out.
"""

from __future__ import annotations

import gc
import sys

from .cpu_share import apply_from_env

SHARE = apply_from_env()

from .trainer import main  # noqa: E402  (after the share, see the docstring)

code = main(None, SHARE)
gc.disable()
gc.freeze()
sys.exit(code)
