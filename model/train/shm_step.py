"""The train step of data-parallel CPU ranks that share one node: two graph calls per step, the
gradient mean through shared memory (shm_reduce.ShmMean) between them, in Python.

    step = ShmTrainStep(net, optimizer, clip=1.0, mean=means[0])   # cells.build_cells
    loss = step(input_ids, loss_mask)    # grads -> mean (shm) -> clip + AdamWeightDecay

Why not one graph with the mean as a pyfunc op inside (the earlier cells.ShmGradReducer): a
rank waiting in the barrier was inside a graph run, so MindSpore's kernel threads kept
spinning for work (GraphScheduler::Run) while the rank's peers needed the cores. Between two
graph runs they idle down: 8 ranks, tiny, 2 cores, 3 alternating runs each (steps 10..55), median
118.8 -> 107.3 ms/step, 225 -> 194 ms CPU/step; the kernel threads' involuntary context
switches 2,800-5,300 -> ~70 per step (summed over ranks). The step's arithmetic is the same:
the gradients, concatenated into one vector (graph 1), their mean over the ranks, clipped to
the global norm as one vector (cells.clip_factor) and split back into the parameters' shapes
for the optimizer (graph 2).
Its parameters and their names are TrainOneStepCell's (network, optimizer; no prefix), so
checkpoints and resume are unchanged.

Graph 2 is only the fallback: with nn.AdamWeightDecay over float32 parameters (what
cells.build_cells makes on CPU) the update runs in numpy on this process's own parameter
memory instead (_HostAdamW, the same formula as MindSpore's fused AdamWeightDecay kernel):
on CPU a parameter's runtime memory is its tensor's, so writing through `asnumpy()`'s view is
what graph 1 reads next (checked on every step: Parameter.data_ptr). A graph call costs every
rank a fixed ~2.5 ms more than the update's arithmetic (tiny, 1 core: graph 2 3.4 ms, numpy
1.0 ms), paid 8 times a step by 8 ranks, twice by 2. The update is sharded: each rank updates
only its chunk of the parameters (tiny: the whole update 1.0-1.5 ms a rank, paid by every rank
before) and every rank copies the new values out of the shared row instead of the mean; the
ranks agree on host update or graph 2 at the first step, before anything is changed.

Ranks pinned to one shared core (more ranks than cores) run graph 1 one at a time, in rank
order (ShmMean.turn), instead of being time-sliced by the kernel through it: 8 ranks on 2
cores, tiny, 2 alternating pairs, 21,278 -> 22,284 tokens/s (+6.1%, +3.4%).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from mindspore import Tensor, nn, ops

from .cells import clip_factor
from .shm_reduce import ShmMean
from .trainer import note

# printed once by each rank whose update runs on the host (tests/model/test_train.py looks for it)
HOST_UPDATE_NOTE = "AdamWeightDecay of the shared-memory step on the host (numpy)"
# printed by each rank that shares its one core with other ranks (ShmMean.turn)
TURNS_NOTE = "graph 1 takes turns with the other ranks on this core"


class _FlatGrads(nn.Cell):
    """Graph 1: (loss, every gradient concatenated into one float32 vector)."""

    def __init__(self, network: nn.Cell, weights: Any) -> None:
        super().__init__(auto_prefix=False)
        self.network, self.weights = network, weights
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        loss = self.network(*inputs)
        grads = self.grad(self.network, self.weights)(*inputs, ops.ones_like(loss))
        return loss, ops.concat([g.reshape(-1) for g in grads])


class _ApplyFlat(nn.Cell):
    """Graph 2: the mean vector clipped to the global norm `clip` (> 0), split into the
    gradients' shapes, applied by the optimizer."""

    def __init__(self, optimizer: nn.Optimizer, clip: float) -> None:
        super().__init__(auto_prefix=False)
        self.optimizer, self.clip = optimizer, clip
        self.shapes = tuple(tuple(p.shape) for p in optimizer.parameters)
        self.sizes = tuple(int(np.prod(s)) for s in self.shapes)

    def construct(self, flat: Tensor) -> Any:
        if self.clip > 0:
            flat = flat * clip_factor(ops.sqrt(ops.reduce_sum(ops.square(flat))), self.clip)
        parts = ops.split(flat, self.sizes)
        return self.optimizer(tuple(parts[i].reshape(self.shapes[i])
                                    for i in range(len(self.sizes))))


