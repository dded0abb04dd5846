"""Decompression bombs and forged size fields, built in memory in a second or two.

Each is a file the attacks of the "every input bounded" issue used or would use: an npz
whose one deflated member inflates to 1 GiB, a zstd parquet of a constant column, a zip
directory or a parquet page header that lies about a size. The builders write the
formats by hand where a library would refuse to lie (zip directories, parquet page
headers), and reuse one compressed block where compressing 1 GiB would take seconds.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GIB = 1 << 30
_ZERO_BLOCK_BYTES = 16 << 20
_ZIP64_MARK = 0xFFFFFFFF


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """The bytes numpy.save writes before an array's data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


@dataclass(frozen=True)
class Deflated:
    """A raw deflate stream and the facts of what it inflates to."""

    data: bytes
    inflated_bytes: int
    crc32: int


def deflate_zeros(zero_bytes: int, *, prefix: bytes = b"") -> Deflated:
    """``prefix`` then ``zero_bytes`` zero bytes, deflated at about 1:1000.

    A full flush resets the compressor's history, so one compressed block of zeros can
    be repeated as often as needed: the stream stays valid and takes milliseconds.
    """
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [head.compress(prefix), head.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(prefix)
    blocks, remainder = divmod(zero_bytes, _ZERO_BLOCK_BYTES)
    for size, repeat in ((_ZERO_BLOCK_BYTES, blocks), (remainder, 1)):
        if not size or not repeat:
            continue
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = body.compress(bytes(size)) + body.flush(zlib.Z_FULL_FLUSH)
        parts.extend([block] * repeat)
        zeros = bytes(size)
        for _ in range(repeat):
            crc = zlib.crc32(zeros, crc)
    parts.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush())  # the final, empty block
    return Deflated(data=b"".join(parts), inflated_bytes=len(prefix) + zero_bytes, crc32=crc)


@dataclass(frozen=True)
class ZipMember:
    name: str
    data: bytes
    crc32: int
    declared_size: int
    method: int = zlib.DEFLATED
    # Point the directory entry at another member's local header instead of writing one.
    header_offset: int | None = None


def zip_archive(members: list[ZipMember]) -> bytes:
    """A zip archive whose directory says what each member declares, true or not.

    Sizes of 4 GiB or more go in zip64 extra fields, as zipfile writes them. A member
    with a ``header_offset`` shares the data written at that offset (an overlap).
    """
    body = bytearray()
    central = bytearray()
    for member in members:
        name = member.name.encode()
        zip64 = member.declared_size >= _ZIP64_MARK
        sizes = (_ZIP64_MARK, _ZIP64_MARK) if zip64 else (len(member.data), member.declared_size)
        extra = (
            struct.pack("<HHQQ", 1, 16, member.declared_size, len(member.data)) if zip64 else b""
        )
        fixed = (45 if zip64 else 20, 0, member.method, 0, 0x21, member.crc32, *sizes)
        offset = len(body) if member.header_offset is None else member.header_offset
        if member.header_offset is None:
            body += struct.pack("<4sHHHHHIII", b"PK\x03\x04", *fixed)
            body += struct.pack("<HH", len(name), len(extra)) + name + extra + member.data
        central += struct.pack("<4sH", b"PK\x01\x02", 45) + struct.pack("<HHHHHIII", *fixed)
        central += struct.pack("<HHHHHII", len(name), len(extra), 0, 0, 0, 0, offset)
        central += name + extra
    end = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0
    )
    return bytes(body + central + end)


