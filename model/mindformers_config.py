"""MindFormers Bloom run configs (`run_bloom_*.yaml`) read as our preset sections (stdlib only).

    orchestrate plan -i inventories/12node.yaml -c run_bloom_7.1b.yaml --set train.steps=10

    doc = presets.read_yaml(Path("run_bloom_7.1b.yaml"))
    if is_mindformers(doc):
        values, notes = mindformers_values(doc, "run_bloom_7.1b.yaml")
        # values: {"model.hidden_size": ("model.model_config.hidden_size", 4096), ...}
        # notes: one line per key that cannot be honoured, with the reason

A file is a MindFormers config when it has `model.model_config` and `parallel_config` or
`runner_config` (MindFormers' own layout; our presets have neither). Every key the file sets
is either mapped onto one of our keys (MAPPING) or named in a note with the reason it is not
honoured (REASONS, else "no meaning in orchestrate"): nothing is dropped silently. Values that
would build a different network (expand_ratio != 4, an activation other than gelu) are errors.
presets.load_preset_sections is the one caller; it applies the values over defaults.yaml and
the `--set` overrides over them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

MC = "model.model_config."
# MindFormers key (dotted path in the file) -> our `section.key`.
MAPPING = {
    MC + "seq_length": "model.seq_length",
    MC + "vocab_size": "model.vocab_size",
    MC + "hidden_size": "model.hidden_size",
    MC + "embedding_size": "model.hidden_size",  # the name some MindFormers files use
    MC + "num_layers": "model.n_layer",
    MC + "num_heads": "model.n_head",
    MC + "hidden_dropout_rate": "model.hidden_dropout",
    MC + "attention_dropout_rate": "model.attention_dropout",
    MC + "initializer_range": "model.initializer_range",
    MC + "param_init_type": "model.param_dtype",
    MC + "compute_dtype": "model.compute_dtype",
    MC + "bos_token_id": "model.bos_token_id",
    MC + "eos_token_id": "model.eos_token_id",
    MC + "pad_token_id": "model.pad_token_id",
    MC + "layer_norm_epsilon": "model.layer_norm_epsilon",
    "parallel_config.data_parallel": "parallel.data_parallel",
    "parallel_config.model_parallel": "parallel.model_parallel",
    "parallel_config.pipeline_stage": "parallel.pipeline_stage",
    "parallel_config.micro_batch_num": "parallel.micro_batch_num",
    "parallel_config.optimizer_shard": "parallel.optimizer_shard",
    "parallel.enable_parallel_optimizer": "parallel.optimizer_shard",  # wins over the above
    "runner_config.batch_size": "parallel.micro_batch_size",
    "recompute_config.recompute": "parallel.recompute",
    "lr_schedule.learning_rate": "train.lr",
    "lr_schedule.lr_end": "train.min_lr",
    "lr_schedule.warmup_steps": "train.warmup_steps",
    "lr_schedule.total_steps": "train.steps",
    "optimizer.weight_decay": "train.weight_decay",
    "context.device_target": "train.device_target",
    "seed": "train.seed",
    "load_checkpoint": "train.load_checkpoint",
    "train_dataset.data_loader.dataset_dir": "data.path",
    "callbacks.CheckpointMonitor.save_checkpoint_steps": "train.save_steps",
    "callbacks.CheckpointMonitor.keep_checkpoint_max": "train.keep_checkpoints",
}
# Values that mean "not set" in MindFormers files: the key keeps our default.
UNSET: Mapping[str, object] = {"lr_schedule.total_steps": -1, "load_checkpoint": "",
                               "train_dataset.data_loader.dataset_dir": ""}
# Keys with a meaning we do not implement, and why (listed when the file sets them).
REASONS = {
    MC + "hidden_act": "orchestrate's Bloom uses HF's tanh gelu",
    MC + "softmax_compute_type": "softmax always computes in float32",
    MC + "layernorm_compute_type": "LayerNorm always computes in float32",
    MC + "embedding_init_type": "the embedding is stored in model.param_dtype",
    MC + "use_seq_parallel": "sequence parallelism is not implemented",
    MC + "use_select_recompute": "only full recompute (parallel.recompute)",
    MC + "checkpoint_name_or_path": "give train.load_checkpoint (a file) instead",
    "parallel_config.vocab_emb_dp": "the embedding table is always split over model_parallel",
    "parallel_config.gradient_aggregation_group": "gradients are reduced by MindSpore defaults",
    "runner_config.epochs": "training runs for train.steps (lr_schedule.total_steps)",
    "runner_config.sink_mode": "the trainer runs one step per call",
    "runner_config.sink_size": "the trainer runs one step per call",
    "runner_config.per_epoch_size": "training runs for train.steps",
    "lr_schedule.type": "the schedule is linear warmup then cosine to train.min_lr",
    "optimizer.type": "the optimizer is MindSpore's AdamWeightDecay (fp32 state)",
    "optimizer.beta1": "AdamWeightDecay runs with MindSpore's default betas",
    "optimizer.beta2": "AdamWeightDecay runs with MindSpore's default betas",
    "optimizer.eps": "AdamWeightDecay runs with eps 1e-8",
    "runner_wrapper": "no loss scaling; gradients are clipped at train.grad_clip",
    "resume_training": "use `orchestrate resume`",
    "auto_trans_ckpt": "collect-ckpt merges and transforms checkpoints",
    "use_parallel": "the parallel mode follows the layout (DP x MP x PP)",
    "parallel.parallel_mode": "the parallel mode follows the layout (DP x MP x PP)",
    "parallel.full_batch": "the parallel mode follows the layout (DP x MP x PP)",
    "micro_batch_interleave_num": "micro-batch interleaving is not implemented",
    "context.max_device_memory": "MindSpore's default device memory is used",
    "context.mode": "the trainer always runs in graph mode",
    MC + "top_k": "generation settings are `orchestrate infer` options",
    MC + "top_p": "generation settings are `orchestrate infer` options",
    MC + "repetition_penalty": "generation settings are `orchestrate infer` options",
    MC + "max_decode_length": "generation settings are `orchestrate infer` options",
}
# Values of REASONS keys that ask for what we do anyway (no note).
AS_WE_DO: Mapping[str, tuple[object, ...]] = {
    MC + "hidden_act": ("gelu",), MC + "layernorm_compute_type": ("float32",),
    MC + "softmax_compute_type": ("float32",), MC + "use_seq_parallel": (False,),
    MC + "use_select_recompute": (False,), MC + "checkpoint_name_or_path": ("",),
    "micro_batch_interleave_num": (1,), "resume_training": (False,),
    "auto_trans_ckpt": (False,), "context.mode": (0,), "runner_config.sink_mode": (False,),
    "parallel_config.vocab_emb_dp": (False,), "lr_schedule.type": ("cosine",),
}
# Keys that must keep the only value we implement: anything else builds another network.
REQUIRED: Mapping[str, object] = {MC + "expand_ratio": 4, MC + "type": "BloomConfig",
                                  "model.arch.type": "BloomLMHeadModel",
                                  "moe_config.expert_num": 1}
ACTIVATIONS = ("gelu", "fast_gelu")  # MindFormers' names of Bloom's activation


class MindFormersError(ValueError):
    """A MindFormers config asks for a network we cannot build; names the file and key."""


def is_mindformers(doc: Mapping[str, Any]) -> bool:
    """Whether a parsed YAML file is a MindFormers run config (by content, not by name)."""
    model = doc.get("model")
    return (isinstance(model, Mapping) and isinstance(model.get("model_config"), Mapping)
            and ("parallel_config" in doc or "runner_config" in doc))


def flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; callbacks become `callbacks.<type>.<key>` and
    MindFormers' misspelt `CheckpointMointor` is read as `CheckpointMonitor`."""
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if dotted == "callbacks" and isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    kind = str(item.get("type", "")).replace("Mointor", "Monitor")
                    rest = {k: v for k, v in item.items() if k != "type"}
                    yield from (flatten(rest, f"callbacks.{kind}.") if rest
                                else [(f"callbacks.{kind}", True)])
        elif isinstance(value, Mapping) and value:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def _reason(dotted: str) -> str | None:
    for key, reason in REASONS.items():
        if dotted == key or dotted.startswith(key + "."):
            return reason
    return None


