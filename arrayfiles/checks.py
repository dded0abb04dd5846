"""The checks every format's reader makes: dtypes, shapes, sizes, values, names, parsing.

Each raises :class:`~arrayfiles.errors.ArrayFileError` (or
:class:`~arrayfiles.errors.ArrayTooLargeError`) with the message a user sees, so the
wording is the same whatever the format.
"""

from __future__ import annotations

import errno
import math
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.scan import ArrayStats

__all__ = [
    "MAX_METADATA_BYTES",
    "SUPPORTED_DTYPES",
    "check_not_empty",
    "check_numpy_dtype",
    "check_shape",
    "check_size",
    "check_values",
    "dtype_label",
    "parse_errors",
    "resolve_name",
]

SUPPORTED_DTYPES = (
    "bool, signed and unsigned integers, float16/32/64, bfloat16 (safetensors only) "
    "and unicode strings"
)
# Metadata parsed whole into memory (a safetensors JSON header, a parquet footer): real
# files need well under 1 MiB even for thousands of tensors or columns, and parsing
# multiplies the bytes several times over in Python objects.
MAX_METADATA_BYTES = 16 << 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_size(name: str, nbytes: int, limit: int | None) -> None:
    """Refuse array ``name`` when its ``nbytes`` pass ``limit`` (None: no limit)."""
    if limit is not None and nbytes > limit:
        raise ArrayTooLargeError(name, limit=limit, size=nbytes)


@contextmanager
def parse_errors(what: str) -> Iterator[None]:
    """Turn the errors parsers raise on malformed bytes into ``ArrayFileError``.

    Parameters
    ----------
    what : str
        The format as the message names it: ``"not a valid {what} file: ..."``.
    """
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
        *_library_errors(),
    ) as error:
        raise ArrayFileError("file", f"not a valid {what} file: {error}") from error


def _library_errors() -> tuple[type[Exception], ...]:
    """The parse errors of pyarrow and safetensors, of those already imported.

    A library that is not loaded cannot have raised; looking them up rather than
    importing them keeps an .npy or .npz read from loading pyarrow (~30 ms of start-up).
    """
    errors: list[type[Exception]] = []
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        errors.append(pyarrow.ArrowException)
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None:
        errors.append(safetensors.SafetensorError)
    return tuple(errors)


def resolve_name(requested: str | None, available: Sequence[str]) -> str:
    """The array to load: ``requested``, or the only one there is when it is None.

    Raises
    ------
    ArrayFileError
        ``field="array"`` when ``requested`` is none of ``available``, or is None while
        there are several; ``field="file"`` when there are none.
    """
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


def check_numpy_dtype(name: str, dtype: np.dtype) -> None:
    """Refuse object (pickled) arrays and dtypes outside :data:`SUPPORTED_DTYPES`."""
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
        f"supported dtypes are {SUPPORTED_DTYPES}",
    )


def dtype_label(dtype: np.dtype) -> str:
    """How a dtype is listed: its numpy name, or ``"<U{length}"`` for strings."""
    return dtype.str if dtype.kind == "U" else dtype.name


def check_shape(name: str, shape: Sequence[int]) -> None:
    """Refuse a declared shape with a negative dimension."""
    # numpy's header parser accepts any integers; a negative one would give a negative
    # element count, which later arithmetic (sizes, offsets) must never see.
    if any(dim < 0 for dim in shape):
        raise ArrayFileError(
            "file",
            f"array {name!r} has a negative dimension in its header (shape {tuple(shape)}); "
            "the file is damaged or forged: save the array again with numpy.save",
        )


def check_not_empty(name: str, shape: Sequence[int]) -> None:
    """Refuse an array with no elements."""
    if math.prod(shape) == 0:
        raise ArrayFileError("file", f"array {name!r} is empty (shape {tuple(shape)})")


def check_values(name: str, stats: ArrayStats) -> None:
    """Refuse an array holding NaN or Inf, or float64 values that overflow float32."""
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
