"""Open a parquet file, map its columns to arrays, and plan a read bounded in memory.

Before a value is read, what the columns will decompress to is checked against the
caller's limit: the footer's sizes and counts (read by :mod:`arrayfiles.parquet_layout`,
not pyarrow, which may abort on forged metadata), then each column chunk's page headers,
which pyarrow sizes its buffers from. The plan that comes out says how many rows to read
at once so that one batch takes about :data:`~arrayfiles.scan.CHUNK_BYTES`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from arrayfiles.checks import MAX_METADATA_BYTES, check_size, parse_errors
from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.parquet_layout import FileLayout, LayoutError, read_footer, walk_column_chunk
from arrayfiles.scan import CHUNK_BYTES, CHUNK_ELEMENTS

__all__ = [
    "COLUMNS_ARRAY_NAME",
    "Column",
    "Parquet",
    "ParquetPlan",
    "open_parquet",
    "parquet_array_names",
    "parquet_columns",
    "plan_parquet_read",
    "stacked_columns",
    "stacked_dtype",
]

# The array of a table's floating columns side by side (see the package docstring).
COLUMNS_ARRAY_NAME = "__columns__"
_MAX_BATCH_ROWS = 1 << 20
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Column:
    """How one parquet column maps to an array."""

    name: str
    kind: Literal["scalar", "string", "list"]
    dtype: np.dtype | None  # element dtype; None for strings
    width: int | None  # list length when the schema fixes it
    leaf: int = 0  # index of its parquet (leaf) column


@dataclass(frozen=True)
class Parquet:
    """An opened parquet file: pyarrow's reader, and the layout its footer declares."""

    file: pq.ParquetFile
    layout: FileLayout


@dataclass(frozen=True)
class ParquetPlan:
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


def _classify_column(arrow_field: pa.Field, leaf: int) -> Column:
    arrow_type = arrow_field.type
    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    name = arrow_field.name
    if _is_string(value_type):
        return Column(name=name, kind="string", dtype=None, width=None, leaf=leaf)
    dtype = _numeric_dtype(value_type)
    if dtype is not None:
        return Column(name=name, kind="scalar", dtype=dtype, width=None, leaf=leaf)
    if (
        pa.types.is_fixed_size_list(arrow_type)
        or pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
    ):
        dtype = _numeric_dtype(arrow_type.value_type)
        if dtype is not None:
            width = arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None
            return Column(name=name, kind="list", dtype=dtype, width=width, leaf=leaf)
    raise ArrayFileError(
        "file",
        f"column {name!r} has type {arrow_type}, which is not supported; columns must "
        "hold numbers, booleans, strings, or lists of numbers of one length",
    )


def parquet_columns(parquet: Parquet) -> list[Column]:
    """Map each column of the table to an array, refusing unsupported or nested ones."""
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


def stacked_columns(columns: Sequence[Column]) -> list[Column]:
    """The floating columns that make up ``"__columns__"``, or [] when it is absent."""
    floating = [
        c for c in columns if c.kind == "scalar" and c.dtype is not None and c.dtype.kind == "f"
    ]
    taken = any(c.name == COLUMNS_ARRAY_NAME for c in columns)
    return floating if len(floating) >= 2 and not taken else []


def stacked_dtype(stacked: Sequence[Column]) -> np.dtype:
    """The dtype of ``"__columns__"``: one that holds every stacked column's values."""
    return np.result_type(*(column.dtype for column in stacked))


def parquet_array_names(columns: Sequence[Column]) -> list[str]:
    """The arrays the table holds: its columns, then ``"__columns__"`` where present."""
    names = [column.name for column in columns]
    return [*names, COLUMNS_ARRAY_NAME] if stacked_columns(columns) else names


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
    if footer_size > MAX_METADATA_BYTES:
        raise ArrayFileError(
            "file",
            f"the parquet footer takes {footer_size} bytes; footers of more than "
            f"{MAX_METADATA_BYTES} bytes are refused: write fewer row groups or columns",
        )
    if limit is not None and footer_size > limit:
        raise ArrayTooLargeError("", limit=limit, size=footer_size, subject="the parquet footer")
    return footer_size


def _invalid_parquet(message: str) -> ArrayFileError:
    return ArrayFileError("file", f"not a valid parquet file: {message}")


def open_parquet(path: str | os.PathLike[str], *, limit: int | None) -> Parquet:
    """Open a parquet file for streaming, its footer checked and read without pyarrow.

    Raises
    ------
    ArrayTooLargeError
        When the footer is longer than ``limit``.
    ArrayFileError
        When the file does not parse, its footer is longer than 16 MiB, or the footer
        pyarrow reads and the one read here disagree.
    """
    footer_size = _parquet_footer_size(path, limit=limit)
    with parse_errors("parquet"):
        # By default pyarrow reads whole row groups (often the whole file) ahead; a
        # bounded read buffer without pre-buffering streams the pages instead.
        parquet_file = pq.ParquetFile(path, pre_buffer=False, buffer_size=CHUNK_BYTES)
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
        with parse_errors("parquet"):
            try:
                parquet_file = pq.ParquetFile(
                    path,
                    metadata=metadata,
                    read_dictionary=strings,
                    pre_buffer=False,
                    buffer_size=CHUNK_BYTES,
                )
            except KeyError as error:
                raise _invalid_parquet(f"ambiguous column {error}") from None
    return Parquet(file=parquet_file, layout=layout)


def _is_string_field(arrow_field: pa.Field) -> bool:
    arrow_type = arrow_field.type
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return _is_string(arrow_type)


def _check_declared_sizes(
    column: Column, *, uncompressed: int, values: int, rows: int, limit: int | None
) -> None:
    if limit is None:
        return
    check_size(column.name, uncompressed, limit)
    # Whatever the pages hold, reading makes something per row (a value, a list offset,
    # a string cell of at least one character), so the row count is held to the limit too.
    if column.dtype is None:
        decoded = rows * 4
    elif column.kind == "list":
        decoded = max(values, rows * (column.width or 0)) * column.dtype.itemsize
        decoded = max(decoded, rows * 4)
    else:
        decoded = max(values, rows) * column.dtype.itemsize
    check_size(column.name, decoded, limit)


def plan_parquet_read(
    path: str | os.PathLike[str],
    parquet: Parquet,
    columns: Sequence[Column],
    *,
    stacked: Sequence[Column],
    limit: int | None,
) -> ParquetPlan:
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
        check_size(COLUMNS_ARRAY_NAME, rows * len(stacked) * stacked_dtype(stacked).itemsize, limit)
    if limit is not None:
        _check_pages(path, parquet, columns, declared_bytes, declared_values, limit=limit)
    batch_rows = [
        _batch_rows(group.num_rows, data_bytes=sum(sizes), values=sum(values))
        for group, sizes, values in zip(groups, declared_bytes, declared_values, strict=True)
    ]
    return ParquetPlan(batch_rows=batch_rows, rows=rows)


def _check_pages(
    path: str | os.PathLike[str],
    parquet: Parquet,
    columns: Sequence[Column],
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
    by_bytes = CHUNK_BYTES * rows // max(1, data_bytes)
    by_values = CHUNK_ELEMENTS * rows // max(1, values)
    return max(1, min(_MAX_BATCH_ROWS, by_bytes, by_values))
