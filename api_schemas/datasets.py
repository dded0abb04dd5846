"""Uploaded datasets: content-addressed files holding one or more named arrays."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from api_schemas.base import RequestModel, ResponseModel

DatasetFormat = Literal["npy", "npz", "safetensors", "parquet", "torchscript", "pt2", "onnx"]
"""How an upload is encoded: files of arrays (``npy``, ``npz``, ``safetensors``,
``parquet``; a model's weights are ``safetensors``) or whole models (``torchscript``:
``torch.jit.save``; ``pt2``: ``torch.export.save``; ``onnx``: an ONNX model), which list no
arrays."""

MODEL_FORMATS: frozenset[str] = frozenset({"torchscript", "pt2", "onnx"})

FORMAT_BY_SUFFIX: dict[str, str] = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".onnx": "onnx",
    ".pt2": "pt2",
}
"""The format a file's suffix tells, where it tells one (a TorchScript archive is a
``.pt`` like much else, so it is always named)."""


class ArrayInfo(ResponseModel):
    name: str
    shape: list[int]
    dtype: str


class DatasetOut(ResponseModel):
    id: str
    sha256: str
    format: DatasetFormat
    size_bytes: int
    arrays: list[ArrayInfo] = Field(description="The arrays it holds; empty for a model file.")
    created_at: datetime


class DatasetRef(RequestModel):
    """One array of an uploaded dataset; `array` may be omitted when it holds just one."""

    dataset: str = Field(min_length=1, max_length=128)
    array: str | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _not_a_bare_id(cls, value: Any) -> Any:
        # A dataset id where the object belongs is the commonest slip; pydantic's own
        # "valid dictionary or object" names neither the shape nor the id.
        if isinstance(value, str):
            raise ValueError(
                "a dataset reference is an object, not a bare id: pass "
                f'{{"dataset": "{value[:128]}", "array": "NAME"}} ("array" may be left out '
                "when the dataset holds one array)"
            )
        return value


class DatasetList(ResponseModel):
    """One page of the tenant's datasets, newest first."""

    items: list[DatasetOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next (older) page; null on the last."
    )
