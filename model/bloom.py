"""The Bloom language model in MindSpore: embeddings, blocks, final LayerNorm, tied LM head.

    import mindspore as ms
    from model.bloom import BloomLMHeadModel
    from model.config import load_preset
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = BloomLMHeadModel(load_preset("tiny"))
    model.set_train(False)
    logits = model(input_ids, attention_mask)     # float32 [batch, seq, vocab]

Parameter names (the checkpoint names; `model/convert.py` maps HF names to them), with
h = hidden_size, V = vocab_size, i = 0..n_layer-1, weights stored [out, in] like torch:

    transformer.word_embeddings.weight                          [V, h]   (also the LM head)
    transformer.word_embeddings_layernorm.{weight,bias}         [h]
    transformer.h.{i}.input_layernorm.{weight,bias}             [h]
    transformer.h.{i}.self_attention.query_key_value.weight     [3h, h]  rows per head: q, k, v
    transformer.h.{i}.self_attention.query_key_value.bias       [3h]
    transformer.h.{i}.self_attention.dense.{weight,bias}        [h, h], [h]
    transformer.h.{i}.post_attention_layernorm.{weight,bias}    [h]
    transformer.h.{i}.mlp.dense_h_to_4h.{weight,bias}           [4h, h], [4h]
    transformer.h.{i}.mlp.dense_4h_to_h.{weight,bias}           [h, 4h], [h]
    transformer.ln_f.{weight,bias}                              [h]

The LM head has no parameter of its own (tied, no bias). A training wrapper cell renames these
unless it is built with `auto_prefix=False` (e.g. `net.transformer...`); checkpoints loaded by
model.convert.load_checkpoint_arrays may carry such a prefix and optimizer state.
Generation with a fixed-size KV cache uses `prefill` and `decode_step` (see model/infer.py),
which share these parameters.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from model.config import BloomConfig
from model.layers import (
    MS_DTYPES,
    BloomBlock,
    Embedding,
    LayerNorm,
    alibi_slopes,
    attention_bias,
    build_alibi,
)


class BloomModel(nn.Cell):
    """Embeddings -> word_embeddings_layernorm -> n_layer blocks -> ln_f (hidden states)."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        self.word_embeddings = Embedding(config, random_init)
        self.word_embeddings_layernorm = LayerNorm(config.hidden_size, config)
        self.h = nn.CellList([BloomBlock(config, random_init) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.hidden_size, config)
        self.slopes = Tensor(alibi_slopes(config.n_head))  # [n_head] float32 constant

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token ids [batch, seq] -> layer-normed embeddings [batch, seq, hidden]."""
        return self.word_embeddings_layernorm(self.word_embeddings(input_ids))

    def construct(self, input_ids: Tensor,
                  attention_mask: Tensor | None = None) -> tuple[Tensor, tuple, tuple]:
        """Full forward over `input_ids` with a causal mask.

        Args:
            input_ids: int [batch, seq].
            attention_mask: [batch, seq], 1 for real tokens, 0 for (left) padding; None = all 1.

        Returns:
            (hidden [batch, seq, hidden], keys, values): keys/values are per-layer tuples of
            [batch, n_head, seq, head_dim], the KV cache of these tokens.
        """
        batch, seq = input_ids.shape
        if attention_mask is None:
            key_mask = ops.ones((batch, seq), ms.float32)
        else:
            key_mask = ops.cast(attention_mask, ms.float32)
        alibi = build_alibi(key_mask, self.slopes)  # [batch, n_head, 1, seq]
        causal = ops.tril(ops.ones((seq, seq), ms.float32))  # [seq(query), seq(key)]
        mask = causal[None, None, :, :] * key_mask[:, None, None, :]  # [batch, 1, seq, seq]
        bias = attention_bias(alibi, mask)  # [batch, n_head, seq, seq]
        x = self.embed(input_ids)
        keys = ()  # type: tuple[Tensor, ...]
        values = ()  # type: tuple[Tensor, ...]
        for block in self.h:
            x, k, v = block(x, bias)
            keys += (k,)
            values += (v,)
        return self.ln_f(x), keys, values

    def decode(self, input_ids: Tensor, key_mask: Tensor, k_caches: tuple, v_caches: tuple,
               write: Tensor) -> tuple[Tensor, tuple, tuple]:
        """One new token per row against fixed-size caches (the new token's slot included).

        Args:
            input_ids: int [batch, 1].
            key_mask: float32 [batch, cache_len], 1 for every real token up to and including the
                new one (its slot is where `write` is 1), 0 for padding and unused slots.
            k_caches, v_caches: per-layer [batch, n_head, cache_len, head_dim].
            write: float32 [cache_len], one-hot slot of the new token.

        Returns:
            (hidden [batch, 1, hidden], new k caches, new v caches).
        """
        alibi = build_alibi(key_mask, self.slopes)  # [batch, n_head, 1, cache_len]
        bias = attention_bias(alibi, key_mask[:, None, None, :])  # [batch, n_head, 1, cache_len]
        write = (write > 0.5).reshape(1, 1, -1, 1)  # [1, 1, cache_len, 1]
        x = self.embed(input_ids)
        keys = ()  # type: tuple[Tensor, ...]
        values = ()  # type: tuple[Tensor, ...]
        for i, block in enumerate(self.h):
            x, k, v = block(x, bias, k_caches[i], v_caches[i], write)
            keys += (k,)
            values += (v,)
        return self.ln_f(x), keys, values


class BloomLMHeadModel(nn.Cell):
    """Bloom with the LM head tied to `transformer.word_embeddings.weight` (no bias)."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        """Build the model; `random_init=False` leaves weights zero for a checkpoint to fill."""
        super().__init__()
        self.config = config
        self.transformer = BloomModel(config, random_init)
        self.lm_head = ops.MatMul(transpose_b=True)  # x @ E^T without copying E
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        self.needs_cast = MS_DTYPES[config.param_dtype] != self.compute_dtype

    def logits(self, hidden: Tensor) -> Tensor:
        """Hidden states [..., hidden] -> float32 logits [..., vocab]."""
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])  # [tokens, hidden]
        weight = self.transformer.word_embeddings.weight  # [vocab, hidden]
        if self.needs_cast:
            weight = ops.cast(weight, self.compute_dtype)
        out = self.lm_head(flat, weight)  # [tokens, vocab]
        if self.compute_dtype != ms.float32:
            out = ops.cast(out, ms.float32)
        return out.reshape(shape[:-1] + (self.config.vocab_size,))  # [..., vocab]

    def construct(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits float32 [batch, seq, vocab] for every position."""
        hidden, _, _ = self.transformer(input_ids, attention_mask)
        return self.logits(hidden)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor,
                cache_len: int) -> tuple[Tensor, tuple, tuple]:
        """Run a (left-padded) prompt batch and start the caches.

        Args:
            input_ids: int [batch, prompt_len].
            attention_mask: [batch, prompt_len], 0 on left padding.
            cache_len: static cache size (>= prompt_len); slots after the prompt are zero.

        Returns:
            (last-position logits float32 [batch, vocab], k caches, v caches), the caches
            per-layer [batch, n_head, cache_len, head_dim].
        """
        hidden, keys, values = self.transformer(input_ids, attention_mask)
        batch, prompt_len = input_ids.shape
        c = self.config
        pad = ops.zeros((batch, c.n_head, cache_len - prompt_len, c.head_dim), self.compute_dtype)
        k_caches = ()  # type: tuple[Tensor, ...]
        v_caches = ()  # type: tuple[Tensor, ...]
        for i in range(len(keys)):
            k_caches += (ops.concat((keys[i], pad), 2),)  # [batch, n_head, cache_len, head_dim]
            v_caches += (ops.concat((values[i], pad), 2),)
        return self.logits(hidden[:, -1, :]), k_caches, v_caches

    def decode_step(self, input_ids: Tensor, key_mask: Tensor, k_caches: tuple, v_caches: tuple,
                    write: Tensor) -> tuple[Tensor, tuple, tuple]:
        """One token per row (see BloomModel.decode); returns (logits [batch, vocab], caches)."""
        hidden, keys, values = self.transformer.decode(input_ids, key_mask, k_caches, v_caches,
                                                       write)
        return self.logits(hidden[:, 0, :]), keys, values


class BloomPrefill(nn.Cell):
    """Graph entry for `BloomLMHeadModel.prefill` (shares the model's parameters)."""

    def __init__(self, model: BloomLMHeadModel) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids: Tensor, attention_mask: Tensor,
                  cache_len: int) -> tuple[Tensor, tuple, tuple]:
        return self.model.prefill(input_ids, attention_mask, cache_len)


class BloomDecodeStep(nn.Cell):
    """Graph entry for `BloomLMHeadModel.decode_step` (shares the model's parameters)."""

    def __init__(self, model: BloomLMHeadModel) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids: Tensor, key_mask: Tensor, k_caches: tuple, v_caches: tuple,
                  write: Tensor) -> tuple[Tensor, tuple, tuple]:
        return self.model.decode_step(input_ids, key_mask, k_caches, v_caches, write)


def load_parameters(model: BloomLMHeadModel, arrays: dict[str, np.ndarray]) -> None:
    """Copy numpy arrays into the model's parameters (names/shapes must match exactly)."""
    params = {p.name: p for p in model.get_parameters()}
    for name, array in arrays.items():
        param = params[name]
        param.set_data(Tensor(array.astype(ms.dtype_to_nptype(param.dtype), copy=False)))
