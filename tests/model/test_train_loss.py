"""The trainer's loss cell: the fused unmasked cross-entropy (one kernel and its fused
gradient) equals the masked path with an all-ones mask, in value and in every gradient; and
the CPU fast paths of the layers (GELU as x * sigmoid(2u), q/k/v by one Unstack, the weight
gradients of every Linear and of the tied LM head by numpy's BLAS, LayerNorm's and the
attention softmax's gradients by ops) equal the fused GeLU kernel, the per-slice path and
MindSpore's own gradient kernels they replace.

    python -m pytest tests/model/test_train_loss.py -q
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops
from orchestrate_bloom.bloom import BloomLMHeadModel
from orchestrate_bloom.config import BloomConfig
from orchestrate_bloom.cpu_grads import BLAS_MIN_MACS, BlasWeightGrad
from orchestrate_bloom.layers import set_fast_paths
from orchestrate_bloom.train.cells import CausalLMLoss


@pytest.mark.slow  # three graph compiles: ~60 s on a loaded 2-core machine
def test_fused_loss_matches_the_masked_path() -> None:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    config = BloomConfig(vocab_size=97, hidden_size=32, n_layer=1, n_head=4, seq_length=16)
    model = BloomLMHeadModel(config)
    model.set_train(True)  # the custom gradients are training paths
    blas_cells = [c for _, c in model.cells_and_names() if isinstance(c, BlasWeightGrad)]
    h_to_4h = model.transformer.h[0].mlp.dense_h_to_4h.weight  # GELU inputs ~N(0, 2), not ~0:
    h_to_4h.set_data(Tensor(h_to_4h.asnumpy() * 20))  # where the x^3 term of the tanh GELU counts
    ids = Tensor(np.random.default_rng(0).integers(0, 97, (2, 17)), ms.int32)
    ones = ops.ones((2, 17), ms.int32)
    assert model.transformer.h[0].mlp.sigmoid_gelu  # CPU float32: the fast paths are on
    assert model.blas_weight_grad and model.transformer.h[0].mlp.dense_4h_to_h.blas_weight_grad
    assert model.transformer.ln_f.ops_layernorm_grad
    assert model.transformer.h[0].self_attention.ops_softmax_grad
    ln_f = model.transformer.ln_f  # LayerNorm's weight and bias not 1 and 0: their terms count
    ln_f.weight.set_data(Tensor(np.linspace(0.5, 1.5, 32, dtype=np.float32)))
    ln_f.bias.set_data(Tensor(np.linspace(-0.2, 0.2, 32, dtype=np.float32)))
    results = []
    for masked, fast in ((False, True), (True, True), (False, False)):
        set_fast_paths(model, fast)
        for cell in blas_cells:  # the unmasked run: BLAS for these tiny shapes too; the
            cell.min_macs = 0 if not masked else BLAS_MIN_MACS  # masked: the kernel below it
        net = CausalLMLoss(model, masked, config.vocab_size)
        grads = ms.value_and_grad(net, None, model.trainable_params())
        loss, g = grads(ids, ones)
        results.append((float(loss.asnumpy()), [x.asnumpy() for x in g]))
    (fused, g_fused), (plain, g_plain), (kernels, g_kernels) = results
    assert abs(fused - plain) < 1e-5 and 4.0 < plain < 5.0  # ~ln 97 at init
    assert abs(fused - kernels) < 1e-6
    assert len(g_fused) == len(g_plain) == len(g_kernels) == len(model.trainable_params())
    for a, b, c in zip(g_fused, g_plain, g_kernels, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
    assert max(float(np.abs(a).max()) for a in g_fused) > 1e-4  # gradients are not all zero


def test_clipping_norm_is_the_sum_of_squares() -> None:
    """TrainStep's global norm: gradients from TWO_STAGE_SUM elements are summed in two stages
    (last axis, then the row sums), smaller ones at once; both give the sum of squares."""
    from mindspore import nn
    from orchestrate_bloom.train.cells import TWO_STAGE_SUM, square_sum

    class SumOfSquares(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.hyper_map = ops.HyperMap()

        def construct(self, *grads: Tensor) -> Tensor:
            return ops.addn(self.hyper_map(square_sum, grads))

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(1)
    shapes = [(TWO_STAGE_SUM // 128, 128), (TWO_STAGE_SUM // 512, 4, 64), (48, 32), (300,)]
    grads = [rng.standard_normal(s).astype(np.float32) * (i + 1) for i, s in enumerate(shapes)]
    for size_one in (grads, grads[:1], grads[1:2]):  # two-stage alone, too
        want = sum(float(np.square(g.astype(np.float64)).sum()) for g in size_one)
        got = float(SumOfSquares()(*(Tensor(g) for g in size_one)).asnumpy())
        assert abs(got - want) <= 1e-5 * want
