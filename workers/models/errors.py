"""Errors of model and dataset references, in the core's one hierarchy."""

from __future__ import annotations

from workers.geometry.errors import InvalidInputError


class PathNotAllowedError(InvalidInputError):
    """A dataset path lies outside every root the operator allow-listed.

    A subclass of :class:`~workers.geometry.errors.InvalidInputError` so that code
    catching bad input catches it too; the service maps it to 403 rather than 422,
    and its message never says whether the path exists.
    """