class ShmTrainStep(nn.Cell):
    """TrainStep's job for ranks whose gradient mean is `mean` (a ShmMean over the node's
    ranks): calling it runs graph 1, then the mean and the host update (or graph 2) in this
    thread, and returns this rank's loss. `clip`: the global-norm clipping of the mean
    (train.grad_clip; <= 0: none)."""

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, clip: float,
                 mean: ShmMean) -> None:
        super().__init__(auto_prefix=False)
        self.network, self.optimizer, self.mean = network, optimizer, mean
        self.flat_grads = _FlatGrads(network, optimizer.parameters)
        self.update = _ApplyFlat(optimizer, clip)
        self.clip = clip
        self.host: _HostAdamW | None = None
        self.decided = False  # host update or graph 2: every rank agrees at the first step

    def __call__(self, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        """One step (graph 1, the mean, the host update or graph 2; Cell.__call__ would
        compile construct, which is none)."""
        with self.mean.turn():  # ranks on one core: one graph 1 at a time
            loss, flat = self.flat_grads(*inputs)
        grads = flat.asnumpy()
        if not self.decided:  # after graph 1 ran: the parameters have their runtime memory
            self.decided, self.host = True, self._host_update()
            cores = os.sched_getaffinity(0)
            self.mean.share_core(min(cores) if len(cores) == 1 else -1)
            if self.mean.group is not None:
                note(f"{TURNS_NOTE} ({self.mean.group[2]} ranks on core {min(cores)})")
        if self.host is not None:
            self.host(grads)
        else:
            self.update(Tensor.from_numpy(self.mean([grads])))
        return loss

    def _host_update(self) -> _HostAdamW | None:
        """The host update if every rank can use one (the ranks agree through the mean's
        all_sum, before anything is changed), else None: graph 2 on every rank."""
        plan = _HostAdamW.plan(self.optimizer)
        if self.mean.all_sum(0.0 if plan is None else 1.0) < self.mean.ranks - 0.5:
            return None
        assert plan is not None  # every rank, this one included, has a plan
        note(HOST_UPDATE_NOTE)
        return _HostAdamW(self.optimizer, self.clip, *plan, self.mean)


class _HostAdamW:
    """nn.AdamWeightDecay's step (MindSpore's fused CPU kernel: m = b1 m + (1 - b1) g,
    v = b2 v + (1 - b2) g^2, p -= lr (m / (eps + sqrt v) + wd p), lr = the schedule at
    global_step, then global_step + 1) for the mean gradient, clipped as graph 2 clips it,
    in numpy, each rank on its own chunk (ShmMean.chunk) of the flat parameters: the mean's
    reduce_scatter gives the chunk's mean gradient, all_sum the global norm for the clipping,
    all_gather every rank's new chunk, which each rank writes into its parameters' runtime
    memory. The moments live once per node in the mean's state rows, which every rank's
    moment Parameters share (so each checkpoint holds them whole); global_step is per rank."""

    def __init__(self, optimizer: nn.AdamWeightDecay, clip: float, lrs: np.ndarray,
                 decay: np.ndarray, mean: ShmMean) -> None:
        self.params = list(optimizer._parameters)
        self.views = [p.asnumpy().reshape(-1) for p in self.params]
        self.ptrs = [p.data_ptr() for p in self.params]
        self.bounds = np.cumsum([0] + [v.size for v in self.views])
        self.p = np.concatenate(self.views)
        self.mean, own = mean, mean.chunk
        self.m, self.v = (_share(list(moments), row, own)[own] for moments, row in
                          zip((optimizer.moments1, optimizer.moments2), mean.state, strict=True))
        self.step = _share([optimizer.global_step])
        self.b1, self.b2, self.eps = (np.float32(t.asnumpy().reshape(-1)[0]) for t in
                                      (optimizer.beta1, optimizer.beta2, optimizer.eps))
        self.clip, self.lrs, self.decay = clip, lrs, decay[own]

    @staticmethod
    def plan(optimizer: nn.Optimizer) -> tuple[np.ndarray, np.ndarray] | None:
        """(learning rates, per-value weight decay) for the host update of `optimizer`, or
        None (graph 2 stays) unless it is a plain nn.AdamWeightDecay (one learning rate,
        fixed weight decays, every parameter updated) over float32 parameters whose
        `asnumpy()` is their runtime memory."""
        from mindspore import float32

        opt: Any = optimizer
        if type(opt) is not nn.AdamWeightDecay or opt.is_group_lr or opt.dynamic_weight_decay \
                or not all(opt.optim_filter) or not opt.use_fused_opt:
            return None
        if any(p.dtype != float32 for p in opt._parameters):
            return None
        if any(p.asnumpy().ctypes.data != p.data_ptr() for p in opt._parameters):
            return None
        lr = opt.learning_rate
        lrs = (lr.learning_rate.asnumpy() if opt.dynamic_lr and hasattr(lr, "learning_rate")
               else None if opt.dynamic_lr else lr.asnumpy().reshape(1))
        if lrs is None:
            return None
        wds = opt.weight_decay if isinstance(opt.weight_decay, tuple) else \
            (opt.weight_decay,) * len(opt._parameters)
        decay = np.concatenate([np.full(int(p.size), float(np.asarray(wd)) if flag else 0.0,
                                        np.float32)
                                for p, wd, flag in zip(opt._parameters, wds, opt.decay_flags,
                                                       strict=True)])
        return lrs.astype(np.float32).reshape(-1), decay

    def __call__(self, grads: np.ndarray) -> None:
        """One step with this rank's flat gradient `grads` (float32, every parameter)."""
        grad = self.mean.reduce_scatter([grads])  # this rank's chunk of the mean, shared
        if self.clip > 0:
            norm = np.sqrt(self.mean.all_sum(float(np.dot(grad, grad))))
            grad *= np.float32(clip_factor(norm, self.clip, np.maximum))
        step = int(self.step[0])
        lr = self.lrs[step if self.lrs.size > 1 else 0]
        self.step[0] = step + 1
        m, v, p = self.m, self.v, self.p[self.mean.chunk]
        m *= self.b1
        m += (1 - self.b1) * grad
        v *= self.b2
        v += (1 - self.b2) * np.square(grad)
        update = m / (self.eps + np.sqrt(v))
        update += self.decay * p
        p -= lr * update
        grad[:] = p  # this chunk's new parameters, for every rank
        self.p[:] = self.mean.all_gather()
        for i, param in enumerate(self.params):
            if param.data_ptr() != self.ptrs[i]:  # the runtime moved it: take the new memory
                self.views[i], self.ptrs[i] = param.asnumpy().reshape(-1), param.data_ptr()
            self.views[i][:] = self.p[self.bounds[i]:self.bounds[i + 1]]


def _share(params: list[Any], flat: np.ndarray | None = None,
           own: slice = slice(None)) -> np.ndarray:
    """One flat array holding the values of `params`, which from now on share its memory:
    `flat` (only its `own` part is written here: the rest is other ranks'), else a new one."""
    values = np.concatenate([p.asnumpy().reshape(-1) for p in params])
    if flat is None:
        flat = values
    else:
        flat[own] = values[own]
    off = 0
    for p in params:
        n = int(p.size)
        p.set_data(Tensor.from_numpy(flat[off:off + n].reshape(p.shape)))
        off += n
    return flat
