"""Read where a parquet file's data lie, and what they inflate to, without pyarrow.

Two things pyarrow cannot be trusted with on a hostile file:

- Its page reader allocates each page's decompression buffer from the size the page
  header declares, and inflates into it, before anything compares that size with the
  footer: a 33 KB file whose footer declares 16 KB can make it inflate 1 GiB.
- Its Python accessors of column-chunk metadata (``RowGroupMetaData.column``) abort the
  whole process (a C++ exception through ``std::terminate``) on some malformed
  statistics, where its readers raise an error.

So the footer's row groups and column chunks, and the page headers of a chunk, are read
here instead, in Thrift's compact protocol, keeping only the numbers that bound memory:
sizes, value and row counts, offsets. Every other field is skipped. Anything malformed
raises :class:`LayoutError`.

References
----------
Apache Parquet format, ``parquet.thrift`` (``FileMetaData``, ``RowGroup``,
``ColumnChunk``, ``ColumnMetaData``, ``PageHeader``); Apache Thrift, "Thrift Compact
protocol encoding".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "ChunkLayout",
    "ChunkPages",
    "FileLayout",
    "LayoutError",
    "RowGroupLayout",
    "read_footer",
    "walk_column_chunk",
]

# Arrow refuses page headers above 16 MiB too (its default max page header size).
MAX_PAGE_HEADER_BYTES = 16 << 20
_FIRST_READ_BYTES = 256
_MAX_NESTING = 32

# Thrift compact protocol type codes.
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = 1, 2, 3, 4, 5, 6, 7, 8
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12


class LayoutError(ValueError):
    """Footer or page-header bytes that do not parse, or a page leaving its chunk."""


class _NeedMore(Exception):
    """The structure runs past the bytes read so far."""


@dataclass(frozen=True)
class ChunkLayout:
    """One column chunk, as the footer declares it.

    Attributes
    ----------
    num_values : int
        Values (levels included, so nulls count).
    uncompressed_bytes, compressed_bytes : int
        Sizes of its pages, headers included.
    start : int
        Offset of its first page (the dictionary page, when there is one before the
        data pages), where pyarrow starts reading it.
    """

    num_values: int
    uncompressed_bytes: int
    compressed_bytes: int
    start: int


@dataclass(frozen=True)
class RowGroupLayout:
    num_rows: int
    columns: tuple[ChunkLayout, ...]


@dataclass(frozen=True)
class FileLayout:
    num_rows: int
    row_groups: tuple[RowGroupLayout, ...]


@dataclass(frozen=True)
class ChunkPages:
    """What the page headers of one column chunk declare.

    Attributes
    ----------
    uncompressed_bytes : int
        Sum of the pages' uncompressed sizes: what decompressing the chunk produces.
    largest_page_bytes : int
        The largest single page's uncompressed size (one allocation).
    values : int
        Sum of the data pages' value counts (levels included, so nulls count).
    """

    uncompressed_bytes: int
    largest_page_bytes: int
    values: int


class _CompactReader:
    """Reads Thrift compact-protocol values from a byte buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise _NeedMore
        value = self.data[self.position]
        self.position += 1
        return value

    def varint(self) -> int:
        result = 0
        for shift in range(0, 70, 7):
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
        raise LayoutError("a varint runs over 10 bytes")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def skip_bytes(self, count: int) -> None:
        if self.position + count > len(self.data):
            raise _NeedMore
        self.position += count

    def collection(self) -> tuple[int, int]:
        """A list or set header: (size, element type)."""
        header = self.byte()
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size = self.varint()
        # Every element takes at least one byte: a larger size is a forged one, and
        # looping over it would take as long as it claims.
        if size > len(self.data) - self.position:
            raise _NeedMore
        return size, element

    def fields(self) -> _FieldIterator:
        return _FieldIterator(self)

    def skip(self, kind: int, depth: int = 0) -> None:
        if depth > _MAX_NESTING:
            raise LayoutError(f"structures nested deeper than {_MAX_NESTING}")
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            return
        if kind == _BYTE:
            self.skip_bytes(1)
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _DOUBLE:
            self.skip_bytes(8)
        elif kind == _BINARY:
            self.skip_bytes(self.varint())
        elif kind in (_LIST, _SET):
            size, element = self.collection()
            for _ in range(size):
                # Booleans inside a collection take one byte each.
                self.skip(_BYTE if element in (_BOOL_TRUE, _BOOL_FALSE) else element, depth + 1)
        elif kind == _MAP:
            size = self.varint()
            if size > len(self.data) - self.position:
                raise _NeedMore
            if size:
                types = self.byte()
                key, value = types >> 4, types & 0x0F
                for _ in range(size):
                    self.skip(key, depth + 1)
                    self.skip(value, depth + 1)
        elif kind == _STRUCT:
            for _, field_kind in self.fields():
                self.skip(field_kind, depth + 1)
        else:
            raise LayoutError(f"unknown Thrift type {kind}")

    def struct_list(self) -> int:
        """The size of a list of structs (the caller reads them)."""
        size, element = self.collection()
        if element != _STRUCT:
            raise LayoutError("a list of structures holds something else")
        return size


