"""How an ``nnkgeo`` command ends: its exit status, its one-line error, its JSON output.

Exit status:

- 0: done (``check``: every threshold holds).
- 1: asked right, but it failed: the job failed or was canceled, ``wait`` timed out,
  the service answered 5xx or could not be reached, or (``check``) a threshold fails.
- 2: cannot be done as asked: bad options, an unreadable local file, bad input to the
  engine, the engine not installed, a report without the metric asked for, or a 4xx
  answer (invalid input, unknown id, wrong API key).
- 130: interrupted (Ctrl-C).

Every error is one line on stderr: ``nnkgeo: error: ...``, its advice in the command's
terms (``--url``, not the Python client's ``url=``). The client's warnings (a long retry,
a job that no worker takes) are lines ``nnkgeo: ...`` on stderr too.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    "EXIT_CODES_EPILOG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandRefused",
    "Handler",
    "exit_status",
    "guarded",
    "print_client_warnings",
    "print_error",
    "print_json",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]
"""A command: the parsed arguments in, the exit status out."""

EXIT_CODES_EPILOG = (
    "exit status: 0 done; 1 the job failed or was canceled, the wait timed out, the "
    "service could not be reached or answered 5xx; 2 a usage or input error, or a 4xx "
    "answer (invalid input, unknown id, wrong API key)"
)
"""The ``--help`` epilog of the commands that talk to the service."""


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


class _StderrHandler(logging.Handler):
    """Each record as ``nnkgeo: MESSAGE`` on the ``sys.stderr`` of the moment.

    Looked up when a record is emitted, not when the handler is made: a test's captured
    stderr, or rich's redirect while a live bar is drawn, then receive it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"nnkgeo: {' '.join(record.getMessage().split())}", file=sys.stderr)
        except Exception:  # a logging handler never raises (logging.Handler.handleError)
            self.handleError(record)


_CLIENT_WARNINGS = _StderrHandler(logging.WARNING)


def print_client_warnings() -> None:
    """Print the client's warnings (logger ``nnkgeo.client``) as ``nnkgeo: ...`` lines.

    Idempotent. With this handler in place, Python's last-resort handler (which prints
    the bare message of a library's warning when nothing is configured) stays silent.
    """
    client_logger = logging.getLogger("nnkgeo.client")
    if _CLIENT_WARNINGS not in client_logger.handlers:
        client_logger.addHandler(_CLIENT_WARNINGS)


def exit_status(error: BaseException) -> int:
    """The exit status of a command that raised ``error`` (see the module's table).

    The client's errors are told apart first: its timeout and connection errors are
    ``OSError`` subclasses too (``TimeoutError``, ``ConnectionError``), yet mean 1 (it
    failed), not 2 like a local file that cannot be read.
    """
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, JobError | JobTimeoutError | ServiceUnreachableError):
        return EXIT_FAILED
    if isinstance(error, NNKGeoHTTPError):
        return EXIT_USAGE if error.status < 500 else EXIT_FAILED
    if isinstance(error, CommandRefused | UsageError | OSError):
        return EXIT_USAGE
    return EXIT_FAILED


def _message(error: BaseException) -> str:
    if isinstance(error, NNKGeoClientError):
        return error.message_for("cli")
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"no such file: {error.filename}"
    return str(error)


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
        except (CommandRefused, NNKGeoClientError, OSError) as error:
            print_error(_message(error))
            return exit_status(error)

    return handler
