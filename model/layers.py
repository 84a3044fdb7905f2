"""Bloom building blocks in MindSpore, in HF's order: ALiBi, GELU, Linear/LayerNorm, attention,
MLP, block. `model/bloom.py` stacks them into the model.

Parameters use torch's layout ([out, in] weights) and HF's leaf names (`weight`, `bias`), so HF
tensors convert by renaming only. Matmuls run in `compute_dtype`; LayerNorm, ALiBi, attention
scores and softmax run in float32.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

from .config import BloomConfig
from .cpu_grads import LayerNormOpsGrad, LinearOpsGrad, SoftmaxOpsGrad, cpu_float32

MS_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}
MASK_FILL = float(np.finfo(np.float32).min)  # score of a masked key (exp() underflows to 0)


def alibi_slopes(n_head: int) -> np.ndarray:
    """ALiBi slope per head (Press et al.; HF `build_alibi_tensor`), float32 [n_head].

    For the closest power of two p <= n_head the slopes are 2^(-8k/p), k = 1..p. Remaining heads
    take the odd powers k = 1, 3, 5, … of 2^(-4/p) (the slopes of 2p heads that fall between).
    """
    p = 2 ** math.floor(math.log2(n_head))
    base = np.float32(2.0 ** (-(2.0 ** -(math.log2(p) - 3))))
    slopes = [np.power(base, np.float32(k), dtype=np.float32) for k in range(1, p + 1)]
    if p != n_head:
        extra = np.float32(2.0 ** (-(2.0 ** -(math.log2(2 * p) - 3))))
        remaining = min(p, n_head - p)
        slopes += [np.power(extra, np.float32(k), dtype=np.float32)
                   for k in range(1, 1 + 2 * remaining, 2)]
    return np.asarray(slopes, dtype=np.float32)


def build_alibi(key_mask: Tensor, slopes: Tensor) -> Tensor:
    """ALiBi bias of every key: slope × (position among non-padding tokens).

    Args:
        key_mask: float32 [batch, keys], 1 for real tokens, 0 for padding.
        slopes: float32 [n_head].

    Returns:
        float32 [batch, n_head, 1, keys]; padding keys get position 0 (they are masked anyway).
    """
    positions = (ops.cumsum(key_mask, -1) - 1.0) * key_mask  # [batch, keys]
    return slopes.reshape(1, -1, 1, 1) * positions[:, None, None, :]  # [batch, heads, 1, keys]


def weight_init(config: BloomConfig, random_init: bool) -> Normal | Zero:
    """Normal(initializer_range) for a fresh model; zeros when a checkpoint will overwrite them
    (drawing 560M normal numbers costs ~30 s on CPU)."""
    return Normal(config.initializer_range) if random_init else Zero()


def attention_bias(alibi: Tensor, mask: Tensor) -> Tensor:
    """Additive attention bias: ALiBi where `mask` allows attending, MASK_FILL elsewhere.

    Args:
        alibi: float32 [batch, n_head, 1, keys].
        mask: float32 [batch, 1, q_len, keys], 1 where the query may attend the key.

    Returns:
        float32 [batch, n_head, q_len, keys]. Scores + MASK_FILL stay finite (no -inf, so a
        fully masked padding row gives a uniform softmax, never NaN) and exp() underflows to 0.
    """
    return alibi * mask + (1.0 - mask) * MASK_FILL


GELU_SIGMOID_SCALE = 2.0 * 0.7978845608028654  # 2 sqrt(2/pi): 0.5 (1 + tanh(u)) = sigmoid(2u)


def bloom_gelu(x: Tensor, sigmoid_form: bool = False) -> Tensor:
    """tanh-approximated GELU (HF `bloom_gelu_forward`; its 0.79788456 is sqrt(2/pi) rounded).

    MindSpore's fused kernel agrees with HF's formula to 3e-7; spelling the formula out with
    ops.tanh would not: the CPU tanh is off by up to 1e-4. `sigmoid_form` (float32 on CPU) is
    the same function as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): within 6e-7 of
    HF in float64 (gradient 2e-6), and on CPU 8x faster forward, 6x backward than the fused
    GeLU / GeLUGrad kernels, which evaluate tanh element by element (on [8, 128, 1024]: 32 +
    63 ms vs 4 + 10 ms, one thread; bench/train_step.py). Not for float16: x^3 overflows.
    """
    if sigmoid_form:
        return x * ops.sigmoid(GELU_SIGMOID_SCALE * (x + 0.044715 * x * x * x))
    return ops.gelu(x, approximate="tanh")


# attributes of BloomMLP, BloomAttention, Linear, LayerNorm, BloomModel, the LM head (bloom.py)
FAST_PATH_FLAGS = ("sigmoid_gelu", "unstack_qkv", "ops_linear_grad", "ops_layernorm_grad",
                   "ops_softmax_grad", "constant_bias")


def set_fast_paths(cell: nn.Cell, on: bool) -> None:
    """Switch the CPU fast paths (sigmoid-form GELU, q/k/v by one Unstack, the unpadded
    attention bias as a constant: bloom.causal_bias; cpu_grads.py: Linear's bias gradient as a
    column sum,
    LayerNorm's and the softmax's gradients by ops) of every layer
    under `cell`, before it compiles: off gives the kernel paths they replace (the test of
    their equality, `python bench/train_step.py --before`)."""
    for _, sub in cell.cells_and_names():
        for flag in FAST_PATH_FLAGS:
            if hasattr(sub, flag):
                setattr(sub, flag, on)


class Linear(nn.Cell):
    """y = x W^T + b with W stored [out, in] (torch layout), computed in `compute_dtype`."""

    def __init__(self, in_features: int, out_features: int, config: BloomConfig,
                 random_init: bool = True) -> None:
        super().__init__()
        param_dtype = MS_DTYPES[config.param_dtype]
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        init = weight_init(config, random_init)
        self.weight = Parameter(initializer(init, (out_features, in_features), param_dtype),
                                name="weight")
        self.bias = Parameter(initializer(Zero(), (out_features,), param_dtype), name="bias")
        self.needs_cast = param_dtype != self.compute_dtype
        self.ops_linear_grad = cpu_float32(config)
        self.ops_grad = LinearOpsGrad(bias=True)

    def construct(self, x: Tensor) -> Tensor:
        """[..., in] -> [..., out] (one fused kernel; casts only for mixed precision; the CPU
        fast path when training: the same product, its bias gradient a column sum)."""
        if self.ops_linear_grad and self.training:
            shape = x.shape
            y = self.ops_grad(x.reshape(-1, shape[-1]), self.weight, self.bias)
            return y.reshape(shape[:-1] + (y.shape[-1],))
        if self.needs_cast:
            return ops.dense(ops.cast(x, self.compute_dtype),
                             ops.cast(self.weight, self.compute_dtype),
                             ops.cast(self.bias, self.compute_dtype))
        return ops.dense(x, self.weight, self.bias)


class Embedding(nn.Cell):
    """Token embedding table [vocab, hidden]; also the tied LM head's weight."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        super().__init__()
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        self.weight = Parameter(initializer(weight_init(config, random_init),
                                            (config.vocab_size, config.hidden_size),
                                            MS_DTYPES[config.param_dtype]), name="weight")

        self.needs_cast = MS_DTYPES[config.param_dtype] != self.compute_dtype
        self.gather = ops.Gather()  # a primitive, so a trainer can shard the lookup

    def construct(self, input_ids: Tensor) -> Tensor:
        """int [batch, seq] -> [batch, seq, hidden] in compute_dtype."""
        x = self.gather(self.weight, input_ids, 0)  # [batch, seq, hidden]
        return ops.cast(x, self.compute_dtype) if self.needs_cast else x


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis in float32; returns `compute_dtype`."""

    def __init__(self, hidden_size: int, config: BloomConfig) -> None:
        super().__init__()
        param_dtype = MS_DTYPES[config.param_dtype]
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        self.weight = Parameter(initializer(One(), (hidden_size,), param_dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (hidden_size,), param_dtype), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1,
                                  epsilon=config.layer_norm_epsilon)
        self.is_float32 = param_dtype == ms.float32 and self.compute_dtype == ms.float32
        self.ops_layernorm_grad = cpu_float32(config)
        self.ops_grad = LayerNormOpsGrad(config.layer_norm_epsilon, hidden_size)

    def construct(self, x: Tensor) -> Tensor:
        if self.is_float32 and self.ops_layernorm_grad and self.training:  # CPU fast path
            return self.ops_grad(x, self.weight, self.bias)[0]
        if self.is_float32:
            return self.norm(x, self.weight, self.bias)[0]
        y, _, _ = self.norm(ops.cast(x, ms.float32), ops.cast(self.weight, ms.float32),
                            ops.cast(self.bias, ms.float32))
        return ops.cast(y, self.compute_dtype)


class BloomAttention(nn.Cell):
    """Multi-head self-attention with a fused QKV projection laid out per head (n_head, 3, hd)."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.hidden_size = config.hidden_size
        self.compute_dtype = MS_DTYPES[config.compute_dtype]
        self.is_float32 = self.compute_dtype == ms.float32
        self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
        h = config.hidden_size
        self.query_key_value = Linear(h, 3 * h, config, random_init)
        self.dense = Linear(h, h, config, random_init)
        # No dropout cell at p == 0: every cell costs time on each graph call.
        p = config.attention_dropout
        self.attention_dropout = nn.Dropout(p=p) if p > 0.0 else None
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        self.context_matmul = ops.BatchMatMul()
        self.unstack = ops.Unstack(0)
        self.unstack_qkv = True
        self.ops_softmax_grad = cpu_float32(config)
        self.softmax = SoftmaxOpsGrad()

    def construct(self, x: Tensor, bias: Tensor, k_cache: Tensor | None = None,
                  v_cache: Tensor | None = None,
                  write: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Attend the new tokens `x` to all keys (the cache, if given, plus themselves).

        Args:
            x: [batch, q_len, hidden] (already layer-normed).
            bias: float32 [batch, n_head, q_len, keys]: ALiBi where a query may attend a key,
                MASK_FILL where it may not (see attention_bias); [batch * n_head, 1, keys] when
                decoding with a cache.
            k_cache, v_cache: decode only (q_len == 1): fixed-size caches as Parameters
                [batch * n_head * keys, head_dim] (row, head, slot at
                (row * n_head + head) * keys + slot); the new key/value is written into them in
                place (one slot, not a copy of the cache).
            write: int32 [batch * n_head], the cache row of the new key/value per row and head
                (decode only).

        Returns:
            (output [batch, q_len, hidden], keys, values [batch, n_head, keys, head_dim]; the
            caches [batch * n_head, keys, head_dim] when decoding with them).
        """
        batch, q_len, _ = x.shape
        fused = self.query_key_value(x)  # [batch, q_len, 3*hidden]
        if k_cache is not None:  # decode: heads folded into the batch, one slot written
            fused = fused.reshape(batch * self.n_head, 3, self.head_dim)
            q, k, v = ops.split(fused, 1, axis=1)  # each [batch * n_head, 1, head_dim]
            rows = (batch * self.n_head, self.head_dim)
            k = ops.scatter_update(k_cache, write, k.reshape(rows))  # in place, [b*nh*keys, hd]
            v = ops.scatter_update(v_cache, write, v.reshape(rows))
            k = k.reshape(batch * self.n_head, -1, self.head_dim)  # [batch*n_head, keys, hd]
            v = v.reshape(batch * self.n_head, -1, self.head_dim)
        elif q_len == 1:  # no transpose needed, [batch, n_head, 3, head_dim]
            fused = fused.reshape(batch, self.n_head, 3, self.head_dim)
            q = fused[:, :, 0:1]  # [batch, n_head, 1, head_dim]
            k = fused[:, :, 1:2]
            v = fused[:, :, 2:3]
        elif self.unstack_qkv:  # per head: q, k, v
            fused = fused.reshape(batch, q_len, self.n_head, 3, self.head_dim)
            fused = fused.transpose(3, 0, 2, 1, 4)  # [3, batch, n_head, q_len, head_dim]
            q, k, v = self.unstack(fused)  # each [batch, n_head, q_len, head_dim]
        else:
            fused = fused.reshape(batch, q_len, self.n_head, 3, self.head_dim)
            fused = fused.transpose(0, 2, 1, 3, 4)  # [batch, n_head, q_len, 3, head_dim]
            q = fused[:, :, :, 0]  # [batch, n_head, q_len, head_dim]
            k = fused[:, :, :, 1]
            v = fused[:, :, :, 2]
        scores = self.scores_matmul(q, k)  # [batch, n_head, q_len, keys] (or [b*nh, 1, keys])
        if not self.is_float32:
            scores = ops.cast(scores, ms.float32)
        scores = scores * self.inv_norm_factor + bias
        if self.ops_softmax_grad and self.is_float32 and self.training:  # CPU fast path
            probs = self.softmax(scores)
        else:
            probs = ops.softmax(scores, -1)  # float32
        if not self.is_float32:
            probs = ops.cast(probs, self.compute_dtype)
        if self.attention_dropout is not None:
            probs = self.attention_dropout(probs)
        context = self.context_matmul(probs, v)  # [batch, n_head, q_len, hd] (or [b*nh, 1, hd])
        if q_len != 1:
            context = context.transpose(0, 2, 1, 3)  # [batch, q_len, n_head, head_dim]
        context = context.reshape(batch, q_len, self.hidden_size)
        return self.dense(context), k, v


class BloomMLP(nn.Cell):
    """hidden -> 4*hidden -> GELU (tanh) -> hidden."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense_h_to_4h = Linear(h, 4 * h, config, random_init)
        self.dense_4h_to_h = Linear(4 * h, h, config, random_init)
        self.sigmoid_gelu = cpu_float32(config)

    def construct(self, x: Tensor) -> Tensor:
        return self.dense_4h_to_h(bloom_gelu(self.dense_h_to_4h(x), self.sigmoid_gelu))


class BloomBlock(nn.Cell):
    """Pre-LN transformer block: x + attn(LN(x)), then h + mlp(LN(h)), dropout before each add."""

    def __init__(self, config: BloomConfig, random_init: bool = True) -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config)
        self.self_attention = BloomAttention(config, random_init)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config)
        self.mlp = BloomMLP(config, random_init)
        p = config.hidden_dropout
        self.hidden_dropout = nn.Dropout(p=p) if p > 0.0 else None

    def construct(self, x: Tensor, bias: Tensor, k_cache: Tensor | None = None,
                  v_cache: Tensor | None = None,
                  write: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Arguments as BloomAttention; returns (hidden [batch, q_len, hidden], keys, values)."""
        attn, k, v = self.self_attention(self.input_layernorm(x), bias, k_cache, v_cache, write)
        if self.hidden_dropout is not None:
            attn = self.hidden_dropout(attn)
        h = x + attn
        mlp = self.mlp(self.post_attention_layernorm(h))
        if self.hidden_dropout is not None:
            mlp = self.hidden_dropout(mlp)
        return h + mlp, k, v
