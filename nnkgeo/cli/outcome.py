"""How an ``nnkgeo`` command ends: its exit status, its one-line error, its JSON output.

Exit status:

- 0: done (``check``: every threshold holds).
- 1: asked right, but it failed: the job failed or was canceled, ``wait`` timed out,
  the service answered 5xx or could not be reached, or (``check``) a threshold fails.
- 2: cannot be done as asked: bad options, an unreadable local file, bad input to the
  engine, the engine not installed, a report without the metric asked for, or a 4xx
  answer (invalid input, unknown id, wrong API key).
- 130: interrupted (Ctrl-C).

Every error is one line on stderr: ``nnkgeo: error: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from nnkgeo.errors import (
    JobError,
    JobTimeoutError,
    NNKGeoClientError,
    NNKGeoHTTPError,
    ServiceUnreachableError,
    UsageError,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandRefused",
    "Handler",
    "guarded",
    "print_error",
    "print_json",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]
"""A command: the parsed arguments in, the exit status out."""


class CommandRefused(Exception):
    """A request the command cannot carry out as given: one line, exit status 2."""


def print_error(message: str) -> None:
    """Print ``message`` as the one line ``nnkgeo: error: ...`` on stderr."""
    print(f"nnkgeo: error: {' '.join(message.split())}", file=sys.stderr)


def print_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    """Print a model or plain JSON value on stdout, indented (``--json`` output)."""
    if isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2))
    else:
        print(json.dumps(value, indent=2, default=str))


def guarded(command: Handler) -> Handler:
    """Wrap a command that talks to the service or reads local files.

    Parameters
    ----------
    command : callable
        The command; it may raise the client's errors, :class:`CommandRefused`,
        ``OSError`` or ``KeyboardInterrupt``.

    Returns
    -------
    callable
        The same command, turning each of those errors into one line on stderr and its
        exit status.
    """

    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt as interrupt:
            print_error(str(interrupt) or "interrupted")
            return EXIT_INTERRUPTED
        except FileNotFoundError as error:
            print_error(f"no such file: {error.filename}")
            return EXIT_USAGE
        except (CommandRefused, UsageError, OSError) as error:
            print_error(str(error))
            return EXIT_USAGE
        except (JobError, JobTimeoutError, ServiceUnreachableError) as error:
            print_error(str(error))
            return EXIT_FAILED
        except NNKGeoHTTPError as error:
            print_error(str(error))
            return EXIT_USAGE if error.status < 500 else EXIT_FAILED
        except NNKGeoClientError as error:
            print_error(str(error))
            return EXIT_FAILED

    return handler
