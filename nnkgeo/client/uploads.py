"""Datasets: encoding what a user uploads (arrays, tensors, files, tables) and its calls.

Arrays and tensors are sent as ``.npy`` without copying their data, files are streamed
from disk, and DataFrames or pyarrow Tables are written as parquet. numpy, pyarrow and
pandas are imported only when an upload needs them, and torch never: a tensor is
recognised by its module's name.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from api_schemas import DatasetList, DatasetOut
from api_schemas.datasets import FORMAT_BY_SUFFIX, DatasetFormat
from nnkgeo.client.calls import Call, parse_model, parse_nothing, path_segment
from nnkgeo.errors import Hint, UsageError

if TYPE_CHECKING:
    import numpy as np

UPLOAD_CHUNK_BYTES = 1 << 20
# The service's list of formats, not a copy of it.
UploadFormat = DatasetFormat
_FORMAT_CHOICES = "|".join(repr(name) for name in get_args(DatasetFormat))


@dataclass(frozen=True)
class UploadBody:
    """An upload, re-readable for every attempt: a file streamed from disk, or buffers."""

    format: UploadFormat
    length: int
    path: Path | None = None
    buffers: tuple[bytes | memoryview, ...] = ()

    def sync_chunks(self) -> Iterator[bytes]:
        """The body in chunks of at most ``UPLOAD_CHUNK_BYTES``, read from the start."""
        if self.path is not None:
            with self.path.open("rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    yield chunk
            return
        yield from _buffer_chunks(self.buffers)

    async def async_chunks(self) -> AsyncIterator[bytes]:
        """The same chunks, for the asynchronous client."""
        if self.path is not None:
            import anyio  # httpx's own dependency

            async with await anyio.open_file(self.path, "rb") as file:
                while chunk := await file.read(UPLOAD_CHUNK_BYTES):
                    yield chunk
            return
        for chunk in _buffer_chunks(self.buffers):
            yield chunk


def _buffer_chunks(buffers: Sequence[bytes | memoryview]) -> Iterator[bytes]:
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        for start in range(0, len(view), UPLOAD_CHUNK_BYTES):
            yield bytes(view[start : start + UPLOAD_CHUNK_BYTES])


def format_for_path(path: str | os.PathLike[str]) -> UploadFormat:
    """The upload format a file's suffix names (``.npy``, ``.npz``, ``.safetensors``,
    parquet; models: ``.onnx``, ``.pt2``; a TorchScript ``.pt`` needs ``format=``).

    Raises
    ------
    UsageError
        When the suffix is none of them; pass ``format=`` then. A ``.csv`` or ``.tsv``
        file is refused with the command that converts it (the service reads no text).
    """
    suffix = Path(path).suffix.lower()
    if suffix in _TEXT_TABLE_DELIMITERS:
        raise _text_table_refused(Path(path), _TEXT_TABLE_DELIMITERS[suffix])
    try:
        return FORMAT_BY_SUFFIX[suffix]  # type: ignore[return-value]
    except KeyError:
        known = ", ".join(sorted(FORMAT_BY_SUFFIX))
        raise UsageError(
            f"cannot tell the format of {os.fspath(path)!r} from its suffix ({known})",
            hint=Hint(
                python=f"pass format={_FORMAT_CHOICES}",
                cli=f"pass --format {'|'.join(get_args(DatasetFormat))}",
            ),
        ) from None


_TEXT_TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}


def _text_table_refused(path: Path, delimiter: str) -> UsageError:
    converted = path.with_suffix(".npy").name
    conversion = f"np.save({converted!r}, np.loadtxt({path.name!r}, delimiter={delimiter!r}))"
    return UsageError(
        f"{path.name}: {path.suffix[1:].upper()} is not supported (the service reads arrays "
        "as .npy, .npz, .safetensors or .parquet)",
        hint=Hint(
            python=(
                f"upload the array: upload(np.loadtxt({path.name!r}, delimiter={delimiter!r})), "
                f"or convert the file: {conversion}"
            ),
            cli=f'convert it first: python -c "import numpy as np; {conversion}"',
        ),
    )


def is_table(obj: object) -> bool:
    """Whether ``obj`` is a pandas or pyarrow object, told without importing either."""
    return _module_of(obj).startswith(("pandas", "pyarrow"))


def _module_of(obj: object) -> str:
    return type(obj).__module__ or ""


def upload_body(obj: object, fmt: str | None) -> UploadBody:
    """Encode what :meth:`Client.upload` accepts, without importing torch or pandas.

    Raises
    ------
    UsageError
        For a missing file, an unknown format, raw bytes without a format, a format
        that does not apply to the object, or an object array.
    """
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.is_file():
            raise UsageError(f"no such file: {os.fspath(path)}")
        chosen = _check_format(fmt) if fmt else format_for_path(path)
        return UploadBody(format=chosen, length=path.stat().st_size, path=path)
    if isinstance(obj, bytes | bytearray | memoryview):
        if fmt is None:
            raise UsageError(f"uploading raw bytes needs format={_FORMAT_CHOICES}")
        view = memoryview(obj).cast("B")
        return UploadBody(format=_check_format(fmt), length=len(view), buffers=(view,))
    module = _module_of(obj)
    if module.startswith("pyarrow") or (
        module.startswith("pandas") and type(obj).__name__ == "DataFrame"
    ):
        return _parquet_body(obj, fmt)
    if module.startswith("torch") and hasattr(obj, "detach"):
        obj = _tensor_to_numpy(obj)
    elif module.startswith("pandas"):
        obj = obj.to_numpy()  # type: ignore[attr-defined]  # a Series: labels or ids
    if fmt not in (None, "npy"):
        raise UsageError(f"arrays are uploaded as npy; format={fmt!r} applies to files only")
    return _npy_body(obj)


def _check_format(fmt: str) -> UploadFormat:
    if fmt not in get_args(UploadFormat):
        raise UsageError(f"format must be one of {_FORMAT_CHOICES}, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def _npy_body(obj: object) -> UploadBody:
    """The ``.npy`` file ``np.save(..., allow_pickle=False)`` writes, without copying the data.

    The header is numpy's own; the data is the array's buffer, sent in slices.
    """
    import numpy as np

    array = np.asarray(obj)
    if array.dtype.hasobject:
        raise UsageError(
            "cannot upload an object array (it would need pickling, which the service "
            "refuses); convert it to numbers or fixed-width strings first"
        )
    array = np.ascontiguousarray(array)
    header_fields = np.lib.format.header_data_from_array_1_0(array)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, header_fields)
    except ValueError:  # a header over 64 KiB: format 2.0, as np.save would choose
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, header_fields)
    data = memoryview(array.reshape(-1).view(np.uint8))
    return UploadBody(
        format="npy",
        length=len(header.getbuffer()) + array.nbytes,
        buffers=(header.getvalue(), data),
    )


def _parquet_body(table: Any, fmt: str | None) -> UploadBody:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in (None, "parquet"):
        raise UsageError(f"tables are uploaded as parquet; format={fmt!r} does not apply")
    if _module_of(table).startswith("pandas"):
        table = pa.Table.from_pandas(table, preserve_index=False)
    elif isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    buffer = sink.getvalue()
    return UploadBody(format="parquet", length=buffer.size, buffers=(memoryview(buffer),))


# --------------------------------------------------------------------------- calls


def upload_call(obj: object, fmt: str | None) -> Call[DatasetOut]:
    """``POST /v1/datasets`` with ``obj`` encoded (see :func:`upload_body`)."""
    body = upload_body(obj, fmt)
    return Call(
        "POST", "/v1/datasets", parse_model(DatasetOut), params={"format": body.format}, body=body
    )


def dataset_call(dataset_id: str) -> Call[DatasetOut]:
    """``GET /v1/datasets/{id}``."""
    return Call("GET", f"/v1/datasets/{path_segment(dataset_id)}", parse_model(DatasetOut))


def datasets_call(limit: int, cursor: str | None) -> Call[DatasetList]:
    """``GET /v1/datasets``: one page of the tenant's datasets, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    return Call("GET", "/v1/datasets", parse_model(DatasetList), params=params)


def delete_dataset_call(dataset_id: str) -> Call[None]:
    """``DELETE /v1/datasets/{id}``."""
    return Call("DELETE", f"/v1/datasets/{path_segment(dataset_id)}", parse_nothing)
