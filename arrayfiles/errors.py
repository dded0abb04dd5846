"""The errors of array file reading: a file that cannot be read as the arrays it claims.

Its own hierarchy, so that the package depends on nothing of nnkgeo's: each edge maps it
to its own answer (a 422 problem in the API, a failed job in the worker, exit status 2 in
the CLI). ``field`` names the input (``"file"``, or the array), ``message`` says what is
wrong and how to fix it, in one sentence.
"""

from __future__ import annotations


class ArrayFileError(ValueError):
    """The file, or one array in it, cannot be read as given.

    Parameters
    ----------
    field : str
        What is wrong: ``"file"``, ``"format"``, ``"array"``, or an array's name.
    message : str
        What is wrong and how to fix it, in one sentence.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
