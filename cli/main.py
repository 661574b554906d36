"""Entry point of the ``lotavec`` command."""

from __future__ import annotations

import click

import lotavec


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lotavec.__version__, prog_name="lotavec")
def cli() -> None:
    """lotavec: sparse task vectors — extract, train, merge and share lottery tickets."""


def main() -> None:
    """Console-script entry point."""
    cli()
