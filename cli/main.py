"""Entry point of the ``lotavec`` command."""

from __future__ import annotations

import click

import lotavec

from .cmd_bridges import export, import_peft
from .cmd_demo import demo
from .cmd_extract import extract
from .cmd_hub import pull, push
from .cmd_merge import merge, overlap
from .cmd_ticket import inspect, verify
from .cmd_train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lotavec.__version__, prog_name="lotavec")
def cli() -> None:
    """lotavec: sparse task vectors — extract, train, merge and share lottery tickets.

    \b
    Exit status: 0 success, 1 a user-facing error (message, no traceback), 2 usage error.
    """


cli.add_command(demo)
cli.add_command(extract)
cli.add_command(inspect)
cli.add_command(verify)
cli.add_command(merge)
cli.add_command(overlap)
cli.add_command(train)
cli.add_command(push)
cli.add_command(pull)
cli.add_command(export)
cli.add_command(import_peft)


def main() -> None:
    """Console-script entry point."""
    cli()
