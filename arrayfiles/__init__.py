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

Each format is read by its own module (:mod:`arrayfiles.npy`, :mod:`~arrayfiles.npz`,
:mod:`~arrayfiles.safetensors`, :mod:`~arrayfiles.parquet`), on the checks of
:mod:`arrayfiles.checks` and the value scan of :mod:`arrayfiles.scan`; this module
checks the arguments and dispatches to them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from api_schemas.datasets import FORMAT_BY_SUFFIX, ArrayInfo
from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.scan import ArrayStats, ScannedArray, array_stats

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

# Each format's reader module, with its ``scan`` (every byte validated, values scanned)
# and its ``load``. Imported on first use: the parquet reader pulls in pyarrow and the
# safetensors one its library (~60 ms of start-up together), which an .npy read never
# needs.
_READERS: dict[str, str] = {
    "npy": "arrayfiles.npy",
    "npz": "arrayfiles.npz",
    "safetensors": "arrayfiles.safetensors",
    "parquet": "arrayfiles.parquet",
}

FORMATS: tuple[str, ...] = tuple(_READERS)
"""The formats read here; the array formats of ``api_schemas.datasets.DatasetFormat``."""

# The array formats among the suffixes the API and the client recognise.
_SUFFIX_FORMATS = {suffix: fmt for suffix, fmt in FORMAT_BY_SUFFIX.items() if fmt in FORMATS}
_FORMAT_HINT = f"pass format={'|'.join(FORMATS)}"


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
    arrays = _reader(fmt).scan(path, limit=max_array_bytes)
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
    return _reader(fmt).load(path, name=name, mmap=mmap, limit=max_array_bytes)


def _reader(fmt: str) -> ModuleType:
    """The reader module of a format that :func:`_check_format` accepted."""
    return importlib.import_module(_READERS[fmt])


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