def npz_bomb(array_bytes: int = GIB, *, name: str = "embeddings") -> bytes:
    """A valid npz of one float32 array of zeros, ``array_bytes`` big, deflated."""
    header = npy_header((array_bytes // 4096, 1024))
    stream = deflate_zeros(array_bytes, prefix=header)
    member = ZipMember(
        name=f"{name}.npy",
        data=stream.data,
        crc32=stream.crc32,
        declared_size=stream.inflated_bytes,
    )
    return zip_archive([member])


def npz_with_lying_directory(
    *, declared_size: int, header_shape: tuple[int, ...], inflated_bytes: int = GIB
) -> bytes:
    """An npz whose directory declares ``declared_size`` for a member that inflates to
    its npy header (of ``header_shape``) and ``inflated_bytes`` of zeros; its CRC is
    that of the whole inflated member."""
    stream = deflate_zeros(inflated_bytes, prefix=npy_header(header_shape))
    member = ZipMember(
        name="embeddings.npy", data=stream.data, crc32=stream.crc32, declared_size=declared_size
    )
    return zip_archive([member])


def parquet_bomb(*, rows: int = GIB // 4, dictionary: bool) -> bytes:
    """A zstd parquet file, written by pyarrow, of one constant float32 column."""
    sink = io.BytesIO()
    table = pa.table({"embeddings": np.zeros(rows, dtype=np.float32)})
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary)
    return sink.getvalue()


def parquet_string_bomb(*, rows: int = 1 << 20, chars: int = 1 << 20) -> bytes:
    """One string of ``chars`` characters, dictionary-encoded into ``rows`` rows.

    Written without pyarrow's own schema, as another writer would: a reader then gets
    plain strings, every row a copy, unless it asks for dictionaries.
    """
    dictionary = pa.array(["x" * chars])
    column = pa.DictionaryArray.from_arrays(np.zeros(rows, dtype=np.int32), dictionary)
    sink = io.BytesIO()
    pq.write_table(pa.table({"labels": column}), sink, compression="zstd", store_schema=False)
    return sink.getvalue()


# --------------------------------------------------------------------------- parquet by hand

# Thrift compact protocol: field types, and parquet's enum values used below.
_I32, _I64, _BINARY, _LIST, _STRUCT = 5, 6, 8, 9, 12
_FLOAT, _PLAIN, _RLE, _ZSTD, _DATA_PAGE, _REQUIRED = 4, 0, 3, 6, 0, 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _thrift_value(kind: int, value: object) -> bytes:
    if kind in (_I32, _I64):
        assert isinstance(value, int)
        return _varint((value << 1) ^ (value >> 63))
    if kind == _BINARY:
        assert isinstance(value, str)
        return _varint(len(value.encode())) + value.encode()
    if kind == _STRUCT:
        assert isinstance(value, list)
        return _thrift_struct(value)
    assert kind == _LIST and isinstance(value, tuple)
    element, items = value
    return bytes([(len(items) << 4) | element]) + b"".join(
        _thrift_value(element, item) for item in items
    )


def _thrift_struct(fields: list[tuple[int, int, object]]) -> bytes:
    out, last = bytearray(), 0
    for field_id, kind, value in fields:
        out.append(((field_id - last) << 4) | kind)
        out += _thrift_value(kind, value)
        last = field_id
    return bytes(out + b"\x00")


def parquet_with_lying_page(
    *,
    page_bytes: int = GIB,
    declared_rows: int = 4096,
    page_values: int | None = None,
    repetition_histogram: list[int] | None = None,
) -> bytes:
    """A parquet file whose footer is modest and whose one page is a bomb.

    The footer declares ``declared_rows`` float32 values in ``4 * declared_rows`` bytes;
    the page header declares, and the zstd frame holds, ``page_bytes`` of zeros. pyarrow
    sizes its buffer from the page header and inflates it whole before decoding a value.
    The page header declares ``page_values`` values (default: ``declared_rows``).
    ``repetition_histogram`` adds size statistics with that repetition-level histogram
    (a column with no repetition has one level: a longer histogram is malformed).
    """
    payload = pa.Codec("zstd").compress(np.zeros(page_bytes // 4, dtype=np.float32))
    payload = payload.to_pybytes()
    values = declared_rows if page_values is None else page_values
    data_page = [(1, _I32, values), (2, _I32, _PLAIN), (3, _I32, _RLE), (4, _I32, _RLE)]
    page = _thrift_struct(
        [
            (1, _I32, _DATA_PAGE),
            (2, _I32, page_bytes),
            (3, _I32, len(payload)),
            (5, _STRUCT, data_page),
        ]
    )
    offset = 4
    declared_bytes = 4 * declared_rows
    column_metadata = [
        (1, _I32, _FLOAT),
        (2, _LIST, (_I32, [_PLAIN])),
        (3, _LIST, (_BINARY, ["embeddings"])),
        (4, _I32, _ZSTD),
        (5, _I64, declared_rows),
        (6, _I64, declared_bytes),
        (7, _I64, len(page) + len(payload)),
        (9, _I64, offset),
    ]
    if repetition_histogram is not None:
        column_metadata.append((16, _STRUCT, [(2, _LIST, (_I64, repetition_histogram))]))
    schema = [
        [(4, _BINARY, "schema"), (5, _I32, 1)],
        [(1, _I32, _FLOAT), (3, _I32, _REQUIRED), (4, _BINARY, "embeddings")],
    ]
    column_chunk = [(2, _I64, offset), (3, _STRUCT, column_metadata)]
    row_group = [
        (1, _LIST, (_STRUCT, [column_chunk])),
        (2, _I64, declared_bytes),
        (3, _I64, declared_rows),
    ]
    footer = _thrift_struct(
        [
            (1, _I32, 1),
            (2, _LIST, (_STRUCT, schema)),
            (3, _I64, declared_rows),
            (4, _LIST, (_STRUCT, [row_group])),
        ]
    )
    return b"PAR1" + page + payload + footer + struct.pack("<I", len(footer)) + b"PAR1"
