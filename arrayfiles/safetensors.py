"""``.safetensors`` files: a JSON header, then each tensor's raw little-endian bytes.

One array per tensor, named after the tensor. The header's length is checked before
it is parsed; ``safe_open`` then validates it (offsets cover the data exactly, sizes
match shapes and dtypes). bfloat16 tensors are widened to float32, since numpy has no
bfloat16 without ml_dtypes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open

from api_schemas.datasets import ArrayInfo
from arrayfiles.checks import (
    MAX_METADATA_BYTES,
    SUPPORTED_DTYPES,
    check_not_empty,
    check_shape,
    check_size,
    check_values,
    parse_errors,
    resolve_name,
)
from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.scan import CHUNK_BYTES, ScannedArray, ValueScan, scan_data, truncated

__all__ = ["load", "scan"]

# safetensors dtype code -> how the bytes are stored; BF16 is kept as raw 16-bit words
# because numpy has no bfloat16 without ml_dtypes, and is widened to float32 on reading.
_STORAGE = {
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


def _bfloat16_to_float32(words: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 words (uint16) to float32."""
    # bfloat16 is the upper half of a float32, so widening is exact.
    return (words.astype(np.uint32) << 16).view(np.float32)


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
            return _STORAGE[self.code]
        except KeyError:
            kind = "complex " if self.code.startswith("C") else ""
            raise ArrayFileError(
                "file",
                f"array {self.name!r} has {kind}dtype {self.code}, which is not supported; "
                f"supported dtypes are {SUPPORTED_DTYPES}",
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
        """Bytes of the array :func:`load` returns (bfloat16 doubles as float32)."""
        return math.prod(self.shape) * self.loaded_dtype.itemsize


def _header_size(path: str | os.PathLike[str], *, limit: int | None) -> int:
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
    if header_size > MAX_METADATA_BYTES:
        raise ArrayFileError(
            "file",
            f"the safetensors header takes {header_size} bytes; headers of more than "
            f"{MAX_METADATA_BYTES} bytes are refused: split the tensors into several files",
        )
    if limit is not None and header_size > limit:
        raise ArrayTooLargeError(
            "", limit=limit, size=header_size, subject="the safetensors header"
        )
    return header_size


def _tensors(path: str | os.PathLike[str], *, limit: int | None) -> list[_Tensor]:
    """List the tensors, in file order, with their absolute data offsets.

    ``safe_open`` validates the header (offsets cover the data exactly, sizes match
    shapes and dtypes) but does not expose where each tensor lies, so the JSON header
    is read again here, once its length is known to be bounded.
    """
    header_size = _header_size(path, limit=limit)
    with parse_errors("safetensors"):
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
        check_shape(name, shape)
        result.append(
            _Tensor(
                name=name, code=code, shape=shape, offset=data_start + begin, nbytes=end - begin
            )
        )
    return result


def scan(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    """Validate a safetensors file and scan its tensors (see :func:`arrayfiles.scan_arrays`)."""
    tensors = _tensors(path, limit=limit)
    arrays = []
    with open(path, "rb") as stream:
        for tensor in tensors:
            storage = tensor.storage
            check_not_empty(tensor.name, tensor.shape)
            check_size(tensor.name, tensor.loaded_nbytes, limit)
            values = ValueScan(dtype=tensor.loaded_dtype, shape=tensor.shape)
            if storage.kind in "biuf":
                stream.seek(tensor.offset)
                scan_data(
                    stream,
                    name=tensor.name,
                    dtype=storage,
                    count=math.prod(tensor.shape),
                    values=values,
                    widen=tensor.widen,
                )
            stats = values.stats()
            check_values(tensor.name, stats)
            info = ArrayInfo(name=tensor.name, shape=list(tensor.shape), dtype=tensor.dtype_label)
            arrays.append(ScannedArray(info=info, stats=stats))
    return arrays


def load(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    """Load one tensor of a safetensors file (see :func:`arrayfiles.load_array`)."""
    tensors = {tensor.name: tensor for tensor in _tensors(path, limit=limit)}
    tensor = tensors[resolve_name(name, list(tensors))]
    storage = tensor.storage
    count = math.prod(tensor.shape)
    check_size(tensor.name, tensor.loaded_nbytes, limit)
    if tensor.widen:
        return _read_bfloat16(path, tensor, count=count)
    # mmap refuses zero length, and numpy cannot map a 0-d array at an offset.
    if mmap and count and tensor.shape:
        return np.memmap(path, dtype=storage, mode="r", offset=tensor.offset, shape=tensor.shape)
    with parse_errors("safetensors"), safe_open(path, framework="numpy") as tensors_file:
        return tensors_file.get_tensor(tensor.name)


def _read_bfloat16(path: str | os.PathLike[str], tensor: _Tensor, *, count: int) -> np.ndarray:
    widened = np.empty(count, dtype=np.float32)
    chunk_elements = CHUNK_BYTES // 2
    with open(path, "rb") as stream:
        stream.seek(tensor.offset)
        for start in range(0, count, chunk_elements):
            stop = min(count, start + chunk_elements)
            words = np.fromfile(stream, dtype="<u2", count=stop - start)
            if words.size < stop - start:
                raise truncated(tensor.name, needed=tensor.nbytes, present=2 * (start + words.size))
            widened[start:stop] = _bfloat16_to_float32(words)
    return widened.reshape(tensor.shape)
