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


class ArrayTooLargeError(ArrayFileError):
    """An array, or the metadata describing it, larger than the caller's limit.

    Raised before any data are read when the file declares the size, and as soon as the
    count passes the limit when the size shows only while decompressing.

    Parameters
    ----------
    array : str
        The array's name (for metadata: what it describes, e.g. ``"the safetensors
        header"``, with ``subject`` set).
    limit : int
        The ``max_array_bytes`` that was passed.
    size : int, optional
        The bytes declared, when the file declares them; None when the count stopped at
        the limit.
    subject : str, optional
        How the message names the oversized thing; default ``"array '<name>'"``.

    Attributes
    ----------
    array, limit, size
        As given.
    """

    def __init__(
        self, array: str, *, limit: int, size: int | None = None, subject: str | None = None
    ) -> None:
        what = subject or f"array {array!r}"
        amount = f"{size} bytes, more than" if size is not None else "more than"
        super().__init__(
            "file", f"{what} takes {amount} the limit of {limit} bytes once decompressed"
        )
        self.array = array
        self.limit = limit
        self.size = size