class _FieldIterator:
    """Yields (field id, type) of a struct's fields until its stop byte."""

    def __init__(self, reader: _CompactReader) -> None:
        self._reader = reader
        self._last = 0

    def __iter__(self) -> _FieldIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        header = self._reader.byte()
        if header == 0:
            raise StopIteration
        kind, delta = header & 0x0F, header >> 4
        self._last = self._last + delta if delta else self._reader.zigzag()
        return self._last, kind


def _integer(reader: _CompactReader, kind: int) -> int:
    if kind not in (_I16, _I32, _I64):
        raise LayoutError(f"an integer field of Thrift type {kind}")
    return reader.zigzag()


# --------------------------------------------------------------------------- footer


def read_footer(stream: BinaryIO, *, file_size: int, footer_size: int) -> FileLayout:
    """Read the row groups and column chunks of a parquet footer.

    Parameters
    ----------
    stream : binary file
        The parquet file, seekable.
    file_size : int
        Its size in bytes.
    footer_size : int
        The footer's length, from the file's last 8 bytes; the caller bounds it.

    Returns
    -------
    FileLayout

    Raises
    ------
    LayoutError
        For a footer that does not parse, an encrypted footer or column, a column chunk
        without metadata, or negative sizes, counts or offsets.
    """
    if not 0 <= footer_size <= file_size - 12:
        raise LayoutError("the footer's length does not fit the file")
    stream.seek(file_size - 8 - footer_size)
    reader = _CompactReader(stream.read(footer_size))
    try:
        return _file_metadata(reader)
    except _NeedMore:
        raise LayoutError("the footer ends inside a structure") from None


def _file_metadata(reader: _CompactReader) -> FileLayout:
    num_rows = None
    row_groups: list[RowGroupLayout] = []
    for field, kind in reader.fields():
        if field == 3:
            num_rows = _integer(reader, kind)
        elif field == 4 and kind == _LIST:
            row_groups = [_row_group(reader) for _ in range(reader.struct_list())]
        else:
            reader.skip(kind)
    if num_rows is None or num_rows < 0:
        raise LayoutError("the footer gives no row count")
    return FileLayout(num_rows=num_rows, row_groups=tuple(row_groups))


def _row_group(reader: _CompactReader) -> RowGroupLayout:
    num_rows = None
    columns: list[ChunkLayout] = []
    for field, kind in reader.fields():
        if field == 1 and kind == _LIST:
            columns = [_column_chunk(reader) for _ in range(reader.struct_list())]
        elif field == 3:
            num_rows = _integer(reader, kind)
        else:
            reader.skip(kind)
    if num_rows is None or num_rows < 0:
        raise LayoutError("a row group gives no row count")
    return RowGroupLayout(num_rows=num_rows, columns=tuple(columns))


def _column_chunk(reader: _CompactReader) -> ChunkLayout:
    layout = None
    for field, kind in reader.fields():
        if field == 3 and kind == _STRUCT:
            layout = _column_metadata(reader)
        else:
            reader.skip(kind)
    if layout is None:
        raise LayoutError("a column chunk without metadata (an encrypted column?)")
    return layout


# ColumnMetaData fields (parquet.thrift) this module keeps.
_NUM_VALUES, _UNCOMPRESSED, _COMPRESSED, _DATA_PAGE_OFFSET, _DICTIONARY_PAGE_OFFSET = (
    5,
    6,
    7,
    9,
    11,
)


