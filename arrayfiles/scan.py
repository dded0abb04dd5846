"""Scan an array's values a chunk at a time, for what the analysis refuses or warns about.

Every format ends up here: its readers feed the values, in storage order, to a
:class:`ValueScan`, either from a file stream (:func:`scan_data`, chunks of about
:data:`CHUNK_BYTES`) or block by block from an array in memory or mapped
(:func:`array_stats`). Memory stays bounded by the chunk, plus one flag per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from api_schemas.datasets import ArrayInfo
from arrayfiles.errors import ArrayFileError

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_ELEMENTS",
    "ArrayStats",
    "ScannedArray",
    "ValueScan",
    "array_stats",
    "readinto_exact",
    "scan_data",
    "truncated",
]

# Bytes read from a file at once, and elements scanned at once from an array.
CHUNK_BYTES = 8 << 20
CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ArrayStats:
    """Value statistics of an array that the analysis refuses or warns about.

    Attributes
    ----------
    n_nonfinite : int
        Number of NaN or infinite entries (0 for non-floating arrays).
    zero_rows : int
        Number of rows of a 2-D numeric array that are all zero once cast to float32,
        the precision the analysis computes in: the cosine kernel is undefined on them.
        0 for any other array.
    first_zero_row : int or None
        Index of the first such row; None when there is none.
    n_overflow : int
        Number of finite entries of a float64 array that overflow to +-inf when cast to
        float32 (magnitude above about 3.4e38); 0 for any other array.
    """

    n_nonfinite: int
    zero_rows: int
    first_zero_row: int | None = None
    n_overflow: int = 0


@dataclass(frozen=True)
class ScannedArray:
    """One array of a file, validated, with the statistics of its values.

    Attributes
    ----------
    info : ArrayInfo
        Name, shape and dtype, as :func:`~arrayfiles.inspect_arrays` lists them.
    stats : ArrayStats
        Computed while the file was scanned (``n_nonfinite`` and ``n_overflow`` are 0:
        arrays with such values are refused).
    """

    info: ArrayInfo
    stats: ArrayStats


def array_stats(array: np.ndarray, *, chunk_rows: int | None = None) -> ArrayStats:
    """Count non-finite entries, float32 overflows and all-zero rows, a block at a time.

    Parameters
    ----------
    array : numpy.ndarray
        Any array; a :class:`numpy.memmap` is read block by block, never copied whole.
    chunk_rows : int, optional
        Rows per block; by default as many as hold about a million entries.

    Returns
    -------
    ArrayStats
        ``n_nonfinite`` and ``n_overflow`` over all entries of a floating array,
        ``zero_rows`` and ``first_zero_row`` over the rows of a 2-D numeric array (a row
        is zero when every entry is 0 once cast to float32); 0 and None otherwise.

    Raises
    ------
    ArrayFileError
        With ``field="chunk_rows"`` when ``chunk_rows`` is below 1.

    Examples
    --------
    >>> array_stats(np.array([[0.0, 0.0], [1.0, np.nan]]))
    ArrayStats(n_nonfinite=1, zero_rows=1, first_zero_row=0, n_overflow=0)
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise ArrayFileError("chunk_rows", f"must be at least 1, got {chunk_rows}")
    if array.dtype.kind not in "biuf" or array.size == 0:
        return ArrayStats(n_nonfinite=0, zero_rows=0)
    values = ValueScan(dtype=array.dtype, shape=array.shape)
    if array.ndim == 0:
        values.feed(np.asarray(array).reshape(1))
        return values.stats()
    if chunk_rows is None:
        row_size = array.size // array.shape[0]
        chunk_rows = max(1, CHUNK_ELEMENTS // row_size)
    for start in range(0, array.shape[0], chunk_rows):
        # Row blocks come out C-ordered whatever the array's layout, matching the scan.
        values.feed(np.asarray(array[start : start + chunk_rows]).reshape(-1))
    return values.stats()


class ValueScan:
    """Statistics of one array's values, fed in storage order a block at a time.

    Zero rows are judged after the cast to float32 the analysis makes, so a float64 row
    of values too small for float32 counts as zero (and a value too large as overflow).

    Parameters
    ----------
    dtype : numpy.dtype
        The dtype of the values fed (after any widening, e.g. bfloat16 to float32).
    shape : sequence of int
        The array's shape; rows are tracked only for a 2-D numeric array.
    fortran_order : bool, default False
        Whether the values come column by column.
    """

    def __init__(
        self, *, dtype: np.dtype, shape: Sequence[int], fortran_order: bool = False
    ) -> None:
        self._floating = dtype.kind == "f"
        self._narrowed = self._floating and dtype.itemsize > 4
        self._shape = tuple(shape)
        self._fortran_order = fortran_order
        tracks_rows = len(self._shape) == 2 and dtype.kind in "biuf" and math.prod(shape) > 0
        # One flag per row: a few bytes beside the array itself, whatever its layout.
        self._row_nonzero = np.zeros(self._shape[0], dtype=bool) if tracks_rows else None
        self._size = math.prod(self._shape)
        self._fed = 0
        self.n_nonfinite = 0
        self.n_overflow = 0

    def feed(self, values: np.ndarray) -> None:
        """Take the next ``values.size`` elements, flat, in the array's storage order."""
        if self._fed + values.size > self._size:
            raise ArrayFileError(
                "file", f"the file is damaged: it holds more values than the shape {self._shape}"
            )
        if self._floating:
            finite = np.isfinite(values)
            self.n_nonfinite += values.size - int(np.count_nonzero(finite))
            if self._narrowed:
                with np.errstate(over="ignore", invalid="ignore"):
                    narrowed = values.astype(np.float32)
                self.n_overflow += int(np.count_nonzero(np.isinf(narrowed) & finite))
                values = narrowed
        if self._row_nonzero is not None:
            # NaN compares unequal to 0, so a row holding NaN is not a zero row.
            self._mark_rows(values != 0)
        self._fed += values.size

    def _mark_rows(self, nonzero: np.ndarray) -> None:
        assert self._row_nonzero is not None
        rows, columns = self._shape
        start, count = self._fed, nonzero.size
        if self._fortran_order:
            # Column-major: element e sits in row e % rows; walk the columns it spans.
            done = 0
            while done < count:
                row = (start + done) % rows
                take = min(count - done, rows - row)
                self._row_nonzero[row : row + take] |= nonzero[done : done + take]
                done += take
            return
        row, offset = divmod(start, columns)
        head = min(count, columns - offset) if offset else 0
        if head:
            self._row_nonzero[row] |= bool(nonzero[:head].any())
            row += 1
        whole = (count - head) // columns
        if whole:
            block = nonzero[head : head + whole * columns].reshape(whole, columns)
            self._row_nonzero[row : row + whole] |= block.any(axis=1)
            row += whole
        tail = nonzero[head + whole * columns :]
        if tail.size:
            self._row_nonzero[row] |= bool(tail.any())

    def stats(self) -> ArrayStats:
        """The statistics of the values fed so far."""
        zero_rows, first_zero_row = 0, None
        if self._row_nonzero is not None:
            zero = ~self._row_nonzero
            zero_rows = int(np.count_nonzero(zero))
            first_zero_row = int(np.argmax(zero)) if zero_rows else None
        return ArrayStats(
            n_nonfinite=self.n_nonfinite,
            zero_rows=zero_rows,
            first_zero_row=first_zero_row,
            n_overflow=self.n_overflow,
        )


def truncated(name: str, *, needed: int, present: int) -> ArrayFileError:
    """The error for an array whose data end before its declared size."""
    return ArrayFileError(
        "file",
        f"the file is truncated: array {name!r} needs {needed} bytes of data, "
        f"only {present} are there",
    )


def readinto_exact(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (in bounded reads); return the bytes read."""
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled : filled + CHUNK_BYTES])
        if not got:
            break
        filled += got
    return filled


def scan_data(
    stream: BinaryIO,
    *,
    name: str,
    dtype: np.dtype,
    count: int,
    values: ValueScan,
    widen: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Read ``count`` elements from ``stream`` in chunks, feeding them to ``values``.

    Parameters
    ----------
    stream : BinaryIO
        Positioned at the array's first data byte.
    name : str
        The array's name, for the error.
    dtype : numpy.dtype
        How the elements are stored.
    count : int
        How many elements to read.
    values : ValueScan
        What the elements are fed to. Non-numeric data (strings) are only read.
    widen : callable, optional
        Converts raw storage words to floats (bfloat16).

    Raises
    ------
    ArrayFileError
        The truncation error when the stream ends early.
    """
    chunk_elements = max(1, CHUNK_BYTES // dtype.itemsize)
    buffer = bytearray(min(count, chunk_elements) * dtype.itemsize)
    numeric = dtype.kind in "biuf"
    done = 0
    while done < count:
        n = min(count - done, chunk_elements)
        got = readinto_exact(stream, memoryview(buffer)[: n * dtype.itemsize])
        if got < n * dtype.itemsize:
            raise truncated(
                name, needed=count * dtype.itemsize, present=done * dtype.itemsize + got
            )
        if numeric:
            chunk = np.frombuffer(buffer, dtype=dtype, count=n)
            values.feed(widen(chunk) if widen else chunk)
        done += n
