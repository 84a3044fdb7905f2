"""`orchestrate plan` and `orchestrate version`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestrator.cli import options as flags


@click.command("plan")
@flags.inventory_option()
@flags.inventory_filter_option()
@flags.config_option()
@flags.set_option()
@flags.json_option()
def plan_command(
    inventory_path: Path, preset: str, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Preview the layout of a job without touching any node.

    Shows world size, DP/MP/PP, micro-batching and global batch size, nodes in rank
    order (dictionary order of `host`, as MindSpore requires of the rank table) with
    their rank ranges [start, end) and device ids, which pipeline stage lives where,
    and the static memory per device:

    \b
      P = exact Bloom parameter count (LM head tied)
      params    = P x bytes(param_dtype) / (MP x PP)
      gradients = P x bytes(param_dtype) / (MP x PP)
      optimizer = P x 8 bytes (Adam m, v in fp32) / (MP x PP) / (DP if optimizer_shard)
    Activations are not included.
    """
    from orchestrator.config.plan import build_plan
    from orchestrator.config.presets import load_job_spec

    plan = build_plan(flags.load_selected(inventory_path), load_job_spec(preset, overrides))
    if as_json:
        click.echo(json.dumps(plan.to_json(), indent=2))
        return
    from orchestrator.cli.plan_view import print_plan

    print_plan(plan)


@click.command("version")
def version_command() -> None:
    """Print the orchestrate version (and MindSpore's, if installed)."""
    import importlib.metadata

    from orchestrator import __version__

    try:
        ms = importlib.metadata.version("mindspore")
    except importlib.metadata.PackageNotFoundError:
        ms = "not installed"
    click.echo(f"orchestrate {__version__} (mindspore {ms})")


COMMANDS = (plan_command, version_command)
