"""``.npz`` files: zip archives of ``.npy`` members, one array per member.

A member's directory entry declares its size, but a deflated member shows what it holds
only by inflating: the bytes that come out are counted (:class:`_CountingReader`) rather
than trusted. A stored member (``numpy.savez``) can be memory-mapped in place; a
deflated one (``numpy.savez_compressed``) is read into memory.
"""

from __future__ import annotations

import itertools
import os
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np

from arrayfiles.checks import check_numpy_dtype, check_size, parse_errors, resolve_name
from arrayfiles.errors import ArrayFileError, ArrayTooLargeError
from arrayfiles.npy import (
    MAX_NPY_HEADER_BYTES,
    array_from_stream,
    check_npy_header,
    read_npy_header,
    scan_npy_values,
)
from arrayfiles.scan import CHUNK_BYTES, ScannedArray, truncated

__all__ = ["load", "scan"]

_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
# numpy's savez writes stored members, savez_compressed deflated ones; zipfile inflates
# bzip2 and lzma members without bounding a read's output, so those are refused.
_ZIP_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


class _CountingReader:
    """A read-only stream that refuses to yield more than ``allowance`` bytes in all.

    Wraps a zip member: its directory entry declares a size, but what comes out is only
    known by inflating, so the count is kept here rather than trusted.
    """

    def __init__(self, stream: BinaryIO, *, allowance: int | None, name: str, limit: int | None):
        self._stream = stream
        self._allowance = allowance
        self._name = name
        self._limit = limit
        self.count = 0

    def _counted(self, got: int) -> int:
        self.count += got
        if self._allowance is not None and self.count > self._allowance:
            assert self._limit is not None
            raise ArrayTooLargeError(self._name, limit=self._limit)
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK_BYTES
        data = self._stream.read(min(size, CHUNK_BYTES))
        self._counted(len(data))
        return data

    def readinto(self, view: memoryview) -> int:
        return self._counted(self._stream.readinto(view[:CHUNK_BYTES]))

    def tell(self) -> int:
        return self.count


def _drain(stream: BinaryIO) -> None:
    # zipfile verifies a member's CRC only once its end has been read.
    while stream.read(CHUNK_BYTES):
        pass


@contextmanager
def _open_npz(path: str | os.PathLike[str]) -> Iterator[zipfile.ZipFile]:
    with parse_errors(".npz"):
        archive = zipfile.ZipFile(path)
    with archive:
        yield archive


def _npz_members(archive: zipfile.ZipFile, *, file_size: int) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename:
            # (ZipInfo.is_dir indexes the name's last character.)
            raise ArrayFileError("file", "not a valid .npz file: a member has no name")
        if info.is_dir():
            continue
        # zipfile seeks wherever the directory says (even before the file's start, where
        # the seek fails with an errno like real I/O trouble): keep it to the file.
        if not 0 <= info.header_offset < file_size or info.compress_size < 0:
            raise ArrayFileError(
                "file", f"not a valid .npz file: member {info.filename!r} lies outside the file"
            )
        if not info.filename.endswith(".npy"):
            raise ArrayFileError(
                "file",
                f"member {info.filename!r} is not an .npy array; save the file with "
                "numpy.savez or numpy.savez_compressed",
            )
        if info.flag_bits & 0x1:
            raise ArrayFileError("file", f"member {info.filename!r} is encrypted")
        if info.compress_type not in _ZIP_COMPRESSIONS:
            raise ArrayFileError(
                "file",
                f"member {info.filename!r} is compressed with zip method {info.compress_type}; "
                "only stored and deflated members are read: save the file with numpy.savez "
                "or numpy.savez_compressed",
            )
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise ArrayFileError("file", f"array {name!r} appears twice in the archive")
        members[name] = info
    _check_members_apart(list(members.values()))
    return members


