"""The trainer's loss cell: the fused unmasked cross-entropy (one kernel and its fused
gradient) equals the masked path with an all-ones mask, in value and in every gradient.

    python -m pytest tests/model/test_train_loss.py -q
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops
from orchestrate_bloom.bloom import BloomLMHeadModel
from orchestrate_bloom.config import BloomConfig
from orchestrate_bloom.train.cells import CausalLMLoss


@pytest.mark.slow  # two graph compiles: ~50 s on a loaded 2-core machine
def test_fused_loss_matches_the_masked_path() -> None:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    config = BloomConfig(vocab_size=97, hidden_size=32, n_layer=1, n_head=4, seq_length=16)
    model = BloomLMHeadModel(config)
    ids = Tensor(np.random.default_rng(0).integers(0, 97, (2, 17)), ms.int32)
    ones = ops.ones((2, 17), ms.int32)
    results = []
    for masked in (False, True):
        net = CausalLMLoss(model, masked, config.vocab_size)
        grads = ms.value_and_grad(net, None, model.trainable_params())
        loss, g = grads(ids, ones)
        results.append((float(loss.asnumpy()), [x.asnumpy() for x in g]))
    (fused, g_fused), (plain, g_plain) = results
    assert abs(fused - plain) < 1e-5 and 4.0 < plain < 5.0  # ~ln 97 at init
    assert len(g_fused) == len(g_plain) == len(model.trainable_params())
    for a, b in zip(g_fused, g_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert max(float(np.abs(a).max()) for a in g_fused) > 1e-4  # gradients are not all zero
