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
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mindspore import Tensor, nn, ops

from .cells import clip_factor
from .shm_reduce import ShmMean


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
    ranks): calling it runs graph 1, the mean in this thread, graph 2, and returns this rank's
    loss. `clip`: the global-norm clipping of the mean (train.grad_clip; <= 0: none)."""

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, clip: float,
                 mean: ShmMean) -> None:
        super().__init__(auto_prefix=False)
        self.network, self.optimizer, self.mean = network, optimizer, mean
        self.flat_grads = _FlatGrads(network, optimizer.parameters)
        self.update = _ApplyFlat(optimizer, clip)

    def __call__(self, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        """One step (two graph calls; Cell.__call__ would compile construct, which is none)."""
        loss, flat = self.flat_grads(*inputs)
        self.update(Tensor.from_numpy(self.mean([flat.asnumpy()])))
        return loss
