"""A cluster worker connects to MindSpore's scheduler only once the scheduler listens.

    init_cluster(mindspore.communication.init, os.environ)   # trainer.init_distributed

Why (issue #17, measured on 2 cores, the README job: 2 workers + the scheduler on one node):
every slot starts at once and imports MindSpore for seconds; the workers' imports finish
~0.5 s before the scheduler opens its port, so MindSpore's first registration attempts are
refused. After refused attempts a worker's client now and then keeps failing for many seconds
although the scheduler listens (`Failed to connect to the meta server` every 0.5 s, the
connections complete in the kernel and the worker itself closes them): the cluster formed in
1.5-12 s with setsid-started ranks and 7-72 s with forked ones (3-run samples each). A worker
that waits for the port first never sends a refused attempt; the scheduler sees one extra
connection that closes without a message. The wait is bounded (MS_TOPO_TIMEOUT, the cluster's
own start timeout, at most 7,200 s): when it runs out, init() runs anyway and fails as before.

Standard library only; the scheduler itself (MS_ROLE=MS_SCHED) and every other launch mode
do not wait.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping

POLL_S = 0.05  # between two connection attempts
DEFAULT_TIMEOUT_S = 600.0  # without MS_TOPO_TIMEOUT (msrun's --cluster_time_out default)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_scheduler(env: Mapping[str, str],
                       accepts: Callable[[str, int], bool] = _accepts,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> bool | None:
    """Block until MS_SCHED_HOST:MS_SCHED_PORT accepts a TCP connection, for a worker.

    Returns None when there is nothing to wait for (not MS_ROLE=MS_WORKER, or no usable
    scheduler address), True once the port accepted, False when the bound ran out.
    """
    if env.get("MS_ROLE") != "MS_WORKER":
        return None
    host = env.get("MS_SCHED_HOST", "")
    try:
        port = int(env.get("MS_SCHED_PORT", ""))
        bound = float(env.get("MS_TOPO_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return None
    if not host or not 0 < port < 65536:
        return None
    deadline = clock() + min(max(bound, 0.0), 7200.0)
    while True:
        if accepts(host, port):
            return True
        if clock() >= deadline:
            return False
        sleep(POLL_S)


def init_cluster(init: Callable[[], object], env: Mapping[str, str]) -> None:
    """MindSpore's dynamic-cluster `init()`, a worker's only once the scheduler listens."""
    wait_for_scheduler(env)
    init()
