"""``.npy`` files: one array, named ``"array"``, after a header numpy parses.

The header parsing and the value scan here serve ``.npz`` members too, which are
``.npy`` files inside a zip archive (:mod:`arrayfiles.npz`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from api_schemas.datasets import ArrayInfo
from arrayfiles.checks import (
    check_not_empty,
    check_numpy_dtype,
    check_shape,
    check_size,
    check_values,
    dtype_label,
    parse_errors,
    resolve_name,
)
from arrayfiles.errors import ArrayFileError
from arrayfiles.scan import ScannedArray, ValueScan, readinto_exact, scan_data, truncated

__all__ = [
    "MAX_NPY_HEADER_BYTES",
    "NPY_ARRAY_NAME",
    "NpyHeader",
    "array_from_stream",
    "check_npy_header",
    "load",
    "read_npy_header",
    "scan",
    "scan_npy_values",
]

NPY_ARRAY_NAME = "array"
# numpy refuses npy headers of more than 10,000 characters; at up to 4 UTF-8 bytes each,
# plus magic and length, a member's header takes less than this.
MAX_NPY_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class NpyHeader:
    """What an npy header declares: the array's shape, memory order and dtype."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype

    @property
    def count(self) -> int:
        """Elements of the array."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the array's data."""
        return self.count * self.dtype.itemsize


def read_npy_header(stream: BinaryIO, *, name: str, what: str) -> NpyHeader:
    """Parse an npy header, leaving ``stream`` at the first data byte.

    Parameters
    ----------
    stream : BinaryIO
        Positioned at the header's magic string.
    name : str
        The array's name, for the errors.
    what : str
        The file's format as errors name it (``".npy"``, ``".npz"``).

    Returns
    -------
    NpyHeader
        The declared shape (never negative), order and dtype, not yet checked further.

    Raises
    ------
    ArrayFileError
        When the header does not parse, has a negative dimension, or is of a version
        other than 1.0 or 2.0.
    """
    with parse_errors(what):
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
    check_shape(name, shape)
    return NpyHeader(shape=tuple(shape), fortran_order=fortran_order, dtype=dtype)


def check_npy_header(name: str, header: NpyHeader, *, limit: int | None) -> None:
    """Refuse a header of an unsupported dtype, of no elements, or past ``limit``."""
    check_numpy_dtype(name, header.dtype)
    check_not_empty(name, header.shape)
    check_size(name, header.nbytes, limit)


def scan_npy_values(stream: BinaryIO, header: NpyHeader, *, name: str) -> ScannedArray:
    """Read the data after ``header`` in chunks, and refuse NaN, Inf and overflows."""
    values = ValueScan(dtype=header.dtype, shape=header.shape, fortran_order=header.fortran_order)
    scan_data(stream, name=name, dtype=header.dtype, count=header.count, values=values)
    stats = values.stats()
    check_values(name, stats)
    info = ArrayInfo(name=name, shape=list(header.shape), dtype=dtype_label(header.dtype))
    return ScannedArray(info=info, stats=stats)


def array_from_stream(stream: BinaryIO, header: NpyHeader, *, name: str) -> np.ndarray:
    """Read the data after ``header`` into a new array of its shape and order."""
    flat = np.empty(header.count, dtype=header.dtype)
    got = readinto_exact(stream, memoryview(flat.view(np.uint8)))
    if got < header.nbytes:
        raise truncated(name, needed=header.nbytes, present=got)
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).T
    return flat.reshape(header.shape)


def scan(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    """Validate an ``.npy`` file and scan its array (see :func:`arrayfiles.scan_arrays`)."""
    name = NPY_ARRAY_NAME
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = read_npy_header(stream, name=name, what=".npy")
        check_npy_header(name, header, limit=limit)
        present = file_size - stream.tell()
        if present < header.nbytes:
            raise truncated(name, needed=header.nbytes, present=present)
        # Read the data rather than scan a memory map: mapped pages count towards the
        # process's resident memory until unmapped, so a mapped multi-GB scan would
        # look (and be accounted) like loading the file whole.
        return [scan_npy_values(stream, header, name=name)]


def load(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    """Load an ``.npy`` file's array (see :func:`arrayfiles.load_array`)."""
    name = resolve_name(name, [NPY_ARRAY_NAME])
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = read_npy_header(stream, name=name, what=".npy")
        data_offset = stream.tell()
    check_numpy_dtype(name, header.dtype)
    check_size(name, header.nbytes, limit)
    if file_size - data_offset < header.nbytes:
        raise truncated(name, needed=header.nbytes, present=file_size - data_offset)
    with parse_errors(".npy"):
        # An empty array cannot be memory-mapped (mmap refuses zero length).
        if mmap and header.count:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)
