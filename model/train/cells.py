"""The trainer's MindSpore cells: loss, train step (DP reduce, clipping, AdamWeightDecay),
Megatron-style shard strategies and the compiled all-reduce.

    model, step_cell, sums = build_cells(job, layout, dist, use_mask, lrs, strategy_file, reduce)

Imported by trainer.py only once a worker trains (this module imports MindSpore), and by the
compile-only dry run (tests/tools/dryrun.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..cpu_grads import on_cpu
from . import shard_plan, shm_reduce
from .job import Job
from .trainer import Dist, Layout, block_stages, note


class CausalLMLoss(nn.Cell):
    """Mean next-token cross-entropy; with a loss_mask only where the mask is 1.

    Without a mask the loss is one fused kernel (SparseSoftmaxCrossEntropyWithLogits, and its
    fused gradient): on CPU, LogSoftmax's gradient kernel alone took ~8% of a tiny step.
    """

    def __init__(self, net: nn.Cell, masked: bool, vocab: int) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.net = net
        self.masked = masked
        self.vocab = vocab
        self.mean_nll = ops.SparseSoftmaxCrossEntropyWithLogits()

    def construct(self, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
        tokens = input_ids[:, :-1]  # [b, s]
        labels = input_ids[:, 1:].reshape(-1)  # [b*s]
        logits = self.net(tokens).reshape(-1, self.vocab)  # [b*s, V] float32
        if not self.masked:
            return self.mean_nll(logits, labels)
        logp = ops.log_softmax(logits, -1)
        nll = -ops.gather_elements(logp, 1, labels.reshape(-1, 1)).reshape(-1)  # [b*s]
        m = ops.cast(loss_mask[:, 1:].reshape(-1), ms.float32)
        return (nll * m).sum() / ops.maximum(m.sum(), 1.0)


square_sum = ops.MultitypeFuncGraph("square_sum")
dot_square_sum = ops.MultitypeFuncGraph("dot_square_sum")
scale_by = ops.MultitypeFuncGraph("scale_by")
_dot = ops.MatMul(transpose_b=True)  # [1, n] x [1, n]^T: the sum of squares of a vector


@square_sum.register("Tensor")
def _square_sum(grad: Tensor) -> Tensor:
    """Sum of squares (float32, a scalar), in kernels every backend shards."""
    return ops.reduce_sum(ops.square(ops.cast(grad, ms.float32)))


@dot_square_sum.register("Tensor")
def _dot_square_sum(grad: Tensor) -> Tensor:
    """Sum of squares as one MatMul of the flattened gradient with itself (float32, a
    scalar), for CPU: one kernel instead of Square + ReduceSum, and faster with 2 threads:
    [4096, 256] 0.45 vs 0.81 ms (ReduceSum in two stages; over all at once 4.7 ms),
    [1000, 64] 0.08 vs 0.54 ms, [256] about equal; a tiny step has 29 kernels fewer."""
    flat = ops.cast(grad, ms.float32).reshape(1, -1)
    return _dot(flat, flat).reshape(())


@scale_by.register("Tensor", "Tensor")
def _scale_by(factor: Tensor, grad: Tensor) -> Tensor:
    return grad * ops.cast(factor, grad.dtype)


def clip_factor(norm: Any, clip: float, maximum: Any = ops.maximum) -> Any:
    """THE global-norm clipping scale of the gradients: 1 up to `clip`, clip / norm above
    (`maximum`: np.maximum for a numpy norm, shm_step's host update)."""
    return clip / maximum(norm, clip)


class TrainStep(nn.TrainOneStepCell):
    """TrainOneStepCell with global-norm gradient clipping after the DP reduction.

    The clipping is written out (sum of squares, one scale) rather than
    ops.clip_by_global_norm, which measured ~2x slower per step on CPU.
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, clip: float,
                 pipeline: bool) -> None:
        """The DP mean is TrainOneStepCell's grad_reducer, from the parallel context
        (DATA_PARALLEL: its AllReduce)."""
        super().__init__(network, optimizer)
        self.clip = clip
        self.hyper_map = ops.HyperMap()
        self.square_sum = dot_square_sum if on_cpu() else square_sum
        if pipeline:  # accumulates micro-batch grads, reduces across stages
            self.grad_reducer = nn.PipelineGradReducer(optimizer.parameters)

    def construct(self, *inputs: Tensor) -> Tensor:
        loss = self.network(*inputs)
        sens = ops.ones_like(loss) * self.sens
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        if self.clip > 0:
            norm = ops.sqrt(ops.addn(self.hyper_map(self.square_sum, grads)))
            grads = self.hyper_map(ops.partial(scale_by, clip_factor(norm, self.clip)), grads)
        return ops.depend(loss, self.optimizer(grads))


def build_cells(job: Job, layout: Layout, dist: Dist, use_mask: bool, start_lrs: np.ndarray,
                strategy_file: Path | None, reduce: AllReduceSum | None = None
                ) -> tuple[Any, Any, AllReduceSum | SharedSum | None]:
    """The model, its train step (loss, grads, DP mean, clip, AdamWeightDecay: TrainStep, or
    shm_step.ShmTrainStep when the mean goes through shared memory) and the SUM all-reduce the
    trainer uses from then on (the loss and stop checks: SharedSum with the shared memory,
    else `reduce`).

    `reduce`: the job's all-reduce (several ranks); every rank calls this at the same point.
    """
    from ..bloom import BloomLMHeadModel
    from ..config import BloomConfig

    values = dict(job.model)
    if job.train["device_target"] == "CPU":
        values.update(param_dtype="float32", compute_dtype="float32")
    config = BloomConfig.from_dict(values, f"{job.path}: model")
    semi_auto = layout.model_parallel * layout.pipeline_stage > 1
    if semi_auto:
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.SEMI_AUTO_PARALLEL, device_num=dist.world,
            full_batch=True, pipeline_stages=layout.pipeline_stage,
            enable_parallel_optimizer=bool(job.parallel["optimizer_shard"]),
            strategy_ckpt_config={"save_file": str(strategy_file), "only_trainable_params": False})
    model = BloomLMHeadModel(config)
    means = None
    if semi_auto:
        apply_shard_strategies(model, layout)
    elif dist.world > 1:
        means = data_parallel_mean(job, dist, model, reduce)
    net: nn.Cell = CausalLMLoss(model, use_mask, config.vocab_size)
    if layout.pipeline_stage > 1:
        net = nn.PipelineCell(net, layout.micro_batch_num)
    optimizer = nn.AdamWeightDecay(_param_groups(net, float(job.train["weight_decay"])),
                                   learning_rate=Tensor(start_lrs), eps=1e-8)
    clip = float(job.train["grad_clip"])
    if means is not None and reduce is not None:
        from .shm_step import ShmTrainStep

        return model, ShmTrainStep(net, optimizer, clip, means[0]), SharedSum(means[1], reduce)
    return model, TrainStep(net, optimizer, clip, layout.pipeline_stage > 1), reduce


def data_parallel_mean(job: Job, dist: Dist, model: nn.Cell, reduce: AllReduceSum | None
                       ) -> tuple[shm_reduce.ShmMean, shm_reduce.ShmMean] | None:
    """The gradient mean of a data-parallel job: through shared memory when every rank runs
    on this node (shm_reduce.open_means' pair: the gradient mean, the small sums; all ranks
    agree through `reduce`), else None after setting MindSpore's DATA_PARALLEL context
    (TrainOneStepCell's fused AllReduce). Every rank calls this at the same point and gets
    the same kind of answer."""
    if reduce is not None:
        total = sum(int(p.size) for p in model.trainable_params())
        ok = job.train["device_target"] == "CPU" and shm_reduce.usable(dist.world, total)
        means = shm_reduce.open_means(dist.rank, dist.world, total, reduce, ok)
        if means is not None:
            if dist.is_rank0:
                note(f"gradient mean of the {dist.world} ranks on this node through shared "
                     "memory")
            return means
    # one fused AllReduce per step instead of one per parameter: with ranks sharing a node
    # each collective costs wake-ups of every rank (8 ranks on 2 cores: 1.7x tokens/s)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=dist.world,
                                 comm_fusion={"allreduce": {"mode": "auto", "config": None}})
    return None


def _param_groups(net: nn.Cell, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on Linear/embedding weights only, not on biases and LayerNorms."""
    params = net.trainable_params()
    decay = [p for p in params if p.name.endswith(".weight") and "layernorm" not in p.name
             and "ln_f" not in p.name]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in params if id(p) not in decay_ids]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}, {"order_params": params}]


