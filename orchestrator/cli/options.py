"""Options shared by several commands (SkyPilot's flags.py): one definition, one help text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INVENTORY = Path("inventories/local.yaml")


def inventory_option(required: bool = False) -> Callable[[F], F]:
    return click.option(
        "--inventory",
        "-i",
        "inventory_path",
        type=click.Path(path_type=Path),
        envvar="ORCHESTRATE_INVENTORY",
        required=required,
        default=None if required else DEFAULT_INVENTORY,
        show_default=not required,
        help="Inventory YAML listing the nodes (env ORCHESTRATE_INVENTORY).",
    )


def config_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--config",
        "-c",
        "preset",
        required=required,
        default=None if required else "tiny",
        show_default=not required,
        help="Preset name (tiny, 560m, 7.1b, 65b, 176b) or path to a preset YAML file.",
    )


def set_option() -> Callable[[F], F]:
    return click.option(
        "--set",
        "-s",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one preset value, type-checked against the default "
        "(e.g. --set parallel.micro_batch_num=80 --set train.seq_length=512). Repeatable.",
    )


def json_option() -> Callable[[F], F]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
    )


def forks_option() -> Callable[[F], F]:
    return click.option(
        "--forks",
        "-f",
        type=click.IntRange(1, 1024),
        default=64,
        show_default=True,
        help="How many nodes to work on at once.",
    )


def state_dir_option() -> Callable[[F], F]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=Path(".orchestrate"),
        show_default=True,
        envvar="ORCHESTRATE_STATE_DIR",
        help="Where job records live (env ORCHESTRATE_STATE_DIR).",
    )


_FILTER_HELP = (
    "DeepSpeed's resource filter: HOST[:SLOT[,SLOT...]][@HOST[:SLOT...]] (SLOT: a device id). "
    "{what} Mutually exclusive with {other}; an unknown host or slot is an error.")


def inventory_filter_option() -> Callable[[F], F]:
    """--include / --exclude on the inventory; the command loads with `load_selected(path)`."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.meta[f"orchestrate.{param.name}"] = value

    def decorate(f: F) -> F:
        f = click.option(
            "--exclude", metavar="FILTER", default=None, expose_value=False, callback=remember,
            help=_FILTER_HELP.format(what="Drop what it names (a bare HOST drops the node).",
                                     other="--include"))(f)
        return click.option(
            "--include", metavar="FILTER", default=None, expose_value=False, callback=remember,
            help=_FILTER_HELP.format(what="Use only what it names (a bare HOST: all its "
                                          "devices).", other="--exclude"))(f)

    return decorate


def load_selected(path: Path) -> Any:
    """The inventory (YAML or hostfile) at `path` with this command's --include/--exclude."""
    from orchestrator.config.filters import apply_filters
    from orchestrator.config.inventory import load_inventory

    meta = click.get_current_context().meta
    return apply_filters(load_inventory(path), meta.get("orchestrate.include"),
                         meta.get("orchestrate.exclude"))
