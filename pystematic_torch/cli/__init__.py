"""The ``pystematic-torch`` command: see what runs did, plot them, inspect checkpoints, sweep.

Each subcommand imports what it needs (torch, matplotlib, tensorboard) only when it runs, so
``pystematic-torch --help`` answers at once. Nothing in the library imports this package.
"""
import click

from ._inspect import inspect_command
from ._plot import plot_command
from ._runs import runs_command
from ._sweep import sweep_command

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pystematic-torch", prog_name="pystematic-torch")
def main() -> None:
    """See what pystematic-torch runs did, plot and compare them, inspect checkpoints, and
    run parameter sweeps."""


main.add_command(runs_command)
main.add_command(plot_command)
main.add_command(inspect_command)
main.add_command(sweep_command)
