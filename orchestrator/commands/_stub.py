"""Placeholder for commands a later issue builds: listed in --help, exit 2 when run."""

from __future__ import annotations

import click


def not_implemented(name: str, help_text: str, issue: int) -> click.Command:
    """A command that says it is not implemented yet and exits 2."""

    @click.command(
        name,
        help=f"{help_text} (not implemented yet: issue #{issue})",
        short_help=help_text,
        context_settings={"ignore_unknown_options": True},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:  # noqa: ARG001 - accepted and ignored
        click.echo(f"orchestrate {name}: not implemented yet (issue #{issue})", err=True)
        raise SystemExit(2)

    return command
