"""Which axis model parallelism splits each Bloom parameter on (the trainer's shard plan).

    mp_split_axis("transformer.h.3.self_attention.dense.weight")   # 1 (row parallel)
    mp_split_axis("transformer.h.3.input_layernorm.weight")        # None (replicated)

Megatron-style: column-parallel Linears (QKV, h->4h) split weight and bias on the output axis
0; row-parallel Linears (attention dense, 4h->h) split the weight on the input axis 1 and
replicate the bias; the word embedding (tied LM head) is split on the vocab axis 0; LayerNorms
are replicated. train.apply_shard_strategies shards the cells named here; the compiled dry run
(tests/model/test_train_dryrun.py) checks MindSpore's resulting layouts against this table, and
the sharded-checkpoint fixtures (tests/tools/shards.py) are cut by it. Pure Python.
"""

from __future__ import annotations

COLUMN_PARALLEL = ("self_attention.query_key_value", "mlp.dense_h_to_4h")  # per block
ROW_PARALLEL = ("self_attention.dense", "mlp.dense_4h_to_h")  # per block
EMBEDDING = "transformer.word_embeddings.weight"


def mp_split_axis(name: str) -> int | None:
    """The axis of parameter `name` split across model-parallel ranks; None: replicated."""
    if name == EMBEDDING:
        return 0
    if not name.startswith("transformer.h."):
        return None
    cell, _, kind = name.split(".", 3)[3].rpartition(".")
    if cell in COLUMN_PARALLEL:
        return 0
    if cell in ROW_PARALLEL and kind == "weight":
        return 1
    return None
