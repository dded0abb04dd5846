"""The ``nnkgeo`` command line.

- :mod:`~nnkgeo.cli.entry`: the parser and the dispatch (what :func:`main` runs);
- :mod:`~nnkgeo.cli.local`: ``analyze`` and ``study``, the engine in-process;
- :mod:`~nnkgeo.cli.compare`: ``compare`` and ``drift``, the engine in-process too;
- :mod:`~nnkgeo.cli.remote`: the commands that talk to a service;
- :mod:`~nnkgeo.cli.check`: ``check``, a CI gate on a report;
- :mod:`~nnkgeo.cli.param_flags`: the analysis flags, generated from ``AnalysisParams``;
- :mod:`~nnkgeo.cli.outcome`, :mod:`~nnkgeo.cli.connection`: exit statuses and errors,
  and the service connection flags.

Importing this package imports none of them: :func:`main` loads the parser when called,
and ``nnkgeo.cli.remote`` loads no numeric library. The progress bar of every command is
:mod:`nnkgeo.client.progress`, which loads no HTTP client (``nnkgeo.client`` imports its
names on first use).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nnkgeo``: the ``[project.scripts]`` entry point and ``python -m nnkgeo``.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: the process's).

    Returns
    -------
    int
        The exit status.
    """
    from nnkgeo.cli.entry import main as run

    return run(argv)
