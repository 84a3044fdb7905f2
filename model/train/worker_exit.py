"""How a dynamic-cluster worker ends once training finished: it unregisters from MindSpore's
scheduler explicitly, then os._exit, without MindSpore's exit-time teardown.

    end(code)          # python -m orchestrate_bloom.train, after trainer.main returned

Why (a finished job failed at exit): a cluster worker (MS_ROLE=MS_WORKER) now and then died of
SIGSEGV after its last step (about 1 in 37 two-worker runs; 10 of 27 8-rank jobs in session 6).
Where, from a core dump of one (8 ranks on 2 cores, MindSpore 2.10): the main thread was in
MindSpore's atexit callback (_c_expression registers one with Python's atexit at import:
profiler analyse, the dataset iterators' _cleanup, then ClearResAtexit, which finalises the
collective groups and then calls mindspore::distributed::FinalizeCluster), in FinalizeCluster
-> ClusterContext::Finalize -> ComputeGraphNode::Finalize -> rpc::TCPClient::Finalize, joining
the TCP client's event-loop thread; that thread (in libmindspore_cluster.so) faulted. The
scheduler had logged "Node 4 has unregistered" 0.2 s before: the crash is in the client's
teardown after the unregistration, a race inside MindSpore. Calling FinalizeCluster earlier
runs the same teardown. What the scheduler needs is the unregistration alone (without it, a
plain os._exit makes it report the worker "timed out" once its heartbeat stops): this module
stops the node's heartbeat thread and calls ComputeGraphNode::Unregister (both exported by
libmindspore_cluster.so; the node is found through ClusterContext::instance()->node_base() and
checked to be exactly a ComputeGraphNode by its C++ typeinfo), prints UNREGISTERED_NOTE, then
os._exit(code): no TCP client teardown, no ClearResAtexit, no interpreter teardown.
No Python name reaches the unregistration (`mindspore.communication.release()` clears device
contexts; `_c_expression._finalize_collective` finalises collective groups only). The C++ calls
go through ctypes on the library this process already loaded (RTLD_NOLOAD: never a second
copy) and rely on MindSpore 2.10's exported symbols and the Itanium C++ ABI (x86_64/aarch64
Linux); when a symbol is missing or the check fails nothing is called and the interpreter's
exit runs, as before. Bounded: MindSpore waits <= 10 s for the scheduler's answer; should the
calls still not return within BOUND_S, a watchdog thread prints a note and ends the process.

What os._exit skips, and why nothing is lost: stdout/stderr are flushed here; checkpoints and
manifests are written synchronously (ms.save_checkpoint without async_save) and renamed before
train() returns; rank 0 unlinks the shared-memory files once every rank mapped them (shm_reduce);
the dataset pipeline runs in this process's threads (C++ ops, no worker processes). Skipped:
MindSpore's Python atexit handlers (async checkpoint close, dataset iterator cleanup, profiler,
mindrecord temp files: none in use here), and glog lines buffered in log files (MindSpore's
own INFO lines when GLOG_log_dir is set; WARNING and above are written at once).
Not for: a worker that failed (exit code != 0: the interpreter's own exit, as before), the
scheduler (it serves the cluster until every worker unregistered and then exits through init()),
single processes and rank-table (HCCL) launches.
ORCHESTRATE_WORKER_EXIT=teardown (inventory `env:`) turns it off: the interpreter's exit.

Standard library only (ctypes); MindSpore is reached only through sys.modules.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

CLUSTER_LIB = Path("lib") / "libmindspore_cluster.so"  # under the mindspore package folder
SWITCH = "ORCHESTRATE_WORKER_EXIT"  # "teardown": the interpreter's own exit, as before
BOUND_S = 60.0  # heartbeat join (<= one heartbeat round) + Unregister (<= 10 s in MindSpore)
UNREGISTERED_NOTE = "[train] unregistered from MindSpore's scheduler"  # + " in X.X s; exiting"
_NS = "_ZN9mindspore11distributed7cluster"
INSTANCE = _NS + "14ClusterContext8instanceEv"  # static shared_ptr<ClusterContext> instance()
NODE_BASE = "_ZNK9mindspore11distributed7cluster14ClusterContext9node_baseEv"  # const shared_ptr&
CGN_TYPEINFO = "_ZTIN9mindspore11distributed7cluster8topology16ComputeGraphNodeE"
STOP_HEARTBEAT = _NS + "8topology16ComputeGraphNode19StopHeartBeatThreadEv"
UNREGISTER = _NS + "8topology16ComputeGraphNode10UnregisterEv"  # bool Unregister()


def wanted(code: int, env: Mapping[str, str]) -> bool:
    """Whether this process should end by the explicit unregistration + os._exit."""
    return code == 0 and env.get("MS_ROLE") == "MS_WORKER" and env.get(SWITCH) != "teardown"


def _cluster_lib() -> ctypes.CDLL | None:
    ms = sys.modules.get("mindspore")
    init = getattr(ms, "__file__", None)
    if not init:
        return None
    try:  # RTLD_NOLOAD: the copy this process already runs (its ClusterContext), or nothing
        return ctypes.CDLL(str(Path(init).parent / CLUSTER_LIB), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def _compute_graph_node(lib: ctypes.CDLL) -> int | None:
    """Address of this process's ComputeGraphNode (ClusterContext::instance()->node_base());
    None unless every symbol exists and the object's typeinfo is exactly ComputeGraphNode's."""
    try:
        instance, node_base = getattr(lib, INSTANCE), getattr(lib, NODE_BASE)
        cgn_typeinfo = ctypes.addressof(ctypes.c_char.in_dll(lib, CGN_TYPEINFO))
    except (AttributeError, ValueError):
        return None
    holder = (ctypes.c_void_p * 2)()  # the returned shared_ptr (Itanium ABI: via a hidden pointer)
    instance.argtypes, instance.restype = [ctypes.c_void_p], ctypes.c_void_p
    instance(ctypes.addressof(holder))  # its reference is never released: the process ends
    if not holder[0]:
        return None
    node_base.argtypes, node_base.restype = [ctypes.c_void_p], ctypes.c_void_p
    slot = node_base(holder[0])  # -> the context's shared_ptr<NodeBase>; its first word: the object
    node = ctypes.c_void_p.from_address(slot).value if slot else None
    if not node:
        return None  # no cluster formed in this process
    vtable = ctypes.c_void_p.from_address(node).value or 0
    if not vtable:
        return None
    top = ctypes.c_ssize_t.from_address(vtable - 16).value  # Itanium: offset-to-top, typeinfo
    if top != 0 or ctypes.c_void_p.from_address(vtable - 8).value != cgn_typeinfo:
        return None  # not exactly a ComputeGraphNode at that address
    return node


def unregister() -> str:
    """Only the unregistration of this worker (its heartbeat stopped, then
    ComputeGraphNode::Unregister: the scheduler's "Node N has unregistered"), without the TCP
    clients' teardown that FinalizeCluster does next and in which the SIGSEGV happens.

    Returns:
        "" once the scheduler confirmed; else why not: nothing was called (a piece missing, the
        node not a ComputeGraphNode), or the scheduler did not confirm (heartbeat stopped; the
        interpreter's exit then retries the unregistration in FinalizeCluster).
    """
    lib = _cluster_lib()
    node = _compute_graph_node(lib) if lib is not None else None
    if lib is None or node is None:
        return "MindSpore's cluster unregistration not found"
    try:
        stop_hb, unreg = getattr(lib, STOP_HEARTBEAT), getattr(lib, UNREGISTER)
    except AttributeError:
        return "MindSpore's cluster unregistration not found"
    stop_hb.argtypes, stop_hb.restype = [ctypes.c_void_p], None
    unreg.argtypes, unreg.restype = [ctypes.c_void_p], ctypes.c_bool
    stop_hb(node)  # ctypes releases the GIL: the watchdog can run meanwhile
    return "" if unreg(node) else "the scheduler did not confirm the unregistration"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _give_up(code: int) -> None:
    print(f"[train] MindSpore's cluster unregistration did not return within {BOUND_S:g} s; "
          "exiting without it (the scheduler may report this worker timed out)",
          file=sys.stderr, flush=True)
    os._exit(code)


def end(code: int, env: Mapping[str, str] | None = None) -> NoReturn:
    """End the trainer process with `code` (see module docstring)."""
    env = os.environ if env is None else env
    if wanted(code, env):
        _flush()
        watchdog = threading.Timer(BOUND_S, _give_up, args=(code,))
        watchdog.daemon = True
        watchdog.start()
        t0 = time.monotonic()
        why = unregister()
        watchdog.cancel()
        if not why:
            print(f"{UNREGISTERED_NOTE} in {time.monotonic() - t0:.1f} s; exiting",
                  file=sys.stderr, flush=True)
            _flush()
            os._exit(code)
        print(f"[train] {why}; exiting through the interpreter", file=sys.stderr, flush=True)
    gc.disable()  # the earlier mitigation, kept for the paths above that still tear down
    gc.freeze()
    sys.exit(code)