def _check_members_apart(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose compressed data overlap: one stream counted many times over.

    A member's data start after its local header, so ``header_offset + compress_size``
    is a lower bound of where they end; the next member must not start before it.
    """
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for this, following in itertools.pairwise(ordered):
        if following.header_offset < this.header_offset + max(this.compress_size, 1):
            raise ArrayFileError(
                "file",
                f"not a valid .npz file: members {this.filename!r} and {following.filename!r} "
                "overlap in the archive",
            )


def _member_allowance(name: str, info: zipfile.ZipInfo, limit: int | None) -> int | None:
    """The most bytes a member may inflate to: the npy header and an array at the limit.

    The declared size is checked first, so an honest directory is refused before a byte
    is inflated; the returned allowance bounds a lying one.
    """
    if limit is None:
        return None
    allowance = limit + MAX_NPY_HEADER_BYTES
    if info.file_size > allowance:
        raise ArrayTooLargeError(name, limit=limit, size=info.file_size)
    return allowance


@contextmanager
def _open_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, name: str, limit: int | None
) -> Iterator[_CountingReader]:
    allowance = _member_allowance(name, info, limit)
    with parse_errors(".npz"), archive.open(info) as member:
        yield _CountingReader(member, allowance=allowance, name=name, limit=limit)


def scan(path: str | os.PathLike[str], *, limit: int | None) -> list[ScannedArray]:
    """Validate an ``.npz`` file and scan its arrays (see :func:`arrayfiles.scan_arrays`).

    Every member is inflated to its end, so that zipfile verifies its checksum.
    """
    arrays = []
    with _open_npz(path) as archive:
        for name, info in _npz_members(archive, file_size=os.path.getsize(path)).items():
            with _open_member(archive, info, name=name, limit=limit) as member:
                header = read_npy_header(member, name=name, what=".npz")
                check_npy_header(name, header, limit=limit)
                scanned = scan_npy_values(member, header, name=name)
                _drain(member)
            arrays.append(scanned)
    return arrays


def load(
    path: str | os.PathLike[str], *, name: str | None, mmap: bool, limit: int | None
) -> np.ndarray:
    """Load one array of an ``.npz`` file (see :func:`arrayfiles.load_array`)."""
    with _open_npz(path) as archive:
        members = _npz_members(archive, file_size=os.path.getsize(path))
        name = resolve_name(name, list(members))
        info = members[name]
        if mmap and info.compress_type == zipfile.ZIP_STORED:
            mapped = _map_stored_member(path, info, name=name, limit=limit)
            if mapped is not None:
                return mapped
        with _open_member(archive, info, name=name, limit=limit) as member:
            header = read_npy_header(member, name=name, what=".npz")
            check_numpy_dtype(name, header.dtype)
            check_size(name, header.nbytes, limit)
            # The zip directory bounds the data, so a forged header cannot make us
            # allocate more than the member holds.
            present = info.file_size - member.tell()
            if present < header.nbytes:
                raise truncated(name, needed=header.nbytes, present=max(present, 0))
            array = array_from_stream(member, header, name=name)
            _drain(member)
        return array


def _map_stored_member(
    path: str | os.PathLike[str], info: zipfile.ZipInfo, *, name: str, limit: int | None
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
            raise ArrayFileError("file", f"not a valid .npz file: member {name!r} is cut off")
        signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(local_header)
        if signature != _ZIP_LOCAL_SIGNATURE:
            raise ArrayFileError(
                "file", f"not a valid .npz file: bad local header for member {name!r}"
            )
        member_start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
        stream.seek(member_start)
        header = read_npy_header(stream, name=name, what=".npz")
        data_offset = stream.tell()
    check_numpy_dtype(name, header.dtype)
    check_size(name, header.nbytes, limit)
    if not header.count:
        return None
    present = info.file_size - (data_offset - member_start)
    if present < header.nbytes or data_offset + header.nbytes > os.path.getsize(path):
        raise truncated(name, needed=header.nbytes, present=max(present, 0))
    with parse_errors(".npz"):
        return np.memmap(
            path,
            dtype=header.dtype,
            mode="r",
            offset=data_offset,
            shape=header.shape,
            order="F" if header.fortran_order else "C",
        )
