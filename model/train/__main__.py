"""`python -m orchestrate_bloom.train`: the trainer (orchestrate_bloom.train.trainer).

The rank's share of the node's cores is applied first, before the trainer's imports load
numpy: OpenBLAS sizes its thread pool from OPENBLAS_NUM_THREADS when numpy is imported, and
threads started before the pinning would keep every core. The share is applied here only,
once, and handed to the trainer. Here too, before MindSpore loads libgomp, graph_kernel.rank_env
sets the OpenMP wait policy and AKG's output folder when the job turns train.graph_kernel on.

Once the trainer returned, worker_exit.end ends the process: a cluster worker whose training
finished unregisters from MindSpore's scheduler explicitly (ComputeGraphNode::Unregister alone)
and leaves with os._exit, without MindSpore's exit-time cluster teardown, in which it now and
then died of SIGSEGV after all its work was done (a failed finished job; see worker_exit).
Every other process exits through the interpreter as before, with every object moved out of
the garbage collector's reach first (gc.freeze).
"""

from __future__ import annotations

import os
import sys

from .cpu_share import apply_from_env
from .graph_kernel import rank_env
from .worker_exit import end

SHARE = apply_from_env()
rank_env(sys.argv[1:], os.environ)

from .trainer import main  # noqa: E402  (after the share, see the docstring)

end(main(None, SHARE))