def _check_required(dotted: str, value: Any, src: str) -> None:
    if dotted in REQUIRED and value != REQUIRED[dotted]:
        raise MindFormersError(f"{src}: {dotted}={value!r} is not supported "
                               f"(only {REQUIRED[dotted]!r})")
    if dotted == MC + "hidden_act" and value not in ACTIVATIONS:
        raise MindFormersError(f"{src}: {dotted}={value!r} is not supported "
                               f"(Bloom's gelu: one of {', '.join(ACTIVATIONS)})")


def mindformers_values(doc: Mapping[str, Any], src: str,
                       ) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Our `section.key` -> (MindFormers key, value) from a MindFormers run config, and the
    notes on what is not honoured (each key with its reason, grouped by reason; the keys
    without a meaning here in one line).

    Raises:
        MindFormersError: a key asks for a network we do not implement (names file, key, value).
    """
    found: dict[str, Any] = {}
    unhonoured: dict[str, list[str]] = {}  # reason -> "key=value" items
    leaves = list(flatten(doc))
    for dotted, value in leaves:
        _check_required(dotted, value, src)
        if dotted in MAPPING:
            if UNSET.get(dotted, object()) != value and value is not None:
                found[dotted] = value
        elif dotted not in REQUIRED and (reason := _reason(dotted)) is not None:
            if value not in AS_WE_DO.get(dotted, ()):
                unhonoured.setdefault(reason, []).append(f"{dotted}={value!r}")
    notes = [f"{src}: not honoured: {', '.join(items)} ({reason})"
             for reason, items in unhonoured.items()]
    meaningless = _meaningless(leaves)
    if meaningless:
        notes.append(f"{src}: ignored (no meaning in orchestrate): {', '.join(meaningless)}")
    # MAPPING order: where two keys mean the same, the later one (e.g. enable_parallel_optimizer
    # over parallel_config.optimizer_shard) wins, whatever the order in the file.
    values = {MAPPING[key]: (key, found[key]) for key in MAPPING if key in found}
    return values, notes


def _meaningless(leaves: list[tuple[str, Any]]) -> list[str]:
    """Keys neither mapped nor with a reason; a top-level key whose leaves all are, by name."""
    def known(dotted: str) -> bool:
        return dotted in MAPPING or dotted in REQUIRED or _reason(dotted) is not None

    by_top: dict[str, list[str]] = {}
    for dotted, _ in leaves:
        by_top.setdefault(dotted.split(".")[0], []).append(dotted)
    out: list[str] = []
    for top, keys in by_top.items():
        unknown = [k for k in keys if not known(k)]
        out += [top] if unknown and len(unknown) == len(keys) else unknown
    return out
