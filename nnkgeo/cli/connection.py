"""How a command reaches the service: the ``--url``, ``--api-key`` and ``--json`` flags,
and the client they open (``NNKGEO_URL`` and ``NNKGEO_API_KEY`` when not given)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from nnkgeo.cli.outcome import Handler, guarded, print_client_warnings

if TYPE_CHECKING:
    # Imported when a command runs: httpx (and the rich and click it pulls in) would add
    # a sizeable part of ``nnkgeo --help``'s start-up.
    from nnkgeo.client import Client

__all__ = ["client_for", "connection_flags", "with_client"]


def connection_flags() -> argparse.ArgumentParser:
    """A parent parser with the flags of every command that may talk to the service."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help="service URL (default: $NNKGEO_URL)")
    connection.add_argument("--api-key", help="API key (default: $NNKGEO_API_KEY)")
    connection.add_argument(
        "--json", action="store_true", help="print the API's JSON on stdout, for scripts"
    )
    return connection


def client_for(args: argparse.Namespace) -> Client:
    """A client of the service that ``args`` name (use it as a context manager)."""
    from nnkgeo.client import Client

    return Client(args.url, args.api_key)


def with_client(command: Callable[[argparse.Namespace, Client], int]) -> Handler:
    """A :func:`~nnkgeo.cli.outcome.guarded` command that gets an open client."""

    def run(args: argparse.Namespace) -> int:
        print_client_warnings()
        with client_for(args) as client:
            return command(args, client)

    return guarded(run)