def apply_shard_strategies(model: Any, layout: Layout) -> None:
    """Megatron-style strategies for the semi-auto parallel (Ascend) path.

    The plan is shard_plan's table: column-parallel QKV and h->4h, row-parallel dense and
    4h->h (set per Linear cell with
    `Cell.shard`: input layout + parameter plan); a vocab-parallel embedding: the table
    [vocab, hidden] is split on the vocab axis across MP, both where the lookup (the
    Embedding's Gather) reads it and where the tied LM head (MatMul with the table) does, so
    the one parameter has one slicing and the logits come out split on the vocab axis. Blocks
    go to pipeline stages by job.yaml's parallel.layers_per_stage (block_stages), the
    embeddings to the first stage and ln_f to the last. Operators not annotated here get
    MindSpore's default strategy.
    """
    from mindspore.parallel import Layout as DeviceLayout

    dp, mp = layout.data_parallel, layout.model_parallel
    # Device matrix of a stage [dp, mp]: MP groups are adjacent ranks (one node's devices),
    # as for the primitives below; plain tuples in Cell.shard would put MP on the outer axis.
    dev = DeviceLayout((dp, mp), ("dp", "mp"))
    blocks = list(model.transformer.h)
    for block, stage in zip(blocks, block_stages(layout), strict=True):
        block.pipeline_stage = stage
        for linear in (_cell(block, path) for path in shard_plan.COLUMN_PARALLEL):
            linear.shard(in_strategy=(dev("dp", "None", "None"),),
                         parameter_plan={linear.weight.name: dev("mp", "None"),
                                         linear.bias.name: dev("mp")})
        for linear in (_cell(block, path) for path in shard_plan.ROW_PARALLEL):
            linear.shard(in_strategy=(dev("dp", "None", "mp"),),
                         parameter_plan={linear.weight.name: dev("None", "mp"),
                                         linear.bias.name: dev("None")})
    embeddings = model.transformer.word_embeddings
    embeddings.gather.shard(((mp, 1), (dp, 1)))  # table [vocab/mp, h], ids [batch/dp, seq]
    model.lm_head.shard(((dp, 1), (mp, 1)))  # hidden [tokens/dp, h] x table [vocab/mp, h]^T
    embeddings.pipeline_stage = 0
    model.transformer.word_embeddings_layernorm.pipeline_stage = 0
    model.transformer.ln_f.pipeline_stage = layout.pipeline_stage - 1


