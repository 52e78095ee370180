"""The ``pypods`` command (placeholder until the full CLI lands)."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pypods")
def cli() -> None:
    """Manage and call pods: folders with their own Python environment."""


def main() -> None:
    cli()
