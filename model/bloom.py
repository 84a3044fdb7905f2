"""The Bloom language model in MindSpore: embeddings, blocks, final LayerNorm, tied LM head.

    import mindspore as ms
    from .bloom import BloomLMHeadModel
    from .config import load_preset
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model = BloomLMHeadModel(load_preset("tiny"))
    model.set_train(False)
    logits = model(input_ids, attention_mask)     # float32 [batch, seq, vocab]

Parameter names (the checkpoint names; `model/ckpt/convert.py` maps HF names to them), with
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
Generation with a fixed-size KV cache (see model/infer.py) runs two graphs, BloomPrefill and
BloomDecodeStep, which share these parameters and a KVCache (Parameters updated in place).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.common.initializer import Zero, initializer
from mindspore.ops import constexpr

from .config import BloomConfig
from .cpu_grads import LinearOpsGrad, cpu_float32
from .layers import (
    MASK_FILL,
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
        self.constant_bias = cpu_float32(config)  # fast path (layers.FAST_PATH_FLAGS)

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
        if attention_mask is None and self.constant_bias and self.training:  # CPU fast path
            bias = causal_bias(batch, seq, self.config.n_head)  # a graph constant
        else:
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

    def decode(self, input_ids: Tensor, bias: Tensor, k_caches: tuple, v_caches: tuple,
               write: Tensor) -> Tensor:
        """One new token per row against fixed-size caches (the new token's slot included).

        Args:
            input_ids: int [batch, 1].
            bias: float32 [batch * n_head, 1, cache_len], `decode_bias(key_mask, n_head)`
                reshaped: ALiBi for every real token up to and including the new one, MASK_FILL
                elsewhere. Built on the host: a dozen tiny kernels fewer per step.
            k_caches, v_caches: per-layer Parameters of a KVCache, updated in place.
            write: int32 [batch * n_head], the cache rows of the new keys (KVCache.rows).

        Returns:
            hidden [batch, 1, hidden].
        """
        x = self.embed(input_ids)
        for i, block in enumerate(self.h):
            x, _, _ = block(x, bias, k_caches[i], v_caches[i], write)
        return self.ln_f(x)


def decode_bias(key_mask: np.ndarray, n_head: int) -> np.ndarray:
    """Host-side attention bias for `BloomModel.decode` (same values as build_alibi +
    attention_bias in the graph).

    Args:
        key_mask: [batch, cache_len], 1 for real tokens (the new one included), else 0.
        n_head: number of heads.

    Returns:
        float32 [batch, n_head, 1, cache_len].
    """
    mask = key_mask.astype(np.float32)
    positions = (np.cumsum(mask, -1, dtype=np.float32) - 1.0) * mask  # [batch, cache_len]
    alibi = alibi_slopes(n_head)[None, :, None, None] * positions[:, None, None, :]
    return np.where(mask[:, None, None, :] > 0, alibi, np.float32(MASK_FILL)).astype(np.float32)


@constexpr
def causal_bias(batch: int, seq: int, n_head: int) -> Tensor:
    """The attention bias without padding (ALiBi on and below the diagonal, MASK_FILL above),
    float32 [batch, n_head, seq, seq], built on the host while the graph compiles: the same
    values as build_alibi + attention_bias in the graph, whose broadcasting kernels (alibi *
    mask, + fill: ~1.3 ms each on [8, 8, 128, 128] with 2 threads, 3x a same-shape op) run
    on every step. At full batch shape, so that each layer's scores + bias is a same-shape
    Add ([1, ...] would make it a broadcasting one)."""
    alibi = decode_bias(np.ones((1, seq), np.float32), n_head)  # [1, n_head, 1, seq]
    causal = np.tril(np.ones((seq, seq), bool))  # [seq(query), seq(key)]
    bias = np.where(causal, alibi, np.float32(MASK_FILL))  # [1, n_head, seq, seq]
    return Tensor(np.ascontiguousarray(np.broadcast_to(bias, (batch, n_head, seq, seq))))


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
        self.ops_linear_grad = cpu_float32(config)  # CPU fast path: LinearOpsGrad
        self.ops_grad = LinearOpsGrad(bias=False)
        self.no_bias = Tensor(np.zeros(config.vocab_size, np.float32))

    def logits(self, hidden: Tensor) -> Tensor:
        """Hidden states [..., hidden] -> float32 logits [..., vocab]."""
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])  # [tokens, hidden]
        weight = self.transformer.word_embeddings.weight  # [vocab, hidden]
        if self.needs_cast:
            weight = ops.cast(weight, self.compute_dtype)
        if self.ops_linear_grad and self.training:
            out = self.ops_grad(flat, weight, self.no_bias)  # the same product
        else:
            out = self.lm_head(flat, weight)  # [tokens, vocab]
        if self.compute_dtype != ms.float32:
            out = ops.cast(out, ms.float32)
        return out.reshape(shape[:-1] + (self.config.vocab_size,))  # [..., vocab]

    def construct(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits float32 [batch, seq, vocab] for every position."""
        hidden, _, _ = self.transformer(input_ids, attention_mask)
        return self.logits(hidden)


class KVCache(nn.Cell):
    """Key and value caches of `batch` rows x `cache_len` slots per layer, as Parameters that
    the prefill and decode graphs update in place (a decode step writes one slot per row and
    head instead of copying the caches in and out of the graph).

    Each cache is flat [batch * n_head * cache_len, head_dim]: row b, head h, slot s at
    (b * n_head + h) * cache_len + s, so that ops.scatter_update writes a slot in place, and the
    decode graph reads it reshaped to [batch * n_head, cache_len, head_dim]. Measured on CPU:
    scatter_nd_update on a 3-D cache copies the whole cache every call, and this reshape costs
    less than that copy.
    """

    def __init__(self, config: BloomConfig, batch: int, cache_len: int) -> None:
        super().__init__(auto_prefix=False)
        self.batch = batch
        self.cache_len = cache_len
        shape = (batch * config.n_head * cache_len, config.head_dim)
        dtype = MS_DTYPES[config.compute_dtype]
        tag = f"kv_cache.b{batch}_l{cache_len}"  # unique per shape: one graph may hold several

        def caches(kind: str) -> ParameterTuple:
            return ParameterTuple(Parameter(initializer(Zero(), shape, dtype),
                                            name=f"{tag}.{kind}.{i}", requires_grad=False)
                                  for i in range(config.n_layer))

        self.keys = caches("key")
        self.values = caches("value")
        first = np.arange(batch * config.n_head, dtype=np.int32) * cache_len
        self.first_rows = Tensor(first)  # [batch * n_head], the cache row of slot 0

    def rows(self, slot: Tensor) -> Tensor:
        """int32 [batch * n_head]: the cache row of `slot` (int32 [1]) per row and head."""
        return self.first_rows + slot


class BloomPrefill(nn.Cell):
    """Graph: run a left-padded prompt batch, fill `cache` with its keys and values (zeros
    after the prompt), return the last position's logits and greedy tokens."""

    def __init__(self, model: BloomLMHeadModel, cache: KVCache) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.cache = cache
        self.argmax = ops.Argmax(axis=-1, output_type=ms.int32)

    def construct(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(logits float32 [batch, vocab], argmax int32 [batch]) after the prompts.

        Args:
            input_ids: int [batch, prompt_len] with prompt_len <= cache.cache_len.
            attention_mask: [batch, prompt_len], 0 on left padding.
        """
        hidden, keys, values = self.model.transformer(input_ids, attention_mask)
        batch, prompt_len = input_ids.shape
        c = self.model.config
        pad = ops.zeros((batch, c.n_head, self.cache.cache_len - prompt_len, c.head_dim),
                        keys[0].dtype)
        shape = (-1, c.head_dim)
        for i in range(len(keys)):  # [batch, n_head, cache_len, head_dim] -> cache rows
            ops.assign(self.cache.keys[i], ops.concat((keys[i], pad), 2).reshape(shape))
            ops.assign(self.cache.values[i], ops.concat((values[i], pad), 2).reshape(shape))
        logits = self.model.logits(hidden[:, -1, :])
        return logits, self.argmax(logits)


class BloomDecodeStep(nn.Cell):
    """Graph: one token per row against `cache` (written in place at `slot`); returns the
    logits and greedy tokens. Its input shapes never change, so it uses MindSpore's predict
    fast path (phase "increment": no argument checks or recompile lookup per call)."""

    def __init__(self, model: BloomLMHeadModel, cache: KVCache) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.cache = cache
        self.argmax = ops.Argmax(axis=-1, output_type=ms.int32)
        self.phase = "increment"

    def construct(self, input_ids: Tensor, bias: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
        """(logits float32 [batch, vocab], argmax int32 [batch]) of the next position.

        Args:
            input_ids: int32 [batch, 1], the tokens chosen last.
            bias: float32 [batch * n_head, 1, cache_len] (see BloomModel.decode).
            slot: int32 [1], the cache slot of these tokens.
        """
        hidden = self.model.transformer.decode(input_ids, bias, self.cache.keys,
                                               self.cache.values, self.cache.rows(slot))
        logits = self.model.logits(hidden)  # [batch, 1, vocab]
        logits = logits.reshape(logits.shape[0], -1)  # [batch, vocab] (no slice kernel)
        return logits, self.argmax(logits)


def load_parameters(model: BloomLMHeadModel, arrays: dict[str, np.ndarray]) -> None:
    """Copy numpy arrays into the model's parameters (names/shapes must match exactly)."""
    params = {p.name: p for p in model.get_parameters()}
    for name, array in arrays.items():
        param = params[name]
        param.set_data(Tensor(array.astype(ms.dtype_to_nptype(param.dtype), copy=False)))