def _column_metadata(reader: _CompactReader) -> ChunkLayout:
    kept = {_NUM_VALUES, _UNCOMPRESSED, _COMPRESSED, _DATA_PAGE_OFFSET, _DICTIONARY_PAGE_OFFSET}
    values: dict[int, int] = {}
    for field, kind in reader.fields():
        if field in kept:
            values[field] = _integer(reader, kind)
        else:
            reader.skip(kind)
    if {_NUM_VALUES, _UNCOMPRESSED, _COMPRESSED, _DATA_PAGE_OFFSET} - values.keys():
        raise LayoutError("a column chunk's metadata lacks its sizes or offset")
    if any(value < 0 for value in values.values()):
        raise LayoutError("a column chunk declares a negative size, count or offset")
    # Where pyarrow starts reading a chunk (ComputeColumnChunkRange): at its dictionary
    # page, when there is one before the data pages.
    start = values[_DATA_PAGE_OFFSET]
    dictionary = values.get(_DICTIONARY_PAGE_OFFSET)
    if dictionary and dictionary < start:
        start = dictionary
    return ChunkLayout(
        num_values=values[_NUM_VALUES],
        uncompressed_bytes=values[_UNCOMPRESSED],
        compressed_bytes=values[_COMPRESSED],
        start=start,
    )


# --------------------------------------------------------------------------- pages

# PageHeader fields: the sizes, and the page kinds that carry values.
_UNCOMPRESSED_SIZE, _COMPRESSED_SIZE = 2, 3
_DATA_PAGE_HEADER, _DATA_PAGE_HEADER_V2 = 5, 8


@dataclass(frozen=True)
class _PageHeader:
    uncompressed_size: int
    compressed_size: int
    values: int
    header_bytes: int


def _parse_page_header(data: bytes) -> _PageHeader:
    reader = _CompactReader(data)
    sizes: dict[int, int] = {}
    values = 0
    for field, kind in reader.fields():
        if field in (_UNCOMPRESSED_SIZE, _COMPRESSED_SIZE):
            sizes[field] = _integer(reader, kind)
        elif field in (_DATA_PAGE_HEADER, _DATA_PAGE_HEADER_V2) and kind == _STRUCT:
            # num_values is field 1 of both DataPageHeader and DataPageHeaderV2.
            for inner, inner_kind in reader.fields():
                if inner == 1:
                    values = _integer(reader, inner_kind)
                else:
                    reader.skip(inner_kind, 1)
        else:
            reader.skip(kind)
    if len(sizes) < 2:
        raise LayoutError("a page header without its sizes")
    if min(sizes.values()) < 0 or values < 0:
        raise LayoutError("a page header with a negative size or count")
    return _PageHeader(
        uncompressed_size=sizes[_UNCOMPRESSED_SIZE],
        compressed_size=sizes[_COMPRESSED_SIZE],
        values=values,
        header_bytes=reader.position,
    )


def _read_page_header(stream: BinaryIO, *, offset: int, end: int) -> _PageHeader:
    size = _FIRST_READ_BYTES
    while True:
        available = min(size, end - offset, MAX_PAGE_HEADER_BYTES)
        stream.seek(offset)
        data = stream.read(available)
        try:
            return _parse_page_header(data)
        except _NeedMore:
            if len(data) < available or available < size:
                raise LayoutError("a page header runs past its column chunk") from None
            size *= 4


def walk_column_chunk(
    stream: BinaryIO, chunk: ChunkLayout, *, budget: int | None = None
) -> ChunkPages:
    """Read the headers of a column chunk's pages, as pyarrow will meet them.

    Parameters
    ----------
    stream : binary file
        The parquet file, seekable.
    chunk : ChunkLayout
        Where the chunk lies and how many values it holds, from :func:`read_footer`.
        Like pyarrow, the walk stops once the data pages seen hold that many values.
    budget : int, optional
        Stop early once the pages' uncompressed sizes add up to more than this: the
        caller refuses the chunk anyway.

    Returns
    -------
    ChunkPages

    Raises
    ------
    LayoutError
        For a header that does not parse, a negative size, or a page running past the
        chunk.
    """
    end = chunk.start + chunk.compressed_bytes
    offset = chunk.start
    uncompressed = largest = values = 0
    while offset < end and values < chunk.num_values:
        header = _read_page_header(stream, offset=offset, end=end)
        uncompressed += header.uncompressed_size
        largest = max(largest, header.uncompressed_size)
        values += header.values
        offset += header.header_bytes + header.compressed_size
        if offset > end:
            raise LayoutError("a page runs past its column chunk")
        if budget is not None and uncompressed > budget:
            break
    return ChunkPages(uncompressed_bytes=uncompressed, largest_page_bytes=largest, values=values)
