"""Parquet files: one array per column, plus ``"__columns__"`` for floating tables.

The file is opened and the read planned in :mod:`arrayfiles.parquet_plan`; here the
planned batches are read and checked (list lengths, missing values, string lengths,
decoded bytes) and the values scanned or copied into the array returned. Strings are
read as dictionaries and measured without expanding them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from api_schemas.datasets import ArrayInfo
from arrayfiles.checks import (
    check_not_empty,
    check_size,
    check_values,
    parse_errors,
    resolve_name,
)
from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.parquet_plan import (
    COLUMNS_ARRAY_NAME,
    Column,
    ParquetPlan,
    open_parquet,
    parquet_array_names,
    parquet_columns,
    plan_parquet_read,
    stacked_columns,
    stacked_dtype,
)
from arrayfiles.scan import ArrayStats, ScannedArray, ValueScan

__all__ = ["load", "scan"]


@dataclass
class _ColumnScan:
    """What the batches of one column read so far have shown."""

    rows: int = 0
    nulls: int = 0
    width: int | None = None
    max_chars: int = 0
    decoded_bytes: int = 0
    values: ValueScan | None = None


def _parquet_batches(
    parquet_file: pq.ParquetFile, plan: ParquetPlan, names: list[str]
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


def _list_values(column: Column, array: pa.Array, column_scan: _ColumnScan) -> pa.Array:
    """Check a batch of a list column for one length; return its values, flattened."""
    column_scan.nulls += array.null_count
    lengths = pc.min_max(pc.list_value_length(array)).as_py()
    if lengths["min"] is not None:
        if column_scan.width is None:
            column_scan.width = lengths["min"]
        for length in (lengths["min"], lengths["max"]):
            if length != column_scan.width:
                raise _ragged(column.name, column_scan.width, length)
    return array.flatten()


def _missing(name: str, nulls: int) -> ArrayFileError:
    return ArrayFileError(
        "file", f"array {name!r} holds {nulls} missing (null) values; fill or drop them"
    )


def _string_cells_bytes(rows: int, max_chars: int) -> int:
    # numpy keeps every string in a cell of the longest one's length, 4 bytes a character.
    return rows * max(1, max_chars) * 4


def _scan_string_batch(
    column: Column, array: pa.Array, column_scan: _ColumnScan, *, limit: int | None
) -> None:
    column_scan.rows += len(array)
    lengths = _string_lengths(array)
    column_scan.nulls += lengths.null_count
    column_scan.max_chars = max(column_scan.max_chars, pc.max(lengths).as_py() or 0)
    if limit is not None and _string_cells_bytes(column_scan.rows, column_scan.max_chars) > limit:
        raise ArrayTooLargeError(column.name, limit=limit)


def _numeric_batch(
    column: Column, array: pa.Array, column_scan: _ColumnScan, *, limit: int | None
) -> pa.Array:
    """Count a batch of a numeric column (rows, nulls, decoded bytes); return its values."""
    assert column.dtype is not None
    column_scan.rows += len(array)
    array = _plain(array)
    values = _list_values(column, array, column_scan) if column.kind == "list" else array
    column_scan.nulls += values.null_count
    # Counted as read too: the footer and page checks bound this, but cheaply re-checked.
    column_scan.decoded_bytes += len(values) * column.dtype.itemsize
    if limit is not None and column_scan.decoded_bytes > limit:
        raise ArrayTooLargeError(column.name, limit=limit)
    return values


def _scan_numeric_batch(
    column: Column, array: pa.Array, column_scan: _ColumnScan, *, rows: int, limit: int | None
) -> None:
    values = _numeric_batch(column, array, column_scan, limit=limit)
    assert column.dtype is not None
    tracked = column.dtype.kind == "f" or column.kind == "list"
    # A column with nulls is refused once counted; its values are not scanned further.
    if not tracked or column_scan.nulls or not len(values):
        return
    if column_scan.values is None:
        shape = (rows, column_scan.width or 0) if column.kind == "list" else (rows,)
        column_scan.values = ValueScan(dtype=column.dtype, shape=shape)
    column_scan.values.feed(values.to_numpy(zero_copy_only=False))


def scan(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    """Validate a parquet file and scan its columns (see :func:`arrayfiles.scan_arrays`).

    The columns are read together, a batch of rows at a time, as planned by
    :func:`~arrayfiles.parquet_plan.plan_parquet_read`.
    """
    parquet = open_parquet(path, limit=limit)
    columns = parquet_columns(parquet)
    stacked = stacked_columns(columns)
    plan = plan_parquet_read(path, parquet, columns, stacked=stacked, limit=limit)
    scans = {column.name: _ColumnScan(width=column.width) for column in columns}
    stacked_values = (
        ValueScan(dtype=stacked_dtype(stacked), shape=(plan.rows, len(stacked)))
        if stacked and plan.rows
        else None
    )
    with parse_errors("parquet"):
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
        column_scan = scans[column.name]
        _check_row_count(column.name, rows=plan.rows, read=column_scan.rows)
        if column.kind == "string":
            shape, dtype = [column_scan.rows], f"<U{max(1, column_scan.max_chars)}"
        elif column.kind == "list":
            assert column.dtype is not None
            shape, dtype = [column_scan.rows, column_scan.width or 0], column.dtype.name
        else:
            assert column.dtype is not None
            shape, dtype = [column_scan.rows], column.dtype.name
        check_not_empty(column.name, shape)
        if column_scan.nulls:
            raise _missing(column.name, column_scan.nulls)
        stats = (
            column_scan.values.stats()
            if column_scan.values
            else ArrayStats(n_nonfinite=0, zero_rows=0)
        )
        check_values(column.name, stats)
        arrays.append(
            ScannedArray(info=ArrayInfo(name=column.name, shape=shape, dtype=dtype), stats=stats)
        )
    if stacked:
        info = ArrayInfo(
            name=COLUMNS_ARRAY_NAME,
            shape=[plan.rows, len(stacked)],
            dtype=stacked_dtype(stacked).name,
        )
        stats = stacked_values.stats() if stacked_values else ArrayStats(0, 0)
        arrays.append(ScannedArray(info=info, stats=stats))
    return arrays


def _stacked_block(batch: pa.RecordBatch, stacked: Sequence[Column]) -> np.ndarray:
    dtype = stacked_dtype(stacked)
    block = np.empty((batch.num_rows, len(stacked)), dtype=dtype)
    for j, column in enumerate(stacked):
        block[:, j] = _plain(batch.column(column.name)).to_numpy(zero_copy_only=False)
    return block


def load(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    """Load one column, or ``"__columns__"``, of a parquet file.

    See :func:`arrayfiles.load_array`; ``mmap`` is ignored.
    """
    del mmap  # parquet pages are encoded: there is nothing to map
    parquet = open_parquet(path, limit=limit)
    columns = parquet_columns(parquet)
    name = resolve_name(name, parquet_array_names(columns))
    stacked = stacked_columns(columns)
    if name == COLUMNS_ARRAY_NAME and stacked:
        plan = plan_parquet_read(path, parquet, stacked, stacked=stacked, limit=limit)
        with parse_errors("parquet"):
            return _load_stacked_columns(parquet.file, stacked, plan)
    column = next(column for column in columns if column.name == name)
    plan = plan_parquet_read(path, parquet, [column], stacked=(), limit=limit)
    with parse_errors("parquet"):
        if column.kind == "string":
            return _load_string_column(parquet.file, column, plan, limit=limit)
        return _load_numeric_column(parquet.file, column, plan, limit=limit)


def _load_string_column(
    parquet_file: pq.ParquetFile, column: Column, plan: ParquetPlan, *, limit: int | None
) -> np.ndarray:
    # numpy needs the longest string before it can allocate, so a first pass measures
    # (without expanding the dictionary) and a second fills.
    column_scan = _ColumnScan()
    for batch in _parquet_batches(parquet_file, plan, [column.name]):
        _scan_string_batch(column, batch.column(0), column_scan, limit=limit)
    _check_row_count(column.name, rows=plan.rows, read=column_scan.rows)
    if column_scan.nulls:
        raise _missing(column.name, column_scan.nulls)
    out = np.empty(plan.rows, dtype=f"<U{max(1, column_scan.max_chars)}")
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
    parquet_file: pq.ParquetFile, column: Column, plan: ParquetPlan, *, limit: int | None
) -> np.ndarray:
    assert column.dtype is not None
    column_scan = _ColumnScan(width=column.width)
    out: np.ndarray | None = None
    start = 0
    for batch in _parquet_batches(parquet_file, plan, [column.name]):
        values = _numeric_batch(column, batch.column(0), column_scan, limit=limit)
        rows = batch.num_rows
        if column_scan.nulls:
            raise _missing(column.name, column_scan.nulls)
        if not rows:
            continue
        block = values.to_numpy(zero_copy_only=False)
        if column.kind == "list":
            block = block.reshape(rows, column_scan.width or 0)
        if out is None:
            shape = (plan.rows, *block.shape[1:])
            check_size(column.name, math.prod(shape) * column.dtype.itemsize, limit)
            out = np.empty(shape, dtype=column.dtype)
        if start + rows > plan.rows:
            break
        out[start : start + rows] = block
        start += rows
    _check_row_count(column.name, rows=plan.rows, read=column_scan.rows)
    if out is None:
        width = (column_scan.width or 0,) if column.kind == "list" else ()
        out = np.empty((plan.rows, *width), dtype=column.dtype)
    return out


def _load_stacked_columns(
    parquet_file: pq.ParquetFile, stacked: Sequence[Column], plan: ParquetPlan
) -> np.ndarray:
    out = np.empty((plan.rows, len(stacked)), dtype=stacked_dtype(stacked))
    start = 0
    for batch in _parquet_batches(parquet_file, plan, [column.name for column in stacked]):
        for column, array in zip(stacked, batch.columns, strict=True):
            if array.null_count:
                raise _missing(column.name, array.null_count)
        stop = start + batch.num_rows
        if stop > plan.rows:
            _check_row_count(COLUMNS_ARRAY_NAME, rows=plan.rows, read=stop)
        out[start:stop] = _stacked_block(batch, stacked)
        start = stop
    _check_row_count(COLUMNS_ARRAY_NAME, rows=plan.rows, read=start)
    return out


def _check_row_count(name: str, *, rows: int, read: int) -> None:
    if read != rows:
        raise ArrayFileError(
            "file",
            f"not a valid parquet file: its footer promises {rows} rows, array {name!r} has {read}",
        )
