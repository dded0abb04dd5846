"""Read the array files users hand over: ``.npy``, ``.npz``, ``.safetensors``, parquet.

This is the one module that opens user array files: the service checks an upload with
:func:`inspect_arrays`, workers read blobs back with :func:`load_array`, and the local
CLI does both on files named on its command line. Files may be several GB, so nothing
here reads a big array whole into memory unless asked to return it: validation streams
the data in chunks of about 8 MiB, and loading memory-maps wherever the format allows.

Every problem with a file's content is raised as
:class:`~workers.geometry.errors.InvalidInputError` with ``field="file"`` (or
``"format"`` / ``"array"`` for a wrong format or array name) and a message that names
the array and what to do. Operating-system errors (a missing file, no permission)
propagate unchanged: they are not the user's data.

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
from workers.geometry.errors import InvalidInputError

__all__ = [
    "FORMATS",
    "ArrayStats",
    "array_stats",
    "detect_format",
    "inspect_arrays",
    "load_array",
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
_NPY_ARRAY_NAME = "array"
_COLUMNS_ARRAY_NAME = "__columns__"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"

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


@dataclass(frozen=True)
class ArrayStats:
    """Value statistics of an array that the analysis refuses or warns about.

    Attributes
    ----------
    n_nonfinite : int
        Number of NaN or infinite entries (0 for non-floating arrays).
    zero_rows : int
        Number of rows of a 2-D floating array whose entries are all zero: the cosine
        kernel is undefined on them. 0 for any other array.
    """

    n_nonfinite: int
    zero_rows: int


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
    InvalidInputError
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
        raise InvalidInputError(
            "format",
            f"cannot tell the format of {Path(path).name!r} from its suffix; {_FORMAT_HINT}",
        ) from None


def inspect_arrays(path: str | os.PathLike[str], *, fmt: str) -> list[ArrayInfo]:
    """List the arrays a file holds, after validating every byte of it.

    The whole file is read, in chunks of about 8 MiB, so memory stays bounded for a
    multi-GB file: headers are parsed, data sizes checked against them, compressed
    members decompressed and their checksums verified, and floating data scanned for
    non-finite values.

    Parameters
    ----------
    path : str or os.PathLike
        The file to inspect.
    fmt : {"npy", "npz", "safetensors", "parquet"}
        Its format (see :func:`detect_format`).

    Returns
    -------
    list of ArrayInfo
        One entry per array, in file order (for parquet: column order, then
        ``"__columns__"``), with the shape and dtype :func:`load_array` returns, except
        that bfloat16 tensors are reported as ``"bfloat16"`` and loaded as float32.
        Numeric dtypes are numpy names (``"float32"``, ``"int64"``, ``"bool"``), strings
        ``"<U{max length}"``.

    Raises
    ------
    InvalidInputError
        ``field="format"`` for an unknown ``fmt``; ``field="file"`` for a file that does
        not parse or is truncated, pickled or object arrays, unsupported dtypes
        (complex, structured, datetime, byte strings, ...), ragged or nested parquet
        lists, missing (null) parquet values, an array with no elements, a floating
        array holding NaN or Inf, or a file holding no array at all.
    OSError
        When the file cannot be opened.

    Examples
    --------
    >>> inspect_arrays("emb.npy", fmt="npy")  # doctest: +SKIP
    [ArrayInfo(name='array', shape=[50000, 64], dtype='float32')]
    """
    _check_format(fmt)
    _check_readable(path)
    arrays = _INSPECTORS[fmt](path)
    if not arrays:
        raise InvalidInputError("file", f"the {fmt} file holds no arrays")
    return arrays


def load_array(
    path: str | os.PathLike[str],
    *,
    fmt: str,
    name: str | None = None,
    mmap: bool = True,
) -> np.ndarray:
    """Load one array of a file, memory-mapped where the format allows.

    The structure is checked as in :func:`inspect_arrays` (headers, dtypes, sizes,
    pickles, ragged lists, missing values), but the values are not scanned for NaN or
    Inf: use :func:`array_stats` on the result, or inspect the file first.

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

    Returns
    -------
    numpy.ndarray
        The array, in the file's dtype, except bfloat16 which is widened to float32.
        Parquet arrays are always read into memory, row group by row group, without
        an intermediate table.

    Raises
    ------
    InvalidInputError
        ``field="array"`` when ``name`` is missing and the file holds several arrays,
        or names none of them; otherwise as :func:`inspect_arrays`.
    OSError
        When the file cannot be opened.

    Notes
    -----
    A memory map of an ``.npz`` member skips the zip checksum; :func:`inspect_arrays`
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
    _check_readable(path)
    return _LOADERS[fmt](path, name=name, mmap=mmap)


