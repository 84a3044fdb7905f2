"""Human-readable rendering of a Plan (rich table)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator.config.plan import GIB, Plan


def print_plan(plan: Plan) -> None:
    """Print the plan as a summary plus one table row per node."""
    console = Console()
    m, p = plan.spec.model, plan.layout
    console.print(
        f"[bold]preset[/] {plan.spec.preset}"
        + (f"  overrides: {' '.join(plan.spec.overrides)}" if plan.spec.overrides else "")
    )
    console.print(
        f"model     hidden {m.hidden_size}, layers {m.n_layer}, heads {m.n_head}, "
        f"vocab {m.vocab_size}, seq {m.seq_length}, {_count(m.parameters)} parameters"
    )
    console.print(
        f"layout    world {plan.world_size} = DP {p.data_parallel} × MP {p.model_parallel}"
        f" × PP {p.pipeline_stage}; micro-batch size {p.micro_batch_size} × "
        f"{p.micro_batch_num} micro-batches × DP {p.data_parallel} = global batch "
        f"{p.global_batch_size}"
    )
    if p.pipeline_stage > 1:
        console.print(f"stages    layers per stage: {', '.join(map(str, plan.stage_layers))}")
    mem = plan.memory
    console.print(
        f"memory    {_bytes(mem['total'])} per device (params "
        f"{_bytes(mem['parameters'])} + grads {_bytes(mem['gradients'])} + optimizer "
        f"{_bytes(mem['optimizer'])}; activations not included)"
    )
    for note in plan.notes:
        console.print(f"[yellow]note[/]      {note}")
    table = Table(title="nodes in rank order (dictionary order of host)")
    for col in ("#", "name", "host", "devices", "ranks", "pipeline stages"):
        table.add_column(col)
    for i, n in enumerate(plan.nodes):
        r = n.ranks
        devices = ",".join(map(str, r.node.devices))
        stages = ",".join(map(str, n.stages))
        table.add_row(
            str(i), r.node.name, r.node.host, devices, f"{r.rank_start}–{r.rank_end - 1}", stages
        )
    console.print(table)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
