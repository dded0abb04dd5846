"""Read the array files users hand over: ``.npy``, ``.npz``, ``.safetensors``, parquet.

This is the one module that opens user array files: the service checks an upload with
:func:`scan_arrays` (or :func:`inspect_arrays`), workers read blobs back with
:func:`load_array`, and the local CLI does both on files named on its command line.
Files may be several GB, so nothing here reads a big array whole into memory unless
asked to return it: validation streams the data in chunks of about 8 MiB, and loading
memory-maps wherever the format allows.

Every reader takes ``max_array_bytes``: the most bytes any one array may take once
decompressed (its shape times its item size, or the bytes inflated for it). Sizes a
file declares (npy and safetensors headers, zip directories, parquet footers and page
headers) are checked against it before any data are read, and compressed data are
counted while they inflate, since a declared size can lie; past the limit, the reader
stops and raises :class:`ArrayTooLargeError`. Without a limit (``None``) nothing is
bounded: only pass ``None`` for files you trust.

Every problem with a file's content is raised as
:class:`~arrayfiles.errors.ArrayFileError` with ``field="file"`` (or
``"format"`` / ``"array"`` for a wrong format or array name) and a message that names
the array and what to do; :class:`ArrayTooLargeError` is one of them. Operating-system
errors (a missing file, no permission) propagate unchanged: they are not the user's data.

Arrays a file holds, by format:

- ``npy``: one array, named ``"array"``.
- ``npz``: one array per ``.npy`` member, named after the member without ``.npy``.
- ``safetensors``: one array per tensor, named after the tensor.
- ``parquet``: one array per column, named after the column. A column of numeric lists
  of one length (a fixed-size list, or a list whose every row has the same length) is an
  ``N x d`` array; a numeric, boolean or string column is a 1-D array of length ``N``.
  When the table has two or more floating-point columns, it also holds ``"__columns__"``:
  those columns side by side, in table order, as an ``N x m`` array (one column per
  dimension). Integer, boolean and string columns stay out of it, since in such tables
  they hold labels and ids rather than coordinates.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors import SafetensorError, safe_open

from api_schemas.datasets import ArrayInfo
from arrayfiles.errors import ArrayFileError
from arrayfiles.parquet_layout import FileLayout, LayoutError, read_footer, walk_column_chunk

__all__ = [
    "FORMATS",
    "ArrayFileError",
    "ArrayStats",
    "ArrayTooLargeError",
    "ScannedArray",
    "array_stats",
    "detect_format",
    "inspect_arrays",
    "load_array",
    "scan_arrays",
]

FORMATS: tuple[str, ...] = ("npy", "npz", "safetensors", "parquet")

_SUFFIX_FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FORMAT_HINT = "pass format=npy|npz|safetensors|parquet"
_SUPPORTED_DTYPES = (
    "bool, signed and unsigned integers, float16/32/64, bfloat16 (safetensors only) "
    "and unicode strings"
)
_CHUNK_BYTES = 8 << 20
_CHUNK_ELEMENTS = 1 << 20
_MAX_BATCH_ROWS = 1 << 20
_NPY_ARRAY_NAME = "array"
_COLUMNS_ARRAY_NAME = "__columns__"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
# numpy refuses npy headers of more than 10,000 characters; at up to 4 UTF-8 bytes each,
# plus magic and length, a member's header takes less than this.
_MAX_NPY_HEADER_BYTES = 1 << 16
# Metadata parsed whole into memory (a safetensors JSON header, a parquet footer): real
# files need well under 1 MiB even for thousands of tensors or columns, and parsing
# multiplies the bytes several times over in Python objects.
_MAX_METADATA_BYTES = 16 << 20
_PARQUET_MAGIC = b"PAR1"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# numpy's savez writes stored members, savez_compressed deflated ones; zipfile inflates
# bzip2 and lzma members without bounding a read's output, so those are refused.
_ZIP_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

# safetensors dtype code -> how the bytes are stored; BF16 is kept as raw 16-bit words
# because numpy has no bfloat16 without ml_dtypes, and is widened to float32 on reading.
_SAFETENSORS_STORAGE = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}


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
        Name, shape and dtype, as :func:`inspect_arrays` lists them.
    stats : ArrayStats
        Computed while the file was scanned (``n_nonfinite`` and ``n_overflow`` are 0:
        arrays with such values are refused).
    """

    info: ArrayInfo
    stats: ArrayStats


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell a file's format from its suffix.

    Parameters
    ----------
    path : str or os.PathLike
        File name; only its suffix is looked at (case-insensitively).

    Returns
    -------
    str
        One of :data:`FORMATS`: ``.npy`` -> ``"npy"``, ``.npz`` -> ``"npz"``,
        ``.safetensors`` -> ``"safetensors"``, ``.parquet`` or ``.pq`` -> ``"parquet"``.

    Raises
    ------
    ArrayFileError
        With ``field="format"`` when the suffix is none of these.

    Examples
    --------
    >>> detect_format("layer4.PQ")
    'parquet'
    """
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIX_FORMATS[suffix]
    except KeyError:
        raise ArrayFileError(
            "format",
            f"cannot tell the format of {Path(path).name!r} from its suffix; {_FORMAT_HINT}",
        ) from None


def scan_arrays(
    path: str | os.PathLike[str], *, fmt: str, max_array_bytes: int | None = None
) -> list[ScannedArray]:
    """Validate every byte of a file, and list its arrays with their value statistics.

    The whole file is read, in chunks of about 8 MiB, so memory stays bounded for a
    multi-GB file: headers are parsed, data sizes checked against them and against
    ``max_array_bytes``, compressed members decompressed (counting what comes out) and
    their checksums verified, and the values scanned for what the analysis refuses:
    non-finite values, float64 values beyond float32's range, all-zero rows.

    Parameters
    ----------
    path : str or os.PathLike
        The file to inspect.
    fmt : {"npy", "npz", "safetensors", "parquet"}
        Its format (see :func:`detect_format`).
    max_array_bytes : int, optional
        The most bytes any one array may take decompressed; None for no limit (trusted
        files only).

    Returns
    -------
    list of ScannedArray
        One entry per array, in file order (for parquet: column order, then
        ``"__columns__"``), with the shape and dtype :func:`load_array` returns, except
        that bfloat16 tensors are reported as ``"bfloat16"`` and loaded as float32.
        Numeric dtypes are numpy names (``"float32"``, ``"int64"``, ``"bool"``), strings
        ``"<U{max length}"``.

    Raises
    ------
    ArrayTooLargeError
        When an array (or the file's metadata) passes ``max_array_bytes``.
    ArrayFileError
        ``field="format"`` for an unknown ``fmt``; ``field="file"`` for a file that does
        not parse or is truncated, a header with a negative dimension, pickled or object
        arrays, unsupported dtypes (complex, structured, datetime, byte strings, ...),
        ragged or nested parquet lists, missing (null) parquet values, an array with no
        elements, a floating array holding NaN or Inf or values that overflow float32,
        or a file holding no array at all.
    OSError
        When the file cannot be opened.
    """
    _check_format(fmt)
    _check_limit(max_array_bytes)
    _check_readable(path)
    arrays = _SCANNERS[fmt](path, limit=max_array_bytes)
    if not arrays:
        raise ArrayFileError("file", f"the {fmt} file holds no arrays")
    return arrays


def inspect_arrays(
    path: str | os.PathLike[str], *, fmt: str, max_array_bytes: int | None = None
) -> list[ArrayInfo]:
    """List the arrays a file holds, after validating every byte of it.

    The same checks as :func:`scan_arrays`, which also returns the statistics.

    Parameters
    ----------
    path : str or os.PathLike
        The file to inspect.
    fmt : {"npy", "npz", "safetensors", "parquet"}
        Its format (see :func:`detect_format`).
    max_array_bytes : int, optional
        The most bytes any one array may take decompressed; None for no limit.

    Returns
    -------
    list of ArrayInfo
        One entry per array, as in :func:`scan_arrays`.

    Raises
    ------
    ArrayTooLargeError, ArrayFileError, OSError
        As :func:`scan_arrays`.

    Examples
    --------
    >>> inspect_arrays("emb.npy", fmt="npy", max_array_bytes=2**30)  # doctest: +SKIP
    [ArrayInfo(name='array', shape=[50000, 64], dtype='float32')]
    """
    return [scanned.info for scanned in scan_arrays(path, fmt=fmt, max_array_bytes=max_array_bytes)]


def load_array(
    path: str | os.PathLike[str],
    *,
    fmt: str,
    name: str | None = None,
    mmap: bool = True,
    max_array_bytes: int | None = None,
) -> np.ndarray:
    """Load one array of a file, memory-mapped where the format allows.

    The structure is checked as in :func:`scan_arrays` (headers, dtypes, sizes, the
    limit, pickles, ragged lists, missing values), but the values are not scanned for
    NaN or Inf: use :func:`array_stats` on the result, or scan the file first.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    fmt : {"npy", "npz", "safetensors", "parquet"}
        Its format.
    name : str, optional
        The array to load (names as listed by :func:`inspect_arrays`). May be left out
        only when the file holds exactly one array.
    mmap : bool, default True
        Return a read-only :class:`numpy.memmap` when the data lie in the file as they
        would in memory: an ``.npy`` file, an uncompressed ``.npz`` member, a
        safetensors tensor other than bfloat16. Otherwise, and when False, the array is
        read into memory.
    max_array_bytes : int, optional
        The most bytes the array may take decompressed, checked before it is read (and,
        for compressed data, while it inflates); None for no limit.

    Returns
    -------
    numpy.ndarray
        The array, in the file's dtype, except bfloat16 which is widened to float32.
        Parquet arrays are always read into memory, row group by row group, without
        an intermediate table.

    Raises
    ------
    ArrayTooLargeError
        When the array passes ``max_array_bytes``.
    ArrayFileError
        ``field="array"`` when ``name`` is missing and the file holds several arrays,
        or names none of them; otherwise as :func:`scan_arrays`.
    OSError
        When the file cannot be opened.

    Notes
    -----
    A memory map of an ``.npz`` member skips the zip checksum; :func:`scan_arrays`
    verifies it (the service does so at upload). Such a map starts wherever the member's
    data lie in the archive, so it is often not aligned to its dtype
    (``flags.aligned`` is False): numpy handles that, but code that needs aligned
    memory should copy it, e.g. ``np.require(array, requirements="A")``.

    Reading a memory map touches its pages, and the kernel counts mapped file pages in
    the process's resident set until they are unmapped or reclaimed; they are page
    cache, not allocated memory.

    Examples
    --------
    >>> embeddings = load_array("layers.npz", fmt="npz", name="layer4")  # doctest: +SKIP
    >>> embeddings.shape  # doctest: +SKIP
    (50000, 512)
    """
    _check_format(fmt)
    _check_limit(max_array_bytes)
    _check_readable(path)
    return _LOADERS[fmt](path, name=name, mmap=mmap, limit=max_array_bytes)


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
    values = _ValueScan(dtype=array.dtype, shape=array.shape)
    if array.ndim == 0:
        values.feed(np.asarray(array).reshape(1))
        return values.stats()
    if chunk_rows is None:
        row_size = array.size // array.shape[0]
        chunk_rows = max(1, _CHUNK_ELEMENTS // row_size)
    for start in range(0, array.shape[0], chunk_rows):
        # Row blocks come out C-ordered whatever the array's layout, matching the scan.
        values.feed(np.asarray(array[start : start + chunk_rows]).reshape(-1))
    return values.stats()


# --------------------------------------------------------------------------- shared


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ArrayFileError("format", f"unknown format {fmt!r}; {_FORMAT_HINT}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ArrayFileError("max_array_bytes", f"must be at least 1, got {limit}")


def _check_readable(path: str | os.PathLike[str]) -> None:
    # Open once up front so a missing or unreadable file surfaces as the OSError it
    # is, before any parser could word it as a malformed file.
    with open(path, "rb"):
        pass


def _check_size(name: str, nbytes: int, limit: int | None) -> None:
    if limit is not None and nbytes > limit:
        raise ArrayTooLargeError(name, limit=limit, size=nbytes)


@contextmanager
def _parse_errors(what: str) -> Iterator[None]:
    """Turn the errors parsers raise on malformed bytes into ``ArrayFileError``."""
    try:
        yield
    except ArrayFileError:
        raise
    except OSError as error:
        # pyarrow reports malformed data as OSError without errno; a real I/O failure
        # carries one and is not the user's fault, except EINVAL: on a regular file only
        # a seek to an offset the file itself gave (a negative one) fails with it.
        if error.errno is not None and error.errno != errno.EINVAL:
            raise
        raise ArrayFileError("file", f"not a valid {what} file: {error}") from error
    except (
        ValueError,
        SyntaxError,
        EOFError,
        OverflowError,
        struct.error,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        SafetensorError,
        pa.ArrowException,
    ) as error:
        raise ArrayFileError("file", f"not a valid {what} file: {error}") from error


def _resolve_name(requested: str | None, available: Sequence[str]) -> str:
    listed = ", ".join(repr(name) for name in available)
    if requested is None:
        if len(available) == 1:
            return available[0]
        if not available:
            raise ArrayFileError("file", "the file holds no arrays")
        raise ArrayFileError("array", f"file holds arrays {listed}; name one of them")
    if requested not in available:
        raise ArrayFileError("array", f"no array {requested!r}; the file holds {listed}")
    return requested


def _check_numpy_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise ArrayFileError(
            "file",
            f"array {name!r} holds Python objects: pickled or object arrays are refused; "
            "save with allow_pickle=False",
        )
    if dtype.kind in "biuU" or (dtype.kind == "f" and dtype.itemsize <= 8):
        return
    kind = {
        "c": "complex",
        "V": "structured",
        "M": "datetime",
        "m": "timedelta",
        "S": "byte-string",
        "f": "extended-precision",
    }.get(dtype.kind, "unsupported")
    hint = "; decode it to str" if dtype.kind == "S" else ""
    raise ArrayFileError(
        "file",
        f"array {name!r} has {kind} dtype {dtype}, which is not supported{hint}; "
        f"supported dtypes are {_SUPPORTED_DTYPES}",
    )


def _dtype_label(dtype: np.dtype) -> str:
    return dtype.str if dtype.kind == "U" else dtype.name


def _check_shape(name: str, shape: Sequence[int]) -> None:
    # numpy's header parser accepts any integers; a negative one would give a negative
    # element count, which later arithmetic (sizes, offsets) must never see.
    if any(dim < 0 for dim in shape):
        raise ArrayFileError(
            "file",
            f"array {name!r} has a negative dimension in its header (shape {tuple(shape)}); "
            "the file is damaged or forged: save the array again with numpy.save",
        )


def _check_not_empty(name: str, shape: Sequence[int]) -> None:
    if math.prod(shape) == 0:
        raise ArrayFileError("file", f"array {name!r} is empty (shape {tuple(shape)})")


def _check_values(name: str, stats: ArrayStats) -> None:
    if stats.n_nonfinite:
        raise ArrayFileError(
            "file",
            f"array {name!r} holds {stats.n_nonfinite} non-finite values (NaN/Inf); "
            "embeddings must be finite, so replace or drop those rows",
        )
    if stats.n_overflow:
        raise ArrayFileError(
            "file",
            f"array {name!r} holds {stats.n_overflow} values beyond float32's range "
            f"(magnitude above {_FLOAT32_MAX:.3g}), which become +-inf in float32, the "
            "precision the analysis computes in; rescale the array (e.g. divide it by its "
            "largest absolute value) and upload it again",
        )


def _bfloat16_to_float32(words: np.ndarray) -> np.ndarray:
    # bfloat16 is the upper half of a float32, so widening is exact.
    return (words.astype(np.uint32) << 16).view(np.float32)


def _truncated(name: str, *, needed: int, present: int) -> ArrayFileError:
    return ArrayFileError(
        "file",
        f"the file is truncated: array {name!r} needs {needed} bytes of data, "
        f"only {present} are there",
    )


class _ValueScan:
    """Statistics of one array's values, fed in storage order a block at a time.

    Zero rows are judged after the cast to float32 the analysis makes, so a float64 row
    of values too small for float32 counts as zero (and a value too large as overflow).
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


def _readinto_exact(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (in bounded reads); return the bytes read."""
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled : filled + _CHUNK_BYTES])
        if not got:
            break
        filled += got
    return filled


def _scan_data(
    stream: BinaryIO,
    *,
    name: str,
    dtype: np.dtype,
    count: int,
    values: _ValueScan,
    widen: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Read ``count`` elements from ``stream`` in chunks, feeding them to ``values``.

    Raises the truncation error when the stream ends early. ``widen`` converts raw
    storage words to floats (bfloat16). Non-numeric data (strings) are only read.
    """
    chunk_elements = max(1, _CHUNK_BYTES // dtype.itemsize)
    buffer = bytearray(min(count, chunk_elements) * dtype.itemsize)
    numeric = dtype.kind in "biuf"
    done = 0
    while done < count:
        n = min(count - done, chunk_elements)
        got = _readinto_exact(stream, memoryview(buffer)[: n * dtype.itemsize])
        if got < n * dtype.itemsize:
            raise _truncated(
                name, needed=count * dtype.itemsize, present=done * dtype.itemsize + got
            )
        if numeric:
            chunk = np.frombuffer(buffer, dtype=dtype, count=n)
            values.feed(widen(chunk) if widen else chunk)
        done += n


class _CountingReader:
    """A read-only stream that refuses to yield more than ``allowance`` bytes in all.

    Wraps a zip member: its directory entry declares a size, but what comes out is only
    known by inflating, so the count is kept here rather than trusted.
    """

    def __init__(self, stream: BinaryIO, *, allowance: int | None, name: str, limit: int | None):
        self._stream = stream
        self._allowance = allowance
        self._name = name
        self._limit = limit
        self.count = 0

    def _counted(self, got: int) -> int:
        self.count += got
        if self._allowance is not None and self.count > self._allowance:
            assert self._limit is not None
            raise ArrayTooLargeError(self._name, limit=self._limit)
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK_BYTES
        data = self._stream.read(min(size, _CHUNK_BYTES))
        self._counted(len(data))
        return data

    def readinto(self, view: memoryview) -> int:
        return self._counted(self._stream.readinto(view[:_CHUNK_BYTES]))

    def tell(self) -> int:
        return self.count


def _drain(stream: BinaryIO) -> None:
    # zipfile verifies a member's CRC only once its end has been read.
    while stream.read(_CHUNK_BYTES):
        pass


# --------------------------------------------------------------------------- npy, npz


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def _read_npy_header(stream: BinaryIO, *, name: str, what: str) -> _NpyHeader:
    """Parse an npy header, leaving ``stream`` at the first data byte."""
    with _parse_errors(what):
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(stream)
            else:
                header = None
        except (ArrayFileError, OSError):
            raise
        except Exception as error:
            # The header is at most 10,000 characters of a Python literal, parsed by
            # numpy with ast, tokenize (for Python 2 headers) and the dtype machinery:
            # malformed ones fail in each with its own exception (TypeError, KeyError,
            # tokenize.TokenError, ...), all of them the file's fault, none of them I/O.
            raise ValueError(f"malformed array header ({type(error).__name__}: {error})") from error
    if header is None:
        # numpy writes version 3.0 only for structured dtypes with non-Latin-1 field
        # names, which are refused anyway.
        raise ArrayFileError(
            "file",
            f"array {name!r} uses npy format version {version[0]}.{version[1]}; "
            "save it as a plain (non-structured) array with numpy.save",
        )
    shape, fortran_order, dtype = header
    _check_shape(name, shape)
    return _NpyHeader(shape=tuple(shape), fortran_order=fortran_order, dtype=dtype)


def _check_npy_header(name: str, header: _NpyHeader, *, limit: int | None) -> None:
    _check_numpy_dtype(name, header.dtype)
    _check_not_empty(name, header.shape)
    _check_size(name, header.nbytes, limit)


def _scan_npy_values(stream: BinaryIO, header: _NpyHeader, *, name: str) -> ScannedArray:
    values = _ValueScan(dtype=header.dtype, shape=header.shape, fortran_order=header.fortran_order)
    _scan_data(stream, name=name, dtype=header.dtype, count=header.count, values=values)
    stats = values.stats()
    _check_values(name, stats)
    info = ArrayInfo(name=name, shape=list(header.shape), dtype=_dtype_label(header.dtype))
    return ScannedArray(info=info, stats=stats)


def _array_from_stream(stream: BinaryIO, header: _NpyHeader, *, name: str) -> np.ndarray:
    flat = np.empty(header.count, dtype=header.dtype)
    got = _readinto_exact(stream, memoryview(flat.view(np.uint8)))
    if got < header.nbytes:
        raise _truncated(name, needed=header.nbytes, present=got)
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).T
    return flat.reshape(header.shape)


def _scan_npy(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    name = _NPY_ARRAY_NAME
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = _read_npy_header(stream, name=name, what=".npy")
        _check_npy_header(name, header, limit=limit)
        present = file_size - stream.tell()
        if present < header.nbytes:
            raise _truncated(name, needed=header.nbytes, present=present)
        # Read the data rather than scan a memory map: mapped pages count towards the
        # process's resident memory until unmapped, so a mapped multi-GB scan would
        # look (and be accounted) like loading the file whole.
        return [_scan_npy_values(stream, header, name=name)]


def _load_npy(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    name = _resolve_name(name, [_NPY_ARRAY_NAME])
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = _read_npy_header(stream, name=name, what=".npy")
        data_offset = stream.tell()
    _check_numpy_dtype(name, header.dtype)
    _check_size(name, header.nbytes, limit)
    if file_size - data_offset < header.nbytes:
        raise _truncated(name, needed=header.nbytes, present=file_size - data_offset)
    with _parse_errors(".npy"):
        # An empty array cannot be memory-mapped (mmap refuses zero length).
        if mmap and header.count:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)


@contextmanager
def _open_npz(path: str | os.PathLike[str]) -> Iterator[zipfile.ZipFile]:
    with _parse_errors(".npz"):
        archive = zipfile.ZipFile(path)
    with archive:
        yield archive


def _npz_members(archive: zipfile.ZipFile, *, file_size: int) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename:
            # (ZipInfo.is_dir indexes the name's last character.)
            raise ArrayFileError("file", "not a valid .npz file: a member has no name")
        if info.is_dir():
            continue
        # zipfile seeks wherever the directory says (even before the file's start, where
        # the seek fails with an errno like real I/O trouble): keep it to the file.
        if not 0 <= info.header_offset < file_size or info.compress_size < 0:
            raise ArrayFileError(
                "file", f"not a valid .npz file: member {info.filename!r} lies outside the file"
            )
        if not info.filename.endswith(".npy"):
            raise ArrayFileError(
                "file",
                f"member {info.filename!r} is not an .npy array; save the file with "
                "numpy.savez or numpy.savez_compressed",
            )
        if info.flag_bits & 0x1:
            raise ArrayFileError("file", f"member {info.filename!r} is encrypted")
        if info.compress_type not in _ZIP_COMPRESSIONS:
            raise ArrayFileError(
                "file",
                f"member {info.filename!r} is compressed with zip method {info.compress_type}; "
                "only stored and deflated members are read: save the file with numpy.savez "
                "or numpy.savez_compressed",
            )
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise ArrayFileError("file", f"array {name!r} appears twice in the archive")
        members[name] = info
    _check_members_apart(list(members.values()))
    return members


def _check_members_apart(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose compressed data overlap: one stream counted many times over.

    A member's data start after its local header, so ``header_offset + compress_size``
    is a lower bound of where they end; the next member must not start before it.
    """
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for this, following in itertools.pairwise(ordered):
        if following.header_offset < this.header_offset + max(this.compress_size, 1):
            raise ArrayFileError(
                "file",
                f"not a valid .npz file: members {this.filename!r} and {following.filename!r} "
                "overlap in the archive",
            )


def _member_allowance(name: str, info: zipfile.ZipInfo, limit: int | None) -> int | None:
    """The most bytes a member may inflate to: the npy header and an array at the limit.

    The declared size is checked first, so an honest directory is refused before a byte
    is inflated; the returned allowance bounds a lying one.
    """
    if limit is None:
        return None
    allowance = limit + _MAX_NPY_HEADER_BYTES
    if info.file_size > allowance:
        raise ArrayTooLargeError(name, limit=limit, size=info.file_size)
    return allowance


@contextmanager
def _open_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, name: str, limit: int | None
) -> Iterator[_CountingReader]:
    allowance = _member_allowance(name, info, limit)
    with _parse_errors(".npz"), archive.open(info) as member:
        yield _CountingReader(member, allowance=allowance, name=name, limit=limit)


def _scan_npz(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    arrays = []
    with _open_npz(path) as archive:
        for name, info in _npz_members(archive, file_size=os.path.getsize(path)).items():
            with _open_member(archive, info, name=name, limit=limit) as member:
                header = _read_npy_header(member, name=name, what=".npz")
                _check_npy_header(name, header, limit=limit)
                scanned = _scan_npy_values(member, header, name=name)
                _drain(member)
            arrays.append(scanned)
    return arrays


def _load_npz(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    with _open_npz(path) as archive:
        members = _npz_members(archive, file_size=os.path.getsize(path))
        name = _resolve_name(name, list(members))
        info = members[name]
        if mmap and info.compress_type == zipfile.ZIP_STORED:
            mapped = _map_stored_member(path, info, name=name, limit=limit)
            if mapped is not None:
                return mapped
        with _open_member(archive, info, name=name, limit=limit) as member:
            header = _read_npy_header(member, name=name, what=".npz")
            _check_numpy_dtype(name, header.dtype)
            _check_size(name, header.nbytes, limit)
            # The zip directory bounds the data, so a forged header cannot make us
            # allocate more than the member holds.
            present = info.file_size - member.tell()
            if present < header.nbytes:
                raise _truncated(name, needed=header.nbytes, present=max(present, 0))
            array = _array_from_stream(member, header, name=name)
            _drain(member)
        return array


def _map_stored_member(
    path: str | os.PathLike[str], info: zipfile.ZipInfo, *, name: str, limit: int | None
) -> np.memmap | None:
    """Memory-map an uncompressed npz member in place; None when it cannot be mapped.

    numpy's own ``np.load(mmap_mode=...)`` ignores the mode for npz files, but a stored
    member is a plain npy file at a fixed offset of the archive. The central directory
    does not record where the member's data start: the local header's name and extra
    field lengths (which may differ from the central directory's) say.
    """
    with open(path, "rb") as stream:
        stream.seek(info.header_offset)
        local_header = stream.read(_ZIP_LOCAL_HEADER.size)
        if len(local_header) < _ZIP_LOCAL_HEADER.size:
            raise ArrayFileError("file", f"not a valid .npz file: member {name!r} is cut off")
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(local_header)
        if signature != _ZIP_LOCAL_SIGNATURE:
            raise ArrayFileError(
                "file", f"not a valid .npz file: bad local header for member {name!r}"
            )
        member_start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        stream.seek(member_start)
        header = _read_npy_header(stream, name=name, what=".npz")
        data_offset = stream.tell()
    _check_numpy_dtype(name, header.dtype)
    _check_size(name, header.nbytes, limit)
    if not header.count:
        return None
    present = info.file_size - (data_offset - member_start)
    if present < header.nbytes or data_offset + header.nbytes > os.path.getsize(path):
        raise _truncated(name, needed=header.nbytes, present=max(present, 0))
    with _parse_errors(".npz"):
        return np.memmap(
            path,
            dtype=header.dtype,
            mode="r",
            offset=data_offset,
            shape=header.shape,
            order="F" if header.fortran_order else "C",
        )


# --------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class _Tensor:
    name: str
    code: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def storage(self) -> np.dtype:
        try:
            return _SAFETENSORS_STORAGE[self.code]
        except KeyError:
            kind = "complex " if self.code.startswith("C") else ""
            raise ArrayFileError(
                "file",
                f"array {self.name!r} has {kind}dtype {self.code}, which is not supported; "
                f"supported dtypes are {_SUPPORTED_DTYPES}",
            ) from None

    @property
    def dtype_label(self) -> str:
        return "bfloat16" if self.code == "BF16" else self.storage.name

    @property
    def widen(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return _bfloat16_to_float32 if self.code == "BF16" else None

    @property
    def loaded_dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.widen else self.storage

    @property
    def loaded_nbytes(self) -> int:
        """Bytes of the array :func:`load_array` returns (bfloat16 doubles as float32)."""
        return math.prod(self.shape) * self.loaded_dtype.itemsize


def _safetensors_header_size(path: str | os.PathLike[str], *, limit: int | None) -> int:
    """The JSON header's length, refused before it is parsed when it is too long."""
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        file_size = os.fstat(stream.fileno()).st_size
    if len(prefix) < 8:
        raise ArrayFileError(
            "file", "not a valid safetensors file: it ends before the length of its header"
        )
    (header_size,) = struct.unpack("<Q", prefix)
    if header_size > file_size - 8:
        raise ArrayFileError(
            "file",
            f"not a valid safetensors file: its header would take {header_size} bytes, "
            f"more than the file's {file_size}",
        )
    if header_size > _MAX_METADATA_BYTES:
        raise ArrayFileError(
            "file",
            f"the safetensors header takes {header_size} bytes; headers of more than "
            f"{_MAX_METADATA_BYTES} bytes are refused: split the tensors into several files",
        )
    if limit is not None and header_size > limit:
        raise ArrayTooLargeError(
            "", limit=limit, size=header_size, subject="the safetensors header"
        )
    return header_size


def _safetensors_tensors(path: str | os.PathLike[str], *, limit: int | None) -> list[_Tensor]:
    """List the tensors, in file order, with their absolute data offsets.

    ``safe_open`` validates the header (offsets cover the data exactly, sizes match
    shapes and dtypes) but does not expose where each tensor lies, so the JSON header
    is read again here, once its length is known to be bounded.
    """
    header_size = _safetensors_header_size(path, limit=limit)
    with _parse_errors("safetensors"):
        with safe_open(path, framework="numpy") as tensors:
            names = list(tensors.keys())
        with open(path, "rb") as stream:
            stream.seek(8)
            header = json.loads(stream.read(header_size))
    data_start = 8 + header_size
    result = []
    for name in names:
        try:
            spec = header[name]
            begin, end = spec["data_offsets"]
            shape = tuple(int(dim) for dim in spec["shape"])
            code = str(spec["dtype"])
        except (KeyError, TypeError, ValueError):
            # safe_open accepted the header, so its own parse differs from json's here
            # (duplicate keys, say): the file is not one the format allows.
            raise ArrayFileError(
                "file", f"not a valid safetensors file: tensor {name!r} is ill-described"
            ) from None
        _check_shape(name, shape)
        result.append(
            _Tensor(
                name=name, code=code, shape=shape, offset=data_start + begin, nbytes=end - begin
            )
        )
    return result


def _scan_safetensors(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    tensors = _safetensors_tensors(path, limit=limit)
    arrays = []
    with open(path, "rb") as stream:
        for tensor in tensors:
            storage = tensor.storage
            _check_not_empty(tensor.name, tensor.shape)
            _check_size(tensor.name, tensor.loaded_nbytes, limit)
            values = _ValueScan(dtype=tensor.loaded_dtype, shape=tensor.shape)
            if storage.kind in "biuf":
                stream.seek(tensor.offset)
                _scan_data(
                    stream,
                    name=tensor.name,
                    dtype=storage,
                    count=math.prod(tensor.shape),
                    values=values,
                    widen=tensor.widen,
                )
            stats = values.stats()
            _check_values(tensor.name, stats)
            info = ArrayInfo(name=tensor.name, shape=list(tensor.shape), dtype=tensor.dtype_label)
            arrays.append(ScannedArray(info=info, stats=stats))
    return arrays


def _load_safetensors(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    tensors = {tensor.name: tensor for tensor in _safetensors_tensors(path, limit=limit)}
    tensor = tensors[_resolve_name(name, list(tensors))]
    storage = tensor.storage
    count = math.prod(tensor.shape)
    _check_size(tensor.name, tensor.loaded_nbytes, limit)
    if tensor.widen:
        return _read_bfloat16(path, tensor, count=count)
    # mmap refuses zero length, and numpy cannot map a 0-d array at an offset.
    if mmap and count and tensor.shape:
        return np.memmap(path, dtype=storage, mode="r", offset=tensor.offset, shape=tensor.shape)
    with _parse_errors("safetensors"), safe_open(path, framework="numpy") as tensors_file:
        return tensors_file.get_tensor(tensor.name)


def _read_bfloat16(path: str | os.PathLike[str], tensor: _Tensor, *, count: int) -> np.ndarray:
    widened = np.empty(count, dtype=np.float32)
    chunk_elements = _CHUNK_BYTES // 2
    with open(path, "rb") as stream:
        stream.seek(tensor.offset)
        for start in range(0, count, chunk_elements):
            stop = min(count, start + chunk_elements)
            words = np.fromfile(stream, dtype="<u2", count=stop - start)
            if words.size < stop - start:
                raise _truncated(
                    tensor.name, needed=tensor.nbytes, present=2 * (start + words.size)
                )
            widened[start:stop] = _bfloat16_to_float32(words)
    return widened.reshape(tensor.shape)


# --------------------------------------------------------------------------- parquet


@dataclass(frozen=True)
class _Column:
    """How one parquet column maps to an array."""

    name: str
    kind: Literal["scalar", "string", "list"]
    dtype: np.dtype | None  # element dtype; None for strings
    width: int | None  # list length when the schema fixes it
    leaf: int = 0  # index of its parquet (leaf) column


@dataclass
class _ColumnScan:
    rows: int = 0
    nulls: int = 0
    width: int | None = None
    max_chars: int = 0
    decoded_bytes: int = 0
    values: _ValueScan | None = None


@dataclass(frozen=True)
class _Parquet:
    """An opened parquet file: pyarrow's reader, and the layout its footer declares."""

    file: pq.ParquetFile
    layout: FileLayout


@dataclass(frozen=True)
class _ParquetPlan:
    """How to read some columns: rows per batch for each row group, and the row count."""

    batch_rows: list[int]
    rows: int


def _is_string(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def _numeric_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    ):
        return np.dtype(arrow_type.to_pandas_dtype())
    return None


def _classify_column(arrow_field: pa.Field, leaf: int) -> _Column:
    arrow_type = arrow_field.type
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    name = arrow_field.name
    if _is_string(value_type):
        return _Column(name=name, kind="string", dtype=None, width=None, leaf=leaf)
    dtype = _numeric_dtype(value_type)
    if dtype is not None:
        return _Column(name=name, kind="scalar", dtype=dtype, width=None, leaf=leaf)
    if (
        pa.types.is_fixed_size_list(arrow_type)
        or pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
    ):
        dtype = _numeric_dtype(arrow_type.value_type)
        if dtype is not None:
            width = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None
            return _Column(name=name, kind="list", dtype=dtype, width=width, leaf=leaf)
    raise ArrayFileError(
        "file",
        f"column {name!r} has type {arrow_type}, which is not supported; columns must "
        "hold numbers, booleans, strings, or lists of numbers of one length",
    )


def _parquet_columns(parquet: _Parquet) -> list[_Column]:
    # Every supported column (a number, a string, a list of numbers) is one leaf of the
    # parquet schema, so the i-th field's data are the i-th leaf's column chunks.
    columns = [
        _classify_column(arrow_field, leaf)
        for leaf, arrow_field in enumerate(parquet.file.schema_arrow)
    ]
    if len(columns) != parquet.file.metadata.num_columns:
        raise ArrayFileError(
            "file", "the table has nested columns; columns must be flat or lists of numbers"
        )
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise ArrayFileError("file", f"column {column.name!r} appears twice")
        seen.add(column.name)
    return columns


def _stacked_columns(columns: Sequence[_Column]) -> list[_Column]:
    """The floating columns that make up ``"__columns__"``, or [] when it is absent."""
    floating = [
        c for c in columns if c.kind == "scalar" and c.dtype is not None and c.dtype.kind == "f"
    ]
    taken = any(c.name == _COLUMNS_ARRAY_NAME for c in columns)
    return floating if len(floating) >= 2 and not taken else []


def _stacked_dtype(stacked: Sequence[_Column]) -> np.dtype:
    return np.result_type(*(column.dtype for column in stacked))


def _parquet_array_names(columns: Sequence[_Column]) -> list[str]:
    names = [column.name for column in columns]
    return [*names, _COLUMNS_ARRAY_NAME] if _stacked_columns(columns) else names


def _parquet_footer_size(path: str | os.PathLike[str], *, limit: int | None) -> int | None:
    """The footer's length, refused before anything parses a footer too long; None when
    the file does not end like a parquet file (pyarrow then words the refusal)."""
    with open(path, "rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size
        if file_size < 12:
            return None
        stream.seek(file_size - 8)
        footer_size, magic = struct.unpack("<I4s", stream.read(8))
    if magic != _PARQUET_MAGIC or footer_size > file_size - 12:
        return None
    if footer_size > _MAX_METADATA_BYTES:
        raise ArrayFileError(
            "file",
            f"the parquet footer takes {footer_size} bytes; footers of more than "
            f"{_MAX_METADATA_BYTES} bytes are refused: write fewer row groups or columns",
        )
    if limit is not None and footer_size > limit:
        raise ArrayTooLargeError("", limit=limit, size=footer_size, subject="the parquet footer")
    return footer_size


def _invalid_parquet(message: str) -> ArrayFileError:
    return ArrayFileError("file", f"not a valid parquet file: {message}")


def _open_parquet(path: str | os.PathLike[str], *, limit: int | None) -> _Parquet:
    footer_size = _parquet_footer_size(path, limit=limit)
    with _parse_errors("parquet"):
        # By default pyarrow reads whole row groups (often the whole file) ahead; a
        # bounded read buffer without pre-buffering streams the pages instead.
        parquet_file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_CHUNK_BYTES)
    if footer_size is None:
        # pyarrow opened it, yet it does not end in a plain footer (an encrypted one?).
        raise _invalid_parquet("it does not end in a readable footer")
    metadata = parquet_file.metadata
    # pyarrow's accessors of row-group and column-chunk metadata abort the process on
    # some forged statistics: the sizes and offsets are read from the footer here.
    with open(path, "rb") as stream:
        try:
            layout = read_footer(
                stream, file_size=os.fstat(stream.fileno()).st_size, footer_size=footer_size
            )
        except LayoutError as error:
            raise _invalid_parquet(str(error)) from None
    if (
        len(layout.row_groups) != metadata.num_row_groups
        or layout.num_rows != metadata.num_rows
        or any(len(group.columns) != metadata.num_columns for group in layout.row_groups)
    ):
        raise _invalid_parquet("its footer does not describe its row groups consistently")
    strings = [field.name for field in parquet_file.schema_arrow if _is_string_field(field)]
    if strings:
        # Strings are read as dictionaries: a dictionary page holds each distinct string
        # once, and expanding it into every row that refers to it could take far more
        # memory than anything in the file declares.
        with _parse_errors("parquet"):
            try:
                parquet_file = pq.ParquetFile(
                    path,
                    metadata=metadata,
                    read_dictionary=strings,
                    pre_buffer=False,
                    buffer_size=_CHUNK_BYTES,
                )
            except KeyError as error:
                raise _invalid_parquet(f"ambiguous column {error}") from None
    return _Parquet(file=parquet_file, layout=layout)


def _is_string_field(arrow_field: pa.Field) -> bool:
    arrow_type = arrow_field.type
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return _is_string(arrow_type)


def _check_declared_sizes(
    column: _Column, *, uncompressed: int, values: int, rows: int, limit: int | None
) -> None:
    if limit is None:
        return
    _check_size(column.name, uncompressed, limit)
    # Whatever the pages hold, reading makes something per row (a value, a list offset,
    # a string cell of at least one character), so the row count is held to the limit too.
    if column.dtype is None:
        decoded = rows * 4
    elif column.kind == "list":
        decoded = max(values, rows * (column.width or 0)) * column.dtype.itemsize
        decoded = max(decoded, rows * 4)
    else:
        decoded = max(values, rows) * column.dtype.itemsize
    _check_size(column.name, decoded, limit)


def _plan_parquet_read(
    path: str | os.PathLike[str],
    parquet: _Parquet,
    columns: Sequence[_Column],
    *,
    stacked: Sequence[_Column],
    limit: int | None,
) -> _ParquetPlan:
    """Check what ``columns`` will decompress to before reading a value of them.

    The footer gives, per row group and column chunk, the uncompressed bytes and the
    value count; summed over row groups, each column's must stay within ``limit`` (its
    decoded size follows from the count, except for strings, which are counted while
    read). pyarrow sizes its buffers from the page headers, not the footer, so those are
    walked and checked too. ``stacked`` is checked as ``"__columns__"``.
    """
    groups = parquet.layout.row_groups
    rows = sum(group.num_rows for group in groups)
    if rows != parquet.layout.num_rows:
        raise _invalid_parquet(
            f"its footer promises {parquet.layout.num_rows} rows, its row groups hold {rows}"
        )
    declared_bytes = [
        [group.columns[c.leaf].uncompressed_bytes for c in columns] for group in groups
    ]
    declared_values = [[group.columns[c.leaf].num_values for c in columns] for group in groups]
    # The footer first: an honest file is refused with its full sizes, before any page.
    for index, column in enumerate(columns):
        _check_declared_sizes(
            column,
            uncompressed=sum(row[index] for row in declared_bytes),
            values=sum(row[index] for row in declared_values),
            rows=rows,
            limit=limit,
        )
    if stacked:
        _check_size(
            _COLUMNS_ARRAY_NAME, rows * len(stacked) * _stacked_dtype(stacked).itemsize, limit
        )
    if limit is not None:
        _check_pages(path, parquet, columns, declared_bytes, declared_values, limit=limit)
    batch_rows = [
        _batch_rows(group.num_rows, data_bytes=sum(sizes), values=sum(values))
        for group, sizes, values in zip(groups, declared_bytes, declared_values, strict=True)
    ]
    return _ParquetPlan(batch_rows=batch_rows, rows=rows)


def _check_pages(
    path: str | os.PathLike[str],
    parquet: _Parquet,
    columns: Sequence[_Column],
    declared_bytes: list[list[int]],
    declared_values: list[list[int]],
    *,
    limit: int,
) -> None:
    """Hold each column's page headers to ``limit`` as its footer was.

    Where the pages declare more than the footer, the larger figures replace the
    footer's in ``declared_bytes`` and ``declared_values`` (which plan the batches).
    """
    page_bytes = [0] * len(columns)
    page_values = [0] * len(columns)
    with open(path, "rb") as stream:
        for group_index, group in enumerate(parquet.layout.row_groups):
            for index, column in enumerate(columns):
                try:
                    pages = walk_column_chunk(
                        stream, group.columns[column.leaf], budget=limit - page_bytes[index]
                    )
                except LayoutError as error:
                    raise _invalid_parquet(f"column {column.name!r}: {error}") from None
                page_bytes[index] += pages.uncompressed_bytes
                page_values[index] += pages.values
                itemsize = column.dtype.itemsize if column.dtype is not None else 0
                if page_bytes[index] > limit or page_values[index] * itemsize > limit:
                    # Only a forged file gets here: its footer passed the same check.
                    raise ArrayTooLargeError(column.name, limit=limit)
                row = declared_bytes[group_index]
                row[index] = max(row[index], pages.uncompressed_bytes)
                row = declared_values[group_index]
                row[index] = max(row[index], pages.values)


def _batch_rows(rows: int, *, data_bytes: int, values: int) -> int:
    """Rows per batch so that one batch of the columns read takes about 8 MiB."""
    if rows <= 0:
        return 1
    by_bytes = _CHUNK_BYTES * rows // max(1, data_bytes)
    by_values = _CHUNK_ELEMENTS * rows // max(1, values)
    return max(1, min(_MAX_BATCH_ROWS, by_bytes, by_values))


def _parquet_batches(
    parquet_file: pq.ParquetFile, plan: _ParquetPlan, names: list[str]
) -> Iterator[pa.RecordBatch]:
    # One row group at a time, so each is read with the batch size planned for it.
    for group, batch_rows in enumerate(plan.batch_rows):
        yield from parquet_file.iter_batches(
            batch_size=batch_rows, row_groups=[group], columns=names, use_threads=False
        )


def _plain(array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string_view(array.type):
        array = array.cast(pa.large_string())
    return array


def _string_lengths(array: pa.Array) -> pa.Array:
    """Characters in each row's string (null where missing), without expanding them."""
    if pa.types.is_dictionary(array.type):
        return pc.take(pc.utf8_length(_plain(array.dictionary)), array.indices)
    return pc.utf8_length(_plain(array))


def _ragged(name: str, first: int, other: int) -> ArrayFileError:
    return ArrayFileError(
        "file",
        f"column {name!r} is ragged: its rows hold lists of {min(first, other)} and "
        f"{max(first, other)} values; an embeddings column needs one length in every row",
    )


def _list_values(column: _Column, array: pa.Array, scan: _ColumnScan) -> pa.Array:
    """Check a batch of a list column for one length; return its values, flattened."""
    scan.nulls += array.null_count
    lengths = pc.min_max(pc.list_value_length(array)).as_py()
    if lengths["min"] is not None:
        if scan.width is None:
            scan.width = lengths["min"]
        for length in (lengths["min"], lengths["max"]):
            if length != scan.width:
                raise _ragged(column.name, scan.width, length)
    return array.flatten()


def _missing(name: str, nulls: int) -> ArrayFileError:
    return ArrayFileError(
        "file", f"array {name!r} holds {nulls} missing (null) values; fill or drop them"
    )


def _string_cells_bytes(rows: int, max_chars: int) -> int:
    # numpy keeps every string in a cell of the longest one's length, 4 bytes a character.
    return rows * max(1, max_chars) * 4


def _scan_string_batch(
    column: _Column, array: pa.Array, scan: _ColumnScan, *, limit: int | None
) -> None:
    scan.rows += len(array)
    lengths = _string_lengths(array)
    scan.nulls += lengths.null_count
    scan.max_chars = max(scan.max_chars, pc.max(lengths).as_py() or 0)
    if limit is not None and _string_cells_bytes(scan.rows, scan.max_chars) > limit:
        raise ArrayTooLargeError(column.name, limit=limit)


def _numeric_batch(
    column: _Column, array: pa.Array, scan: _ColumnScan, *, limit: int | None
) -> pa.Array:
    """Count a batch of a numeric column (rows, nulls, decoded bytes); return its values."""
    assert column.dtype is not None
    scan.rows += len(array)
    array = _plain(array)
    values = _list_values(column, array, scan) if column.kind == "list" else array
    scan.nulls += values.null_count
    # Counted as read too: the footer and page checks bound this, but cheaply re-checked.
    scan.decoded_bytes += len(values) * column.dtype.itemsize
    if limit is not None and scan.decoded_bytes > limit:
        raise ArrayTooLargeError(column.name, limit=limit)
    return values


def _scan_numeric_batch(
    column: _Column, array: pa.Array, scan: _ColumnScan, *, rows: int, limit: int | None
) -> None:
    values = _numeric_batch(column, array, scan, limit=limit)
    assert column.dtype is not None
    tracked = column.dtype.kind == "f" or column.kind == "list"
    # A column with nulls is refused once counted; its values are not scanned further.
    if not tracked or scan.nulls or not len(values):
        return
    if scan.values is None:
        shape = (rows, scan.width or 0) if column.kind == "list" else (rows,)
        scan.values = _ValueScan(dtype=column.dtype, shape=shape)
    scan.values.feed(values.to_numpy(zero_copy_only=False))


def _scan_parquet(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    parquet = _open_parquet(path, limit=limit)
    columns = _parquet_columns(parquet)
    stacked = _stacked_columns(columns)
    plan = _plan_parquet_read(path, parquet, columns, stacked=stacked, limit=limit)
    scans = {column.name: _ColumnScan(width=column.width) for column in columns}
    stacked_values = (
        _ValueScan(dtype=_stacked_dtype(stacked), shape=(plan.rows, len(stacked)))
        if stacked and plan.rows
        else None
    )
    with _parse_errors("parquet"):
        for batch in _parquet_batches(parquet.file, plan, [column.name for column in columns]):
            for column, array in zip(columns, batch.columns, strict=True):
                if column.kind == "string":
                    _scan_string_batch(column, array, scans[column.name], limit=limit)
                else:
                    _scan_numeric_batch(
                        column, array, scans[column.name], rows=plan.rows, limit=limit
                    )
            if stacked_values is not None and not any(scans[c.name].nulls for c in stacked):
                block = _stacked_block(batch, stacked)
                stacked_values.feed(block.reshape(-1))
    arrays = []
    for column in columns:
        scan = scans[column.name]
        _check_row_count(column.name, rows=plan.rows, read=scan.rows)
        if column.kind == "string":
            shape, dtype = [scan.rows], f"<U{max(1, scan.max_chars)}"
        elif column.kind == "list":
            assert column.dtype is not None
            shape, dtype = [scan.rows, scan.width or 0], column.dtype.name
        else:
            assert column.dtype is not None
            shape, dtype = [scan.rows], column.dtype.name
        _check_not_empty(column.name, shape)
        if scan.nulls:
            raise _missing(column.name, scan.nulls)
        stats = scan.values.stats() if scan.values else ArrayStats(n_nonfinite=0, zero_rows=0)
        _check_values(column.name, stats)
        arrays.append(
            ScannedArray(info=ArrayInfo(name=column.name, shape=shape, dtype=dtype), stats=stats)
        )
    if stacked:
        info = ArrayInfo(
            name=_COLUMNS_ARRAY_NAME,
            shape=[plan.rows, len(stacked)],
            dtype=_stacked_dtype(stacked).name,
        )
        stats = stacked_values.stats() if stacked_values else ArrayStats(0, 0)
        arrays.append(ScannedArray(info=info, stats=stats))
    return arrays


def _stacked_block(batch: pa.RecordBatch, stacked: Sequence[_Column]) -> np.ndarray:
    dtype = _stacked_dtype(stacked)
    block = np.empty((batch.num_rows, len(stacked)), dtype=dtype)
    for j, column in enumerate(stacked):
        block[:, j] = _plain(batch.column(column.name)).to_numpy(zero_copy_only=False)
    return block


def _load_parquet(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    del mmap  # parquet pages are encoded: there is nothing to map
    parquet = _open_parquet(path, limit=limit)
    columns = _parquet_columns(parquet)
    name = _resolve_name(name, _parquet_array_names(columns))
    stacked = _stacked_columns(columns)
    if name == _COLUMNS_ARRAY_NAME and stacked:
        plan = _plan_parquet_read(path, parquet, stacked, stacked=stacked, limit=limit)
        with _parse_errors("parquet"):
            return _load_stacked_columns(parquet.file, stacked, plan)
    column = next(column for column in columns if column.name == name)
    plan = _plan_parquet_read(path, parquet, [column], stacked=(), limit=limit)
    with _parse_errors("parquet"):
        if column.kind == "string":
            return _load_string_column(parquet.file, column, plan, limit=limit)
        return _load_numeric_column(parquet.file, column, plan, limit=limit)


def _load_string_column(
    parquet_file: pq.ParquetFile, column: _Column, plan: _ParquetPlan, *, limit: int | None
) -> np.ndarray:
    # numpy needs the longest string before it can allocate, so a first pass measures
    # (without expanding the dictionary) and a second fills.
    scan = _ColumnScan()
    for batch in _parquet_batches(parquet_file, plan, [column.name]):
        _scan_string_batch(column, batch.column(0), scan, limit=limit)
    _check_row_count(column.name, rows=plan.rows, read=scan.rows)
    if scan.nulls:
        raise _missing(column.name, scan.nulls)
    out = np.empty(plan.rows, dtype=f"<U{max(1, scan.max_chars)}")
    start = 0
    for batch in _parquet_batches(parquet_file, plan, [column.name]):
        strings = batch.column(0)
        if pa.types.is_dictionary(strings.type):
            strings = pc.take(strings.dictionary, strings.indices)
        strings = _plain(strings)
        stop = start + len(strings)
        if stop > plan.rows:
            break
        out[start:stop] = strings.to_numpy(zero_copy_only=False)
        start = stop
    _check_row_count(column.name, rows=plan.rows, read=start)
    return out


def _load_numeric_column(
    parquet_file: pq.ParquetFile, column: _Column, plan: _ParquetPlan, *, limit: int | None
) -> np.ndarray:
    assert column.dtype is not None
    scan = _ColumnScan(width=column.width)
    out: np.ndarray | None = None
    start = 0
    for batch in _parquet_batches(parquet_file, plan, [column.name]):
        values = _numeric_batch(column, batch.column(0), scan, limit=limit)
        rows = batch.num_rows
        if scan.nulls:
            raise _missing(column.name, scan.nulls)
        if not rows:
            continue
        block = values.to_numpy(zero_copy_only=False)
        if column.kind == "list":
            block = block.reshape(rows, scan.width or 0)
        if out is None:
            shape = (plan.rows, *block.shape[1:])
            _check_size(column.name, math.prod(shape) * column.dtype.itemsize, limit)
            out = np.empty(shape, dtype=column.dtype)
        if start + rows > plan.rows:
            break
        out[start : start + rows] = block
        start += rows
    _check_row_count(column.name, rows=plan.rows, read=scan.rows)
    if out is None:
        width = (scan.width or 0,) if column.kind == "list" else ()
        out = np.empty((plan.rows, *width), dtype=column.dtype)
    return out


def _load_stacked_columns(
    parquet_file: pq.ParquetFile, stacked: Sequence[_Column], plan: _ParquetPlan
) -> np.ndarray:
    out = np.empty((plan.rows, len(stacked)), dtype=_stacked_dtype(stacked))
    start = 0
    for batch in _parquet_batches(parquet_file, plan, [column.name for column in stacked]):
        for column, array in zip(stacked, batch.columns, strict=True):
            if array.null_count:
                raise _missing(column.name, array.null_count)
        stop = start + batch.num_rows
        if stop > plan.rows:
            _check_row_count(_COLUMNS_ARRAY_NAME, rows=plan.rows, read=stop)
        out[start:stop] = _stacked_block(batch, stacked)
        start = stop
    _check_row_count(_COLUMNS_ARRAY_NAME, rows=plan.rows, read=start)
    return out


def _check_row_count(name: str, *, rows: int, read: int) -> None:
    if read != rows:
        raise ArrayFileError(
            "file",
            f"not a valid parquet file: its footer promises {rows} rows, array {name!r} has {read}",
        )


_SCANNERS: dict[str, Callable[..., list[ScannedArray]]] = {
    "npy": _scan_npy,
    "npz": _scan_npz,
    "safetensors": _scan_safetensors,
    "parquet": _scan_parquet,
}
_LOADERS: dict[str, Callable[..., np.ndarray]] = {
    "npy": _load_npy,
    "npz": _load_npz,
    "safetensors": _load_safetensors,
    "parquet": _load_parquet,
}
