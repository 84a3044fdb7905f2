"""The trainer's loss cell: the fused unmasked cross-entropy (one kernel and its fused
gradient) equals the masked path with an all-ones mask, in value and in every gradient; and
the CPU fast paths of the layers (GELU as x * sigmoid(2u), q/k/v by one Unstack, the
gradients of every Linear and of the tied LM head by LinearOpsGrad, LayerNorm's and the
attention softmax's gradients by ops, the unpadded attention bias as a constant) equal the
fused GeLU kernel, the per-slice path, MindSpore's own gradient kernels and the in-graph
bias they replace.

    python -m pytest tests/model/test_train_loss.py -q
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops
from orchestrate_bloom.bloom import BloomLMHeadModel
from orchestrate_bloom.config import BloomConfig
from orchestrate_bloom.layers import set_fast_paths
from orchestrate_bloom.train.cells import CausalLMLoss


@pytest.mark.slow  # three graph compiles: ~60 s on a loaded 2-core machine
def test_fused_loss_matches_the_masked_path() -> None:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    config = BloomConfig(vocab_size=97, hidden_size=32, n_layer=1, n_head=4, seq_length=16)
    model = BloomLMHeadModel(config)
    model.set_train(True)  # the custom gradients are training paths
    h_to_4h = model.transformer.h[0].mlp.dense_h_to_4h.weight  # GELU inputs ~N(0, 2), not ~0:
    h_to_4h.set_data(Tensor(h_to_4h.asnumpy() * 20))  # where the x^3 term of the tanh GELU counts
    ids = Tensor(np.random.default_rng(0).integers(0, 97, (2, 17)), ms.int32)
    ones = ops.ones((2, 17), ms.int32)
    assert model.transformer.h[0].mlp.sigmoid_gelu  # CPU float32: the fast paths are on
    assert model.ops_linear_grad and model.transformer.h[0].mlp.dense_4h_to_h.ops_linear_grad
    assert model.transformer.ln_f.ops_layernorm_grad
    assert model.transformer.h[0].self_attention.ops_softmax_grad
    assert model.transformer.constant_bias  # the attention bias: a constant (causal_bias)
    ln_f = model.transformer.ln_f  # LayerNorm's weight and bias not 1 and 0: their terms count
    ln_f.weight.set_data(Tensor(np.linspace(0.5, 1.5, 32, dtype=np.float32)))
    ln_f.bias.set_data(Tensor(np.linspace(-0.2, 0.2, 32, dtype=np.float32)))
    results = []
    for masked, fast in ((False, True), (True, True), (False, False)):
        set_fast_paths(model, fast)
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


def test_constant_causal_bias_equals_the_graph_bias() -> None:
    """bloom.causal_bias (built on the host, the training fast path without padding) has
    exactly the values the graph builds from build_alibi and attention_bias; 6 heads: not a
    power of two, so the interleaved slopes count too."""
    from orchestrate_bloom.bloom import causal_bias
    from orchestrate_bloom.layers import alibi_slopes, attention_bias, build_alibi

    key_mask = ops.ones((2, 7), ms.float32)
    mask = ops.tril(ops.ones((7, 7), ms.float32))[None, None, :, :] * key_mask[:, None, None, :]
    graph = attention_bias(build_alibi(key_mask, Tensor(alibi_slopes(6))), mask)
    np.testing.assert_array_equal(causal_bias(2, 7, 6).asnumpy(), graph.asnumpy())


def test_clipping_norm_is_the_sum_of_squares() -> None:
    """TrainStep's global norm: each gradient's sum of squares (on CPU one MatMul of the
    flattened gradient with itself; else Square + ReduceSum), added up, is the sum of
    squares of all, to float32 rounding."""
    from mindspore import nn
    from orchestrate_bloom.train.cells import dot_square_sum, square_sum

    class SumOfSquares(nn.Cell):
        def __init__(self, each: ops.MultitypeFuncGraph) -> None:
            super().__init__()
            self.hyper_map = ops.HyperMap()
            self.each = each

        def construct(self, *grads: Tensor) -> Tensor:
            return ops.addn(self.hyper_map(self.each, grads))

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(1)
    shapes = [(1024, 128), (256, 4, 64), (48, 32), (300,)]
    grads = [rng.standard_normal(s).astype(np.float32) * (i + 1) for i, s in enumerate(shapes)]
    want = sum(float(np.square(g.astype(np.float64)).sum()) for g in grads)
    for each in (dot_square_sum, square_sum):
        got = SumOfSquares(each)(*(Tensor(g) for g in grads)).asnumpy()
        assert got.shape == () and abs(float(got) - want) <= 1e-5 * want
