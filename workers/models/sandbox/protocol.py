"""The frames a sandboxed model process sends its worker over a pipe.

A frame is an 8-byte big-endian length, a JSON header of that many bytes, then the raw
bytes of the arrays the header lists (``"arrays": [{"shape", "dtype"}]``, C order). The
worker reads every length against a bound before it allocates anything, so a hostile
child can neither make it allocate nor make it wait for bytes that never come.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_HEADER_BYTES", "FrameError", "read_frame", "write_frame"]

MAX_HEADER_BYTES = 1 << 20
_LENGTH = struct.Struct(">Q")
_ALLOWED_DTYPES = frozenset({"float32"})


class FrameError(RuntimeError):
    """The child sent something that is not a well-formed frame within the bounds."""


def write_frame(
    stream: BinaryIO, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
) -> None:
    """Send one frame: ``header`` plus ``arrays`` (float32, described in the header)."""
    import numpy as np

    contiguous = [np.ascontiguousarray(array, dtype=np.float32) for array in arrays]
    header = {
        **header,
        "arrays": [{"shape": list(array.shape), "dtype": "float32"} for array in contiguous],
    }
    encoded = json.dumps(header).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded)
    for array in contiguous:
        stream.write(memoryview(array).cast("B"))
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = stream.read(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise FrameError(f"the stream ended {size - len(chunks)} bytes early")
        chunks += chunk
    return bytes(chunks)


def read_frame(
    stream: BinaryIO, *, max_array_bytes: int
) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """The next frame, or None at a clean end of stream.

    Raises
    ------
    FrameError
        For a header over :data:`MAX_HEADER_BYTES`, a header that is not a JSON object,
        arrays of another dtype or with negative sizes, arrays that add up to more than
        ``max_array_bytes``, or a stream that ends inside a frame.
    """
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        return None
    if len(prefix) < _LENGTH.size:
        prefix += _read_exactly(stream, _LENGTH.size - len(prefix))
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise FrameError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exactly(stream, length))
    except ValueError as error:
        raise FrameError(f"a header that is not JSON: {error}") from None
    import numpy as np

    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise FrameError("a header that is not a JSON object with a list of arrays")
    shapes = []
    total = 0
    for described in header.get("arrays", []):
        shape = described.get("shape") if isinstance(described, dict) else None
        if (
            not isinstance(shape, list)
            or not all(isinstance(size, int) and size >= 0 for size in shape)
            or described.get("dtype") not in _ALLOWED_DTYPES
        ):
            raise FrameError(f"an array described as {str(described)[:200]}")
        shapes.append(tuple(shape))
        total += 4 * int(np.prod(shape, dtype=np.int64)) if shape else 4
        if total > max_array_bytes:
            raise FrameError(f"arrays of more than {max_array_bytes} bytes")
    return header, [_read_array(stream, shape) for shape in shapes]


def _read_array(stream: BinaryIO, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    array = np.empty(shape, dtype=np.float32)
    view = memoryview(array.reshape(-1)).cast("B")
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled : filled + (1 << 20)])  # type: ignore[attr-defined]
        if not count:
            raise FrameError(f"the stream ended {len(view) - filled} bytes early")
        filled += count
    return array
