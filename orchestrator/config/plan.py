"""The layout preview: inventory + job spec -> world size, DP/MP/PP, rank ranges, stages, memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrate_bloom.train.stages import resolve_split

from orchestrator.config.inventory import Inventory
from orchestrator.config.presets import (
    JobSpec,
    ParallelLayout,
    fit_to_world,
    memory_per_device_bytes,
)
from orchestrator.hccl.ranktable import NodeRanks, node_rank_ranges

GIB = 1024**3


@dataclass(frozen=True)
class NodePlan:
    """One node's share of the job."""

    ranks: NodeRanks
    stages: tuple[int, ...]  # pipeline stages whose ranks live on this node


@dataclass(frozen=True)
class Plan:
    """Everything `plan` prints and `up` renders from."""

    spec: JobSpec
    layout: ParallelLayout  # the preset's layout fitted to the inventory
    notes: tuple[str, ...]  # what was recomputed, in words
    nodes: tuple[NodePlan, ...]  # in rank order
    stage_layers: tuple[int, ...]  # layers per pipeline stage
    memory: dict[str, float]  # bytes per device: parameters, gradients, optimizer, total

    @property
    def world_size(self) -> int:
        return self.layout.devices

    def to_json(self) -> dict[str, Any]:
        m, p = self.spec.model, self.layout
        return {
            "preset": self.spec.preset,
            "overrides": list(self.spec.overrides),
            "world_size": self.world_size,
            "notes": list(self.notes),
            "parallel": {
                "data_parallel": p.data_parallel,
                "model_parallel": p.model_parallel,
                "pipeline_stage": p.pipeline_stage,
                "micro_batch_num": p.micro_batch_num,
                "batch_size": p.micro_batch_size,
                "global_batch_size": p.global_batch_size,
                "optimizer_shard": p.optimizer_shard,
                "layers_per_stage": list(self.stage_layers),
            },
            "model": {
                "hidden_size": m.hidden_size,
                "num_layers": m.n_layer,
                "num_heads": m.n_head,
                "vocab_size": m.vocab_size,
                "seq_length": m.seq_length,
                "parameters": m.parameters,
                "param_dtype": m.param_dtype,
                "compute_dtype": m.compute_dtype,
            },
            "nodes": [
                {
                    "name": n.ranks.node.name,
                    "host": n.ranks.node.host,
                    "devices": list(n.ranks.node.devices),
                    "rank_start": n.ranks.rank_start,
                    "rank_end": n.ranks.rank_end,
                    "pipeline_stages": list(n.stages),
                }
                for n in self.nodes
            ],
            "memory_per_device_gib": round(self.memory["total"] / GIB, 3),
            "memory_breakdown_gib": {k: round(v / GIB, 3) for k, v in self.memory.items()},
        }


def build_plan(inv: Inventory, spec: JobSpec) -> Plan:
    """Fit the spec to the inventory and lay ranks out.

    Raises:
        PresetError: the world size does not fit MP×PP of the preset.
    """
    layout, note = fit_to_world(spec, inv.world_size)
    per_stage = layout.devices // layout.pipeline_stage
    nodes = tuple(
        NodePlan(ranks=r, stages=tuple(sorted({rank // per_stage for rank in r.ranks})))
        for r in node_rank_ranges(inv)
    )
    notes = [*spec.notes, *([note] if note else [])]
    stage_layers = resolve_split(spec.value("parallel.layers_per_stage"), spec.model.n_layer,
                                 layout.pipeline_stage)
    if len(set(stage_layers)) > 1:
        notes.append(
            f"{spec.model.n_layer} layers over {layout.pipeline_stage} stages: stages take "
            f"{min(stage_layers)} to {max(stage_layers)} layers"
        )
    return Plan(
        spec=spec,
        layout=layout,
        notes=tuple(notes),
        nodes=nodes,
        stage_layers=tuple(stage_layers),
        memory=memory_per_device_bytes(spec.model, layout, stage_layers),
    )
