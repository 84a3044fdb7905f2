"""The MindSpore model and KV-cache generation on a tiny random Bloom (CPU, graph mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from orchestrate_bloom.config import BloomConfig
from orchestrate_bloom.infer import GenerateConfig, InferError, left_pad, select_tokens

CONFIG = BloomConfig(vocab_size=99, hidden_size=48, n_layer=2, n_head=6, seq_length=64)
PROMPTS = [[1, 5, 9, 33, 70, 12, 8, 40, 41, 42, 43, 44, 45, 46, 47],
           [1, 40, 41], [1, 7], [1, 90, 80, 70, 60, 50]]


@pytest.fixture(scope="module")
def tiny():
    """(model, generator) with large random weights, so greedy choices are well separated."""
    from orchestrate_bloom.bloom import BloomLMHeadModel, load_parameters
    from orchestrate_bloom.infer import Generator, set_graph_mode

    set_graph_mode("CPU")
    model = BloomLMHeadModel(CONFIG)
    model.set_train(False)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape in CONFIG.parameter_shapes().items():
        if "layernorm" in name or "ln_f" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            arrays[name] = (base + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("bias"):
            arrays[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        else:  # 4/sqrt(fan_in): large enough that generations do not just repeat one token
            std = 4.0 / np.sqrt(shape[-1])
            arrays[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    load_parameters(model, arrays)
    return model, Generator(model)


def test_alibi_slopes_by_hand() -> None:
    from orchestrate_bloom.layers import alibi_slopes

    np.testing.assert_array_equal(alibi_slopes(4), [2**-2, 2**-4, 2**-6, 2**-8])
    np.testing.assert_array_equal(alibi_slopes(8), [2.0**-k for k in range(1, 9)])
    # 6 heads: the 4-head slopes, then odd powers of 2^(-8/8): 2^-1, 2^-3
    np.testing.assert_array_equal(alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    # 12 heads: 8-head slopes, then 2^(-0.5), 2^(-1.5), 2^(-2.5), 2^(-3.5)
    np.testing.assert_allclose(alibi_slopes(12)[8:], [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5],
                               rtol=1e-6)


def test_parameters_are_the_documented_names_and_head_is_tied(tiny) -> None:
    model, _ = tiny
    params = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert params == CONFIG.parameter_shapes()
    assert not any("lm_head" in name for name in params)


def test_forward_shapes_and_left_padding_invariance(tiny) -> None:
    from mindspore import Tensor

    model, _ = tiny
    ids = np.array([[3, 3, 3, 1, 5, 9], [1, 5, 9, 17, 18, 19]], np.int32)
    mask = np.array([[0, 0, 0, 1, 1, 1], [1] * 6], np.int32)
    logits = model(Tensor(ids), Tensor(mask)).asnumpy()
    assert logits.shape == (2, 6, 99) and logits.dtype == np.float32
    alone = model(Tensor(ids[:1, 3:]), Tensor(mask[:1, 3:])).asnumpy()
    np.testing.assert_allclose(logits[0, 3:], alone[0], atol=1e-5)  # positions skip padding
    no_mask = model(Tensor(ids[1:])).asnumpy()
    np.testing.assert_allclose(logits[1], no_mask[0], atol=1e-6)


def greedy_without_cache(model: Any, prompts: Sequence[Sequence[int]],
                         max_new_tokens: int) -> list[list[int]]:
    """Reference greedy decoding: a full forward per token, no cache (the generator's oracle).

    Tokens are appended into one fixed-width buffer (left-padded prompts, masked slots on the
    right), so the forward graph compiles once; causal masking hides the unused slots.
    """
    from mindspore import Tensor

    c = model.config
    prompt_len = max(len(p) for p in prompts)
    ids, mask = left_pad(prompts, prompt_len, c.pad_token_id)
    width = prompt_len + max_new_tokens
    ids = np.concatenate([ids, np.full((len(prompts), max_new_tokens), c.pad_token_id,
                                       np.int32)], 1)
    mask = np.concatenate([mask, np.zeros((len(prompts), max_new_tokens), np.int32)], 1)
    finished = np.zeros(len(prompts), bool)
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        pos = prompt_len + step - 1
        logits = model(Tensor(ids), Tensor(mask)).asnumpy()[:, pos]  # [batch, vocab]
        tokens = np.where(finished, c.pad_token_id, logits.argmax(-1)).astype(np.int32)
        for row in np.flatnonzero(~finished):
            out[row].append(int(tokens[row]))
        finished |= tokens == c.eos_token_id
        if finished.all() or pos + 1 >= width:
            break
        ids[:, pos + 1] = tokens
        mask[:, pos + 1] = 1
    return out


def test_cached_generation_equals_no_cache(tiny) -> None:
    model, generator = tiny
    cached = generator.generate(PROMPTS, GenerateConfig(max_new_tokens=12))
    assert cached == greedy_without_cache(model, PROMPTS, 12)
    assert all(len(new) == 12 or new[-1] == CONFIG.eos_token_id for new in cached)
    assert len({tuple(new) for new in cached}) == len(PROMPTS)  # not a degenerate model


def test_left_padded_batch_equals_each_prompt_alone(tiny) -> None:
    _, generator = tiny
    gen = GenerateConfig(max_new_tokens=12)
    batch = generator.generate(PROMPTS, gen)
    assert batch == [generator.generate([p], gen)[0] for p in PROMPTS]


def test_cache_logits_match_full_forward(tiny) -> None:
    import mindspore as ms
    from mindspore import Tensor
    from orchestrate_bloom.bloom import BloomDecodeStep, BloomPrefill, KVCache, decode_bias

    model, _ = tiny
    ids = np.array([[3, 3, 1, 4, 5, 6, 0, 0, 0, 0]], np.int32)  # 4 slots for decoded tokens
    mask = np.array([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
    cache = KVCache(CONFIG, 1, 16)
    logits, greedy = BloomPrefill(model, cache)(Tensor(ids[:, :6]), Tensor(mask[:, :6]))
    full = model(Tensor(ids[:, :6]), Tensor(mask[:, :6])).asnumpy()[:, -1]
    np.testing.assert_allclose(logits.asnumpy(), full, atol=1e-4)
    assert greedy.asnumpy().tolist() == full.argmax(-1).tolist()
    key_mask = np.zeros((1, 16), np.float32)
    key_mask[:, :6] = mask[:, :6]
    decode = BloomDecodeStep(model, cache)
    for slot in range(6, 10):
        token = slot * 7 % 99
        key_mask[0, slot] = 1
        bias = decode_bias(key_mask, 6).reshape(6, 1, 16)  # [batch * n_head, 1, cache_len]
        logits, greedy = decode(Tensor([[token]], ms.int32), Tensor(bias),
                                Tensor([slot], ms.int32))
        ids[0, slot], mask[0, slot] = token, 1
        full = model(Tensor(ids), Tensor(mask)).asnumpy()[:, slot]  # later slots are masked
        np.testing.assert_allclose(logits.asnumpy(), full, atol=1e-4)
        assert greedy.asnumpy().tolist() == full.argmax(-1).tolist()
    # The caches were written in place: slot 9 of every head holds the last token's key.
    keys = cache.keys[0].asnumpy().reshape(CONFIG.n_head, 16, -1)  # [n_head, slots, hd]
    assert np.abs(keys[:, 9]).min() > 0 and not keys[:, 10:].any()


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny) -> None:
    _, generator = tiny
    sample = GenerateConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95,
                            seed=3)
    first = generator.generate(PROMPTS, sample)
    assert first == generator.generate(PROMPTS, sample)
    others = [generator.generate(PROMPTS, GenerateConfig(max_new_tokens=8, do_sample=True,
                                                         temperature=1.5, seed=s))
              for s in (4, 5)]
    assert any(o != first for o in others)
    greedy = generator.generate(PROMPTS, GenerateConfig(max_new_tokens=8))
    top1 = GenerateConfig(max_new_tokens=8, do_sample=True, top_k=1, seed=9)
    assert generator.generate(PROMPTS, top1) == greedy


def test_select_tokens_filters() -> None:
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000, np.float32))
    top2 = select_tokens(logits, GenerateConfig(do_sample=True, top_k=2), rng)
    assert set(top2.tolist()) == {0, 1}
    nucleus = select_tokens(logits, GenerateConfig(do_sample=True, top_p=0.7), rng)
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    tiny_p = select_tokens(logits, GenerateConfig(do_sample=True, top_p=0.01), rng)
    assert set(tiny_p.tolist()) == {0}
    free = select_tokens(logits, GenerateConfig(do_sample=True), rng)
    assert abs(np.mean(free == 3) - 0.05) < 0.02
    assert select_tokens(logits[:1], GenerateConfig(), rng).tolist() == [0]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
    ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
    ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k=-1 must be >= 0"),
])
def test_generate_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(InferError, match=message):
        GenerateConfig(**kwargs)


def test_host_decode_bias_equals_graph_bias() -> None:
    from mindspore import Tensor
    from orchestrate_bloom.bloom import decode_bias
    from orchestrate_bloom.layers import alibi_slopes, attention_bias, build_alibi

    key_mask = np.array([[0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]], np.float32)
    mask = Tensor(key_mask)
    graph = attention_bias(build_alibi(mask, Tensor(alibi_slopes(6))), mask[:, None, None, :])
    np.testing.assert_array_equal(decode_bias(key_mask, 6), graph.asnumpy())


def test_set_graph_mode_again_after_a_graph_ran() -> None:
    """A process that already ran a kernel (a test session that trained first) may set graph
    mode on the same device again; another device still raises MindSpore's RuntimeError."""
    import subprocess
    import sys

    script = (
        "import mindspore as ms, numpy as np\n"
        "from orchestrate_bloom.generate import set_graph_mode\n"
        "ms.set_context(mode=ms.GRAPH_MODE, device_target='CPU')\n"
        "assert (ms.Tensor(np.ones(2, np.float32)) + 1).asnumpy().tolist() == [2.0, 2.0]\n"
        "set_graph_mode('CPU')\n"
        "try:\n"
        "    set_graph_mode('Ascend')\n"
        "except RuntimeError as e:\n"
        "    print('refused:', str(e).splitlines()[0])\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("refused: "), res.stdout  # no Ascend here, or not this one