def array_stats(array: np.ndarray, *, chunk_rows: int | None = None) -> ArrayStats:
    """Count non-finite entries and all-zero rows, a block of rows at a time.

    Parameters
    ----------
    array : numpy.ndarray
        Any array; a :class:`numpy.memmap` is read block by block, never copied whole.
    chunk_rows : int, optional
        Rows per block; by default as many as hold about a million entries.

    Returns
    -------
    ArrayStats
        ``n_nonfinite`` over all entries of a floating array, ``zero_rows`` over the
        rows of a 2-D floating array; both 0 for other arrays.

    Raises
    ------
    InvalidInputError
        With ``field="chunk_rows"`` when ``chunk_rows`` is below 1.

    Examples
    --------
    >>> array_stats(np.array([[0.0, 0.0], [1.0, np.nan]]))
    ArrayStats(n_nonfinite=1, zero_rows=1)
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise InvalidInputError("chunk_rows", f"must be at least 1, got {chunk_rows}")
    if array.dtype.kind != "f" or array.size == 0:
        return ArrayStats(n_nonfinite=0, zero_rows=0)
    if array.ndim == 0:
        return ArrayStats(n_nonfinite=int(not np.isfinite(array)), zero_rows=0)
    if chunk_rows is None:
        row_size = array.size // array.shape[0]
        chunk_rows = max(1, _CHUNK_ELEMENTS // row_size)
    n_nonfinite = 0
    zero_rows = 0
    for start in range(0, array.shape[0], chunk_rows):
        block = np.asarray(array[start : start + chunk_rows])
        n_nonfinite += _count_nonfinite(block)
        if array.ndim == 2:
            # NaN counts as non-zero in any(), so a row holding NaN is not a zero row.
            zero_rows += int(np.count_nonzero(~block.any(axis=1)))
    return ArrayStats(n_nonfinite=n_nonfinite, zero_rows=zero_rows)


# --------------------------------------------------------------------------- shared


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInputError("format", f"unknown format {fmt!r}; {_FORMAT_HINT}")


def _check_readable(path: str | os.PathLike[str]) -> None:
    # Open once up front so a missing or unreadable file surfaces as the OSError it
    # is, before any parser could word it as a malformed file.
    with open(path, "rb"):
        pass


@contextmanager
def _parse_errors(what: str) -> Iterator[None]:
    """Turn the errors parsers raise on malformed bytes into ``InvalidInputError``."""
    try:
        yield
    except InvalidInputError:
        raise
    except OSError as error:
        # pyarrow reports malformed data as OSError without errno; a real I/O failure
        # carries one and is not the user's fault.
        if error.errno is not None:
            raise
        raise InvalidInputError("file", f"not a valid {what} file: {error}") from error
    except (
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        SafetensorError,
        pa.ArrowException,
    ) as error:
        raise InvalidInputError("file", f"not a valid {what} file: {error}") from error


def _resolve_name(requested: str | None, available: Sequence[str]) -> str:
    listed = ", ".join(repr(name) for name in available)
    if requested is None:
        if len(available) == 1:
            return available[0]
        if not available:
            raise InvalidInputError("file", "the file holds no arrays")
        raise InvalidInputError("array", f"file holds arrays {listed}; name one of them")
    if requested not in available:
        raise InvalidInputError("array", f"no array {requested!r}; the file holds {listed}")
    return requested


def _check_numpy_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise InvalidInputError(
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
    raise InvalidInputError(
        "file",
        f"array {name!r} has {kind} dtype {dtype}, which is not supported{hint}; "
        f"supported dtypes are {_SUPPORTED_DTYPES}",
    )


def _dtype_label(dtype: np.dtype) -> str:
    return dtype.str if dtype.kind == "U" else dtype.name


def _check_not_empty(name: str, shape: Sequence[int]) -> None:
    if math.prod(shape) == 0:
        raise InvalidInputError("file", f"array {name!r} is empty (shape {tuple(shape)})")


def _check_finite(name: str, n_nonfinite: int) -> None:
    if n_nonfinite:
        raise InvalidInputError(
            "file",
            f"array {name!r} holds {n_nonfinite} non-finite values (NaN/Inf); "
            "embeddings must be finite, so replace or drop those rows",
        )


def _count_nonfinite(values: np.ndarray) -> int:
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _bfloat16_to_float32(words: np.ndarray) -> np.ndarray:
    # bfloat16 is the upper half of a float32, so widening is exact.
    return (words.astype(np.uint32) << 16).view(np.float32)


def _truncated(name: str, *, needed: int, present: int) -> InvalidInputError:
    return InvalidInputError(
        "file",
        f"the file is truncated: array {name!r} needs {needed} bytes of data, "
        f"only {present} are there",
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
    widen: Callable[[np.ndarray], np.ndarray] | None = None,
) -> int:
    """Read ``count`` elements from ``stream`` in chunks; return how many are non-finite.

    Raises the truncation error when the stream ends early. ``widen`` converts raw
    storage words to floats (bfloat16).
    """
    chunk_elements = max(1, _CHUNK_BYTES // dtype.itemsize)
    buffer = bytearray(min(count, chunk_elements) * dtype.itemsize)
    floating = dtype.kind == "f" or widen is not None
    n_nonfinite = 0
    done = 0
    while done < count:
        n = min(count - done, chunk_elements)
        got = _readinto_exact(stream, memoryview(buffer)[: n * dtype.itemsize])
        if got < n * dtype.itemsize:
            raise _truncated(
                name, needed=count * dtype.itemsize, present=done * dtype.itemsize + got
            )
        if floating:
            values = np.frombuffer(buffer, dtype=dtype, count=n)
            n_nonfinite += _count_nonfinite(widen(values) if widen else values)
        done += n
    return n_nonfinite


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
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream)
        else:
            header = None
    if header is None:
        # numpy writes version 3.0 only for structured dtypes with non-Latin-1 field
        # names, which are refused anyway.
        raise InvalidInputError(
            "file",
            f"array {name!r} uses npy format version {version[0]}.{version[1]}; "
            "save it as a plain (non-structured) array with numpy.save",
        )
    shape, fortran_order, dtype = header
    return _NpyHeader(shape=tuple(shape), fortran_order=fortran_order, dtype=dtype)


def _array_from_stream(stream: BinaryIO, header: _NpyHeader, *, name: str) -> np.ndarray:
    flat = np.empty(header.count, dtype=header.dtype)
    got = _readinto_exact(stream, memoryview(flat.view(np.uint8)))
    if got < header.nbytes:
        raise _truncated(name, needed=header.nbytes, present=got)
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).T
    return flat.reshape(header.shape)


def _inspect_npy(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    name = _NPY_ARRAY_NAME
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = _read_npy_header(stream, name=name, what=".npy")
        _check_numpy_dtype(name, header.dtype)
        _check_not_empty(name, header.shape)
        present = file_size - stream.tell()
        if present < header.nbytes:
            raise _truncated(name, needed=header.nbytes, present=present)
        # Read the data rather than scan a memory map: mapped pages count towards the
        # process's resident memory until unmapped, so a mapped multi-GB scan would
        # look (and be accounted) like loading the file whole.
        n_nonfinite = _scan_data(stream, name=name, dtype=header.dtype, count=header.count)
    _check_finite(name, n_nonfinite)
    return [ArrayInfo(name=name, shape=list(header.shape), dtype=_dtype_label(header.dtype))]


def _load_npy(path: str | os.PathLike[str], *, name: str | None, mmap: bool) -> np.ndarray:
    name = _resolve_name(name, [_NPY_ARRAY_NAME])
    file_size = os.path.getsize(path)
    with open(path, "rb") as stream:
        header = _read_npy_header(stream, name=name, what=".npy")
        data_offset = stream.tell()
    _check_numpy_dtype(name, header.dtype)
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


def _npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise InvalidInputError(
                "file",
                f"member {info.filename!r} is not an .npy array; save the file with "
                "numpy.savez or numpy.savez_compressed",
            )
        if info.flag_bits & 0x1:
            raise InvalidInputError("file", f"member {info.filename!r} is encrypted")
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise InvalidInputError("file", f"array {name!r} appears twice in the archive")
        members[name] = info
    return members


def _inspect_npz(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    arrays = []
    with _open_npz(path) as archive:
        for name, info in _npz_members(archive).items():
            with _parse_errors(".npz"), archive.open(info) as member:
                header = _read_npy_header(member, name=name, what=".npz")
                _check_numpy_dtype(name, header.dtype)
                _check_not_empty(name, header.shape)
                n_nonfinite = _scan_data(member, name=name, dtype=header.dtype, count=header.count)
                _drain(member)
            _check_finite(name, n_nonfinite)
            arrays.append(
                ArrayInfo(name=name, shape=list(header.shape), dtype=_dtype_label(header.dtype))
            )
    return arrays


def _load_npz(path: str | os.PathLike[str], *, name: str | None, mmap: bool) -> np.ndarray:
    with _open_npz(path) as archive:
        members = _npz_members(archive)
        name = _resolve_name(name, list(members))
        info = members[name]
        if mmap and info.compress_type == zipfile.ZIP_STORED:
            mapped = _map_stored_member(path, info, name=name)
            if mapped is not None:
                return mapped
        with _parse_errors(".npz"), archive.open(info) as member:
            header = _read_npy_header(member, name=name, what=".npz")
            _check_numpy_dtype(name, header.dtype)
            # The zip directory bounds the data, so a forged header cannot make us
            # allocate more than the member holds.
            present = info.file_size - member.tell()
            if present < header.nbytes:
                raise _truncated(name, needed=header.nbytes, present=max(present, 0))
            array = _array_from_stream(member, header, name=name)
            _drain(member)
        return array


def _map_stored_member(
    path: str | os.PathLike[str], info: zipfile.ZipInfo, *, name: str
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
            raise InvalidInputError("file", f"not a valid .npz file: member {name!r} is cut off")
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(local_header)
        if signature != _ZIP_LOCAL_SIGNATURE:
            raise InvalidInputError(
                "file", f"not a valid .npz file: bad local header for member {name!r}"
            )
        member_start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        stream.seek(member_start)
        header = _read_npy_header(stream, name=name, what=".npz")
        data_offset = stream.tell()
    _check_numpy_dtype(name, header.dtype)
    if not header.count:
        return None
    present = info.file_size - (data_offset - member_start)
    if present < header.nbytes:
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
            raise InvalidInputError(
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


def _safetensors_tensors(path: str | os.PathLike[str]) -> list[_Tensor]:
    """List the tensors, in file order, with their absolute data offsets.

    ``safe_open`` validates the header (offsets cover the data exactly, sizes match
    shapes and dtypes) but does not expose where each tensor lies, so the JSON header
    is read again here.
    """
    with _parse_errors("safetensors"):
        with safe_open(path, framework="numpy") as tensors:
            names = list(tensors.keys())
        with open(path, "rb") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(header_size))
    data_start = 8 + header_size
    result = []
    for name in names:
        spec = header[name]
        begin, end = spec["data_offsets"]
        result.append(
            _Tensor(
                name=name,
                code=spec["dtype"],
                shape=tuple(spec["shape"]),
                offset=data_start + begin,
                nbytes=end - begin,
            )
        )
    return result


def _inspect_safetensors(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    tensors = _safetensors_tensors(path)
    arrays = []
    with open(path, "rb") as stream:
        for tensor in tensors:
            storage = tensor.storage
            _check_not_empty(tensor.name, tensor.shape)
            if storage.kind == "f" or tensor.widen:
                stream.seek(tensor.offset)
                n_nonfinite = _scan_data(
                    stream,
                    name=tensor.name,
                    dtype=storage,
                    count=math.prod(tensor.shape),
                    widen=tensor.widen,
                )
                _check_finite(tensor.name, n_nonfinite)
            arrays.append(
                ArrayInfo(name=tensor.name, shape=list(tensor.shape), dtype=tensor.dtype_label)
            )
    return arrays


def _load_safetensors(path: str | os.PathLike[str], *, name: str | None, mmap: bool) -> np.ndarray:
    tensors = {tensor.name: tensor for tensor in _safetensors_tensors(path)}
    tensor = tensors[_resolve_name(name, list(tensors))]
    storage = tensor.storage
    count = math.prod(tensor.shape)
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


@dataclass
class _ColumnScan:
    rows: int = 0
    nulls: int = 0
    n_nonfinite: int = 0
    width: int | None = None
    max_chars: int = 0


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


def _classify_column(field: pa.Field) -> _Column:
    arrow_type = field.type
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if _is_string(value_type):
        return _Column(name=field.name, kind="string", dtype=None, width=None)
    dtype = _numeric_dtype(value_type)
    if dtype is not None:
        return _Column(name=field.name, kind="scalar", dtype=dtype, width=None)
    if (
        pa.types.is_fixed_size_list(arrow_type)
        or pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
    ):
        dtype = _numeric_dtype(arrow_type.value_type)
        if dtype is not None:
            width = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None
            return _Column(name=field.name, kind="list", dtype=dtype, width=width)
    raise InvalidInputError(
        "file",
        f"column {field.name!r} has type {arrow_type}, which is not supported; columns must "
        "hold numbers, booleans, strings, or lists of numbers of one length",
    )


def _parquet_columns(parquet_file: pq.ParquetFile) -> list[_Column]:
    columns = [_classify_column(field) for field in parquet_file.schema_arrow]
    seen: set[str] = set()
    for column in columns:
        if column.name in seen:
            raise InvalidInputError("file", f"column {column.name!r} appears twice")
        seen.add(column.name)
    return columns


def _stacked_columns(columns: Sequence[_Column]) -> list[_Column]:
    """The floating columns that make up ``"__columns__"``, or [] when it is absent."""
    floating = [
        c for c in columns if c.kind == "scalar" and c.dtype is not None and c.dtype.kind == "f"
    ]
    taken = any(c.name == _COLUMNS_ARRAY_NAME for c in columns)
    return floating if len(floating) >= 2 and not taken else []


def _parquet_array_names(columns: Sequence[_Column]) -> list[str]:
    names = [column.name for column in columns]
    return [*names, _COLUMNS_ARRAY_NAME] if _stacked_columns(columns) else names


def _open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    with _parse_errors("parquet"):
        # By default pyarrow reads whole row groups (often the whole file) ahead; a
        # bounded read buffer without pre-buffering streams the pages instead.
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_CHUNK_BYTES)


def _plain(array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string_view(array.type):
        array = array.cast(pa.large_string())
    return array


def _batch_rows(columns: Sequence[_Column]) -> int:
    # A variable list's length is unknown until read; 256 keeps a guess from being wild.
    row_width = sum(column.width or (256 if column.kind == "list" else 1) for column in columns)
    return max(1, min(65536, _CHUNK_ELEMENTS // max(1, row_width)))


def _ragged(name: str, first: int, other: int) -> InvalidInputError:
    return InvalidInputError(
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


def _missing(name: str, nulls: int) -> InvalidInputError:
    return InvalidInputError(
        "file", f"array {name!r} holds {nulls} missing (null) values; fill or drop them"
    )


def _inspect_parquet(path: str | os.PathLike[str]) -> list[ArrayInfo]:
    parquet_file = _open_parquet(path)
    columns = _parquet_columns(parquet_file)
    scans = {column.name: _ColumnScan(width=column.width) for column in columns}
    with _parse_errors("parquet"):
        for batch in parquet_file.iter_batches(batch_size=_batch_rows(columns)):
            for column, array in zip(columns, batch.columns, strict=True):
                _scan_parquet_batch(column, _plain(array), scans[column.name])
    arrays = []
    for column in columns:
        scan = scans[column.name]
        _check_row_count(column.name, rows=parquet_file.metadata.num_rows, read=scan.rows)
        if column.kind == "string":
            shape, dtype = [scan.rows], f"<U{max(1, scan.max_chars)}"
        elif column.kind == "list":
            shape, dtype = [scan.rows, scan.width or 0], column.dtype.name
        else:
            shape, dtype = [scan.rows], column.dtype.name
        _check_not_empty(column.name, shape)
        if scan.nulls:
            raise _missing(column.name, scan.nulls)
        _check_finite(column.name, scan.n_nonfinite)
        arrays.append(ArrayInfo(name=column.name, shape=shape, dtype=dtype))
    stacked = _stacked_columns(columns)
    if stacked:
        dtype = np.result_type(*(column.dtype for column in stacked))
        rows = scans[stacked[0].name].rows
        arrays.append(
            ArrayInfo(name=_COLUMNS_ARRAY_NAME, shape=[rows, len(stacked)], dtype=dtype.name)
        )
    return arrays


def _scan_parquet_batch(column: _Column, array: pa.Array, scan: _ColumnScan) -> None:
    scan.rows += len(array)
    if column.kind == "string":
        scan.nulls += array.null_count
        longest = pc.max(pc.utf8_length(array)).as_py()
        scan.max_chars = max(scan.max_chars, longest or 0)
        return
    values = _list_values(column, array, scan) if column.kind == "list" else array
    scan.nulls += values.null_count
    if column.dtype.kind == "f":
        # to_numpy turns nulls into NaN; they are reported as missing, not as NaN.
        floats = values.to_numpy(zero_copy_only=False)
        scan.n_nonfinite += _count_nonfinite(floats) - values.null_count


def _load_parquet(path: str | os.PathLike[str], *, name: str | None, mmap: bool) -> np.ndarray:
    del mmap  # parquet pages are encoded: there is nothing to map
    parquet_file = _open_parquet(path)
    columns = _parquet_columns(parquet_file)
    name = _resolve_name(name, _parquet_array_names(columns))
    rows = parquet_file.metadata.num_rows
    with _parse_errors("parquet"):
        if name == _COLUMNS_ARRAY_NAME and _stacked_columns(columns):
            return _load_stacked_columns(parquet_file, _stacked_columns(columns), rows=rows)
        column = next(column for column in columns if column.name == name)
        if column.kind == "string":
            return _load_string_column(parquet_file, column)
        return _load_numeric_column(parquet_file, column, rows=rows)


def _load_string_column(parquet_file: pq.ParquetFile, column: _Column) -> np.ndarray:
    # Strings are labels and ids: small beside the embeddings, and numpy needs the
    # longest one before it can allocate, so the column is read in one go.
    table = parquet_file.read(columns=[column.name])
    array = _plain(table.column(0).combine_chunks())
    if array.null_count:
        raise _missing(column.name, array.null_count)
    longest = pc.max(pc.utf8_length(array)).as_py() or 0
    return array.to_numpy(zero_copy_only=False).astype(f"<U{max(1, longest)}")


def _load_numeric_column(parquet_file: pq.ParquetFile, column: _Column, *, rows: int) -> np.ndarray:
    scan = _ColumnScan(width=column.width)
    out: np.ndarray | None = None
    start = 0
    for batch in parquet_file.iter_batches(batch_size=_batch_rows([column]), columns=[column.name]):
        array = _plain(batch.column(0))
        if not len(array):
            continue
        values = _list_values(column, array, scan) if column.kind == "list" else array
        scan.nulls += values.null_count
        if scan.nulls:
            raise _missing(column.name, scan.nulls)
        block = values.to_numpy(zero_copy_only=False)
        if column.kind == "list":
            block = block.reshape(len(array), scan.width)
        if out is None:
            out = np.empty((rows, *block.shape[1:]), dtype=column.dtype)
        out[start : start + len(array)] = block
        start += len(array)
    _check_row_count(column.name, rows=rows, read=start)
    if out is None:
        width = (scan.width or 0,) if column.kind == "list" else ()
        out = np.empty((rows, *width), dtype=column.dtype)
    return out


def _load_stacked_columns(
    parquet_file: pq.ParquetFile, stacked: Sequence[_Column], *, rows: int
) -> np.ndarray:
    dtype = np.result_type(*(column.dtype for column in stacked))
    out = np.empty((rows, len(stacked)), dtype=dtype)
    start = 0
    for batch in parquet_file.iter_batches(
        batch_size=_batch_rows(stacked), columns=[column.name for column in stacked]
    ):
        for j, (column, array) in enumerate(zip(stacked, batch.columns, strict=True)):
            array = _plain(array)
            if array.null_count:
                raise _missing(column.name, array.null_count)
            out[start : start + batch.num_rows, j] = array.to_numpy(zero_copy_only=False)
        start += batch.num_rows
    _check_row_count(_COLUMNS_ARRAY_NAME, rows=rows, read=start)
    return out


def _check_row_count(name: str, *, rows: int, read: int) -> None:
    if read != rows:
        raise InvalidInputError(
            "file",
            f"not a valid parquet file: its footer promises {rows} rows, array {name!r} has {read}",
        )


_INSPECTORS: dict[str, Callable[[str | os.PathLike[str]], list[ArrayInfo]]] = {
    "npy": _inspect_npy,
    "npz": _inspect_npz,
    "safetensors": _inspect_safetensors,
    "parquet": _inspect_parquet,
}
_LOADERS: dict[str, Callable[..., np.ndarray]] = {
    "npy": _load_npy,
    "npz": _load_npz,
    "safetensors": _load_safetensors,
    "parquet": _load_parquet,
}
