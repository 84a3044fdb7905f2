"""How a dynamic-cluster worker ends once training finished: it unregisters from MindSpore's
scheduler explicitly, then os._exit, without MindSpore's exit-time teardown.

    end(code)          # python -m orchestrate_bloom.train, after trainer.main returned

Why (a finished job failed at exit): a cluster worker (MS_ROLE=MS_WORKER) now and then died of
SIGSEGV after its last step (about 1 in 37 two-worker runs; 10 of 27 8-rank jobs in session 6).
Where, from a core dump of one (session 7, 8 ranks on 2 cores, MindSpore 2.10): the main thread
was in MindSpore's atexit callback (_c_expression registers one with Python's atexit at
import: profiler analyse, the dataset iterators' _cleanup, then ClearResAtexit, which finalises
the collective groups and then calls mindspore::distributed::FinalizeCluster), in
FinalizeCluster -> ClusterContext::Finalize -> ComputeGraphNode::Finalize ->
rpc::TCPClient::Finalize, joining the TCP client's event-loop thread; that thread (in
libmindspore_cluster.so) faulted. The scheduler had logged "Node 4 has unregistered" 0.2 s
before: the crash is in the client's teardown after the unregistration, a race inside MindSpore.
No Python frame (atexit callbacks run from C), hence faulthandler's `<no Python frame>`.
So calling FinalizeCluster earlier (ORCHESTRATE_WORKER_EXIT=finalize, kept for comparison) runs
the same racy teardown. What the scheduler needs is the unregistration alone (without it, a
plain os._exit makes it report the worker "timed out" once its heartbeat stops): this module
stops the node's heartbeat thread and calls ComputeGraphNode::Unregister (both exported by
libmindspore_cluster.so; the node is found through ClusterContext::instance()->node_base() and
checked to be exactly a ComputeGraphNode by its C++ typeinfo), then os._exit(0): no TCP
client teardown, no ClearResAtexit, no interpreter teardown.
`mindspore.communication.release()` does not do it (finalize_hccl: it clears the device
contexts), nor does `_c_expression._finalize_collective` (collective groups only); no Python
name reaches the unregistration. The C++ calls go through ctypes on the library this process
already loaded (RTLD_NOLOAD: never a second copy) and rely on MindSpore 2.10's exported
symbols and the Itanium C++ ABI (x86_64/aarch64 Linux); when a symbol is missing or the check
fails nothing is called and the interpreter's exit runs, as before.
Not for: a worker that failed (exit code != 0: the interpreter's own exit, as before), the
scheduler (it serves the cluster until every worker unregistered and then exits through init()),
single processes and rank-table (HCCL) launches.
ORCHESTRATE_WORKER_EXIT=teardown (inventory `env:`) turns it off; =finalize calls MindSpore's
whole FinalizeCluster instead of the unregistration alone.

Standard library only (ctypes); MindSpore is reached only through sys.modules.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

CLUSTER_LIB = Path("lib") / "libmindspore_cluster.so"  # under the mindspore package folder
FINALIZE_CLUSTER = "_ZN9mindspore11distributed15FinalizeClusterEv"  # distributed::FinalizeCluster()
SWITCH = "ORCHESTRATE_WORKER_EXIT"  # "teardown": the interpreter's own exit, as before
_NS = "_ZN9mindspore11distributed7cluster"
INSTANCE = _NS + "14ClusterContext8instanceEv"  # static shared_ptr<ClusterContext> instance()
NODE_BASE = "_ZNK9mindspore11distributed7cluster14ClusterContext9node_baseEv"  # const shared_ptr&
CGN_TYPEINFO = "_ZTIN9mindspore11distributed7cluster8topology16ComputeGraphNodeE"
STOP_HEARTBEAT = _NS + "8topology16ComputeGraphNode19StopHeartBeatThreadEv"
UNREGISTER = _NS + "8topology16ComputeGraphNode10UnregisterEv"  # bool Unregister()


def wanted(code: int, env: Mapping[str, str]) -> bool:
    """Whether this process should end by explicit cluster finalisation + os._exit."""
    return code == 0 and env.get("MS_ROLE") == "MS_WORKER" and env.get(SWITCH) != "teardown"


def finalize_cluster() -> bool:
    """Unregister this worker from MindSpore's scheduler now (MindSpore's own FinalizeCluster,
    the step its exit handler would run); False when it could not be called (MindSpore not
    imported, the library not loaded, no such symbol): then nothing was done."""
    ms = sys.modules.get("mindspore")
    init = getattr(ms, "__file__", None)
    if not init:
        return False
    path = Path(init).parent / CLUSTER_LIB
    try:  # RTLD_NOLOAD: the copy this process already runs (its ClusterContext), or nothing
        lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        func = getattr(lib, FINALIZE_CLUSTER)
    except (OSError, AttributeError):
        return False
    func.argtypes, func.restype = [], None
    func()  # ctypes releases the GIL; returns once the scheduler has the unregistration
    return True


def _cluster_lib() -> ctypes.CDLL | None:
    ms = sys.modules.get("mindspore")
    init = getattr(ms, "__file__", None)
    if not init:
        return None
    try:  # RTLD_NOLOAD: the copy this process already runs (its ClusterContext), or nothing
        return ctypes.CDLL(str(Path(init).parent / CLUSTER_LIB), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def unregister() -> bool:
    """Only the unregistration of this worker (its heartbeat stopped, then
    ComputeGraphNode::Unregister: the scheduler's "Node N has unregistered"), without the TCP
    clients' teardown that FinalizeCluster does next and in which the SIGSEGV happens. False
    when any piece is missing or the node is not a ComputeGraphNode (checked by its C++
    typeinfo): then nothing was done."""
    lib = _cluster_lib()
    if lib is None:
        return False
    try:
        instance, node_base = getattr(lib, INSTANCE), getattr(lib, NODE_BASE)
        stop_hb, unreg = getattr(lib, STOP_HEARTBEAT), getattr(lib, UNREGISTER)
        cgn_typeinfo = ctypes.addressof(ctypes.c_char.in_dll(lib, CGN_TYPEINFO))
    except (AttributeError, ValueError):
        return False
    holder = (ctypes.c_void_p * 2)()  # the returned shared_ptr (Itanium ABI: via a hidden pointer)
    instance.argtypes, instance.restype = [ctypes.c_void_p], ctypes.c_void_p
    instance(ctypes.addressof(holder))  # its reference is never released: the process ends
    if not holder[0]:
        return False
    node_base.argtypes, node_base.restype = [ctypes.c_void_p], ctypes.c_void_p
    slot = node_base(holder[0])  # -> the context's shared_ptr<NodeBase>
    node = ctypes.c_void_p.from_address(slot).value if slot else None
    if not node:
        return False
    vtable = ctypes.c_void_p.from_address(node).value or 0
    top = ctypes.c_long.from_address(vtable - 16).value if vtable else 1
    if not vtable or top != 0 or ctypes.c_void_p.from_address(vtable - 8).value != cgn_typeinfo:
        return False  # not exactly a ComputeGraphNode at that address
    stop_hb.argtypes, stop_hb.restype = [ctypes.c_void_p], None
    unreg.argtypes, unreg.restype = [ctypes.c_void_p], ctypes.c_bool
    stop_hb(node)
    return bool(unreg(node))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def end(code: int, env: Mapping[str, str] | None = None) -> NoReturn:
    """End the trainer process with `code` (see module docstring)."""
    env = os.environ if env is None else env
    if wanted(code, env):
        _flush()
        done = unregister() if env.get(SWITCH) != "finalize" else finalize_cluster()
        if done:
            _flush()
            os._exit(code)
        print("[train] MindSpore's cluster unregistration not found; exiting through the "
              "interpreter",
              file=sys.stderr, flush=True)
    gc.disable()  # the earlier mitigation, kept for the paths above that still tear down
    gc.freeze()
    sys.exit(code)
