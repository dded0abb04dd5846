"""Where a job may read data from: the allow-listed roots, checked at submit and in the worker.

Free of torch: the API refuses a path before it queues a job, and the worker checks it
again before it reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from jobstate.errors import InvalidInputError


class PathNotAllowedError(InvalidInputError):
    """A dataset path lies outside every root the operator allow-listed.

    A subclass of :class:`~jobstate.errors.InvalidInputError` so that code
    catching bad input catches it too; the service maps it to 403 rather than 422,
    and its message never says whether the path exists.
    """


DEFAULT_INPUTS_ARRAY = "inputs"
DEFAULT_LABELS_ARRAY = "labels"


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_data_path(
    path: str | os.PathLike[str],
    *,
    roots: Sequence[str | os.PathLike[str]],
    field: str = "dataset.path",
) -> Path:
    """The real path of ``path``, if it lies inside one of the allow-listed ``roots``.

    Parameters
    ----------
    path : str or os.PathLike
        An absolute path, as the user gave it.
    roots : sequence of str or os.PathLike
        The directories the operator allow-lists (``NNKGEO_DATA_ROOTS``); resolved the
        same way, so a root may itself be a symbolic link.
    field : str
        Dotted name of the reference, for error messages.

    Returns
    -------
    pathlib.Path
        ``path`` with every symbolic link and ``..`` resolved.

    Raises
    ------
    PathNotAllowedError
        When no root is configured, or the resolved path lies outside every root (a
        ``..`` escape, or a symbolic link pointing out). Whether the path exists is
        checked only after this, so a refusal says nothing about files outside.
    InvalidInputError
        When the path is relative, or cannot be resolved (a NUL byte, a name longer than
        the file system allows, a loop of symbolic links).

    Examples
    --------
    >>> resolve_data_path("/data/../etc", roots=["/data"])  # doctest: +SKIP
    Traceback (most recent call last):
    PathNotAllowedError: dataset.path: ...
    """
    if not os.path.isabs(path):
        raise InvalidInputError(field, f"the path must be absolute, got {os.fspath(path)!r}")
    if not roots:
        raise PathNotAllowedError(
            field, "no data directory is allow-listed on this server (NNKGEO_DATA_ROOTS)"
        )
    # strict=False: a path that does not exist still resolves (its existing prefix's
    # links followed), so refusal does not depend on existence.
    try:
        resolved = Path(path).resolve(strict=False)
    except (OSError, ValueError, RuntimeError):
        # A NUL byte, a name too long, a loop of links: said without the system's words,
        # which could tell what lies outside the roots.
        raise InvalidInputError(field, "not a valid path on this server") from None
    if not any(_within(resolved, Path(root).resolve(strict=False)) for root in roots):
        raise PathNotAllowedError(
            field, f"{os.fspath(path)!r} is outside the allow-listed data directories"
        )
    return resolved