def _cell(block: Any, path: str) -> Any:
    """block.<path> for a dotted path such as "self_attention.dense"."""
    for part in path.split("."):
        block = getattr(block, part)
    return block


class AllReduceSum:
    """Sums a float32 vector over every rank, with graphs compiled up front.

    A semi-auto parallel graph may not hold a communication operator ("the graph can not
    contain communication op"), so the graphs for the vector sizes needed later are compiled
    here, before build_cells sets the semi-auto context; later calls with those sizes reuse
    them (MindSpore's compile cache) and compile nothing.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        class Reduce(nn.Cell):
            def __init__(self) -> None:
                super().__init__()
                self.reduce = ops.AllReduce()

            def construct(self, x: Tensor) -> Tensor:
                return self.reduce(x)

        self.cell = Reduce()
        self.tensor = lambda values: Tensor(np.asarray(values, np.float32), ms.float32)
        self.sizes = tuple(sizes)
        for n in self.sizes:
            self.cell.compile(self.tensor(np.zeros(n)))

    def __call__(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        if len(values) not in self.sizes:
            raise ValueError(f"AllReduceSum compiled for sizes {self.sizes}, got {len(values)}")
        return self.cell(self.tensor(values)).asnumpy()


class SharedSum:
    """AllReduceSum's sums through shared memory (`shm`, a ShmMean that sums), for vectors of
    up to shm.total values; longer ones through `fallback` (every rank makes the same calls)."""

    def __init__(self, shm: shm_reduce.ShmMean, fallback: AllReduceSum) -> None:
        self.shm, self.fallback = shm, fallback

    def __call__(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        if len(values) > self.shm.total:
            return self.fallback(values)
        padded = np.zeros(self.shm.total, np.float32)
        padded[:len(values)] = values
        return self.shm([padded])[:len(values)]

