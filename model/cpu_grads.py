"""CPU training fast paths with custom gradients (bprop), for float32 on CPU only, where
MindSpore's own gradient kernels are slow for our shapes: Linear's bias gradient as a column
sum (LinearOpsGrad, used by layers.Linear and the tied LM head), LayerNorm's gradient by
elementwise ops (LayerNormOpsGrad) and the attention softmax's by ops (SoftmaxOpsGrad), their
sums over the last axis as MatMuls (row_sums). Switched with the other fast paths by
layers.set_fast_paths; tests/model/test_train_loss.py checks every gradient against the
kernel paths; `python bench/train_step.py --before` times both.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .config import BloomConfig


def on_cpu() -> bool:
    """Whether MindSpore's context runs this process's graphs on the CPU (device_target)."""
    return ms.get_context("device_target") == "CPU"


def cpu_float32(config: BloomConfig) -> bool:
    """Whether the CPU fast paths apply: device target CPU and float32 compute."""
    return on_cpu() and config.compute_dtype == "float32"


class LinearOpsGrad(nn.Cell):
    """y = x W^T (+ b) with W [out, in] as inputs, not Parameters (so this cell's bprop gives
    their gradients), x [tokens, in]: the products by MindSpore's MatMul forms (dx = dy W, the
    plain form; dW = dy^T x, the transpose_a form), the bias by BiasAdd and its gradient as a
    column sum, not MindSpore's BiasAddGrad kernel (1.97-4.9 vs 0.03 ms on our shapes).

    dW by numpy's BLAS (a pyfunc Custom op) was dropped: in a small step
    (`python bench/train_step.py`) MindSpore's transpose_a MatMul made the step 1.10x faster
    with 2 threads, 1.16x with 1 (same-run A/B).
    """

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.bias = bias
        self.forward = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.backward = ops.MatMul()
        self.weight_grad = ops.MatMul(transpose_a=True)

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """[tokens, in] x [out, in]^T (+ [out]) -> [tokens, out]; the bias by BiasAdd, not a
        broadcasting Add (on CPU, [1024, 1024] + [1024]: 0.8 vs 1.4 ms with 2 threads)."""
        y = self.forward(x, weight)
        return self.bias_add(y, bias) if self.bias else y

    def bprop(self, x: Tensor, weight: Tensor, bias: Tensor, out: Tensor,  # noqa: ARG002
              dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(dx, dW, db): dout W, dout^T x, column sums of dout (zeros without bias)."""
        db = dout.sum(0) if self.bias else ops.zeros_like(bias)
        return self.backward(dout, weight), self.weight_grad(dout, x), db


def row_sums(x: Tensor, ones: Tensor) -> Tensor:
    """x [..., k] times a column `ones` [k, 1] (ones, or 1/k for means) -> [..., 1], as one
    MatMul: MindSpore's CPU ReduceSum/ReduceMean over the last axis take ~3.6 ns per element
    (a [1024, 256] mean ~0.9 ms, with 2 threads; 20 of them in a small step's LayerNorm
    gradients, 4 in its softmax gradients), the MatMul a fraction of that."""
    return ops.matmul(x.reshape(-1, x.shape[-1]), ones).reshape(x.shape[:-1] + (1,))


class LayerNormOpsGrad(nn.Cell):
    """ops.LayerNorm over the last axis (its outputs: y, mean, variance) whose gradient is
    spelled out in elementwise ops and reductions instead of the LayerNormGrad CPU kernel,
    which takes ~17 ns per element (one thread, [1024, 256] forward + backward: 10.1 vs 7.0 ms
    CPU; bench/train_step.py). x-hat is recomputed from the forward's mean and variance; the
    two means over the hidden axis are MatMuls (row_sums)."""

    def __init__(self, epsilon: float, hidden: int) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        self.means = Tensor(np.full((hidden, 1), 1.0 / hidden, np.float32))  # row_sums: means

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, ...]:
        return self.norm(x, weight, bias)

    def bprop(self, x: Tensor, weight: Tensor, bias: Tensor,  # noqa: ARG002
              out: tuple[Tensor, ...],
              dout: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """(dx, dweight, dbias) from dout[0] (mean and variance are not used downstream)."""
        _, mean, variance = out
        dy = dout[0]
        rstd = ops.rsqrt(variance + self.epsilon)
        xhat = (x - mean) * rstd
        g = dy * weight
        dx = rstd * (g - row_sums(g, self.means) - xhat * row_sums(g * xhat, self.means))
        h = x.shape[-1]
        return dx, (dy * xhat).reshape(-1, h).sum(0), dy.reshape(-1, h).sum(0)


class SoftmaxOpsGrad(nn.Cell):
    """Softmax over the last axis of [..., keys] whose gradient is
    probs * (dout - rowsum(dout * probs)) with the row sum as one MatMul (row_sums), instead
    of MindSpore's expansion of it (its ReduceSum over the last axis: ~3.8 ms per
    [8, 8, 128, 128] with 2 threads)."""

    def construct(self, x: Tensor) -> Tensor:
        return ops.softmax(x, -1)

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor]:  # noqa: ARG002
        """(dx,) = (probs * (dout - sum(dout * probs, -1)),)."""
        ones = ops.ones((out.shape[-1], 1), ms.float32)  # static shape: a graph constant
        return (out * (dout - row_sums(dout * out, ones)),)
