"""The one exception hierarchy of the numeric core.

The service maps these to RFC 9457 problems and the CLI to one-line messages with
exit status 2; the core itself never knows about HTTP or terminals.
"""

from __future__ import annotations


class NNKGeoError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidInputError(NNKGeoError, ValueError):
    """The input arrays or parameters cannot be analysed as given.

    Parameters
    ----------
    field : str
        Dotted name of the offending input (``"embeddings"``, ``"labels"``, ``"params.k"``).
    message : str
        What is wrong and how to fix it, in one sentence.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class AnalysisCanceled(NNKGeoError):
    """Raised from a progress callback to stop an analysis cooperatively."""
