"""Options shared by several commands (SkyPilot's flags.py): one definition, one help text.

The grammar every command follows: a command acting on a job takes it as the positional JOB
(default: the latest; `infer` keeps --job, its positional is the prompt); outputs are
-o/--output; node parallelism is -f/--forks; presets are -c/--config; --inventory/-i
honours ORCHESTRATE_INVENTORY. Spellings of the previous release still work for one release
(`RenamedOptions`), each with a one-line deprecation note on stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INVENTORY = Path("inventories/local.yaml")
JOB = "JOB"  # RenamedOptions target: the old option's value becomes the positional JOB


class RenamedOptions(click.Command):
    """A command that still accepts the previous release's spellings, with a note on stderr.

    `renamed` maps an old option to its new spelling, or to JOB when its value is now the
    positional job argument, e.g. {"--job": JOB, "--dest": "--output", "--jobs": "--forks"}.
    Words after `--` are never touched.
    """

    def __init__(self, *args: Any, renamed: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, upgrade_args(args, self.renamed, ctx.command_path))


def upgrade_args(args: list[str], renamed: Mapping[str, str], command: str) -> list[str]:
    """`args` with old spellings replaced (see RenamedOptions); notes each on stderr."""
    out: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            out += args[i:]
            break
        old, eq, value = word.partition("=")
        new = renamed.get(old) if old.startswith("-") else None
        if new is None:
            out.append(word)
        elif new == JOB:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            positional.append(value)
            _note(command, f"{old} {value or 'JOB'}", f"JOB (positional: `{command} {value}`)")
        else:
            out.append(new + eq + value)
            _note(command, old, new)
        i += 1
    if positional:  # before any `--`
        cut = out.index("--") if "--" in out else len(out)
        out[cut:cut] = positional
    return out


def _note(command: str, old: str, new: str) -> None:
    click.echo(f"warning: `{command} {old}` is deprecated and goes in the next release; "
               f"use {new}", err=True)


def inventory_option(required: bool = False, job: bool = False,
                     optional: bool = False) -> Callable[[F], F]:
    """--inventory/-i (env ORCHESTRATE_INVENTORY). With `job`: default the job's own;
    `optional`: no default (the command works without one)."""
    if job or optional:
        return click.option(
            "--inventory", "-i", "inventory_path", type=click.Path(path_type=Path),
            envvar="ORCHESTRATE_INVENTORY", default=None,
            help="Inventory to reach the job's nodes with (default: the one the job was "
                 "started with; env ORCHESTRATE_INVENTORY)." if job else
                 "Inventory YAML listing the nodes (env ORCHESTRATE_INVENTORY).")
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


def output_option(default: Path | None = None, help: str = "Where to write.",
                  **kwargs: Any) -> Callable[[F], F]:
    """-o/--output: every command's output file or folder."""
    return click.option("--output", "-o", "output", type=click.Path(path_type=Path),
                        default=default, show_default=default is not None, help=help, **kwargs)


def config_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--config",
        "-c",
        "preset",
        required=required,
        default=None if required else "tiny",
        show_default=not required,
        help="Preset name (tiny, 560m, 7.1b, 65b, 176b), a preset YAML file, or a "
        "MindFormers run config (run_bloom_*.yaml).",
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


def forks_option(default: int = 64, help: str = "How many nodes to work on at once.",
                 ) -> Callable[[F], F]:
    return click.option(
        "--forks",
        "-f",
        type=click.IntRange(1, 1024),
        default=default,
        show_default=True,
        help=help,
    )


def backend_option() -> Callable[[F], F]:
    """`--backend`: where the ranks run (None: the inventory's `backend:`, else ssh)."""
    from orchestrator.config.scheduler import BACKENDS

    return click.option(
        "--backend", type=click.Choice(BACKENDS), default=None,
        help="ssh: every node over SSH; slurm: one sbatch job, one srun task per node "
             "(partition/account/qos/time from the inventory, docs/slurm.md); k8s: Kubernetes "
             "(AscendJob in msrun mode, Volcano Job in ranktable mode), written with --emit DIR "
             "or applied with a kubeconfig. Default: the inventory's `backend:`, else ssh.")


def state_dir_option() -> Callable[[F], F]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=None,
        show_default="$XDG_STATE_HOME/orchestrate or ~/.local/state/orchestrate",
        envvar="ORCHESTRATE_STATE_DIR",
        callback=_state_dir,
        help="Where job records live (env ORCHESTRATE_STATE_DIR); only records you own and "
             "nobody else can write are read.",
    )


def _state_dir(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path:
    """The given folder, else the per-user default (with a notice for an old ./.orchestrate)."""
    from orchestrator.job.statedir import default_state_dir, old_state_notice

    if value is not None:
        return value
    chosen = default_state_dir()
    note = old_state_notice(chosen)
    if note:
        click.echo(note, err=True)
    return chosen


_FILTER_HELP = (
    "DeepSpeed's resource filter: HOST[:SLOT[,SLOT...]][@HOST[:SLOT...]] (SLOT: a device id). "
    "{what} Mutually exclusive with {other}; an unknown host or slot is an error.")


def inventory_filter_option() -> Callable[[F], F]:
    """--include / --exclude / -N on the inventory; the command loads with `load_selected(path)`."""

    def remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is not None:
            ctx.meta[f"orchestrate.{param.name}"] = value

    def decorate(f: F) -> F:
        f = click.option(
            "-N", "--nodes", type=click.IntRange(1), default=None, expose_value=False,
            callback=remember, help="Use only the first N nodes of the inventory (after "
                                    "--include/--exclude), as Slurm's --nodes.")(f)
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
    from orchestrator.config.filters import apply_filters, first_nodes
    from orchestrator.config.inventory import load_inventory

    meta = click.get_current_context().meta
    chosen = apply_filters(load_inventory(path), meta.get("orchestrate.include"),
                           meta.get("orchestrate.exclude"))
    return first_nodes(chosen, meta.get("orchestrate.nodes"))

