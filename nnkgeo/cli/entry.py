"""The ``nnkgeo`` program: its parser, and the dispatch to each command's handler.

Local commands (:mod:`nnkgeo.cli.local`), the service commands
(:mod:`nnkgeo.cli.remote`) and the CI gate (:mod:`nnkgeo.cli.check`) each add their
subcommands; every subcommand sets ``handler``, which returns the exit status
(:mod:`nnkgeo.cli.outcome`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nnkgeo.cli.check import add_check_command
from nnkgeo.cli.compare import add_comparison_commands
from nnkgeo.cli.local import add_local_commands
from nnkgeo.cli.outcome import EXIT_USAGE, CommandRefused, print_error
from nnkgeo.cli.remote import add_remote_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``nnkgeo`` parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nnkgeo", description="Geometry of embeddings with NNK graphs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_local_commands(commands)
    add_comparison_commands(commands)
    add_remote_commands(commands)
    add_check_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nnkgeo`` with ``argv`` (default: the process's arguments).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name.

    Returns
    -------
    int
        The exit status: 0 done, 1 failed, 2 refused (see :mod:`nnkgeo.cli.outcome`).
        A command line argparse refuses exits with status 2 (``SystemExit``).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandRefused as error:
        print_error(str(error))
        return EXIT_USAGE
