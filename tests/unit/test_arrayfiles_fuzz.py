"""Fuzzing the file readers: whatever the bytes, they refuse with the module's errors.

Valid files of every format are mutated (bits flipped, integers overwritten with
extremes, bytes inserted, deleted, cut) and npy headers forged outright; reading them
must either succeed or raise :class:`ArrayFileError` (``ArrayTooLargeError`` is
one), never anything else. Every read is bounded by a 16 MiB ``max_array_bytes``, so a
mutation that declares a huge array is refused rather than allocated.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from arrayfiles import load_array, scan_arrays
from arrayfiles.errors import ArrayFileError

LIMIT = 16 << 20
FUZZ = settings(
    max_examples=200,
    # Generous: the files are tiny, but the suite may share its cores.
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(*, compressed: bool) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer,
        embeddings=rng.standard_normal((6, 3)),
        labels=np.arange(6, dtype=np.int32),
        names=np.array(["a", "bc", "d", "e", "f", "g"]),
    )
    return buffer.getvalue()


def _safetensors() -> bytes:
    rng = np.random.default_rng(1)
    tensors = {
        "embeddings": rng.standard_normal((5, 4)).astype(np.float32),
        "labels": np.arange(5, dtype=np.int64),
        "wide": rng.standard_normal(3),
    }
    data = save(tensors)
    # Append a bfloat16 tensor by hand: rewrite the header with one more entry.
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    end = max(spec["data_offsets"][1] for name, spec in header.items() if name != "__metadata__")
    header["bf16"] = {"dtype": "BF16", "shape": [2, 2], "data_offsets": [end, end + 8]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    words = (np.array([1.0, -2.0, 0.5, 3.0], dtype="<f4").view("<u4") >> 16).astype("<u2")
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + size :] + words.tobytes()


def _parquet() -> bytes:
    rng = np.random.default_rng(2)
    table = pa.table(
        {
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(24)), 3),
            "x": rng.standard_normal(8),
            "y": rng.standard_normal(8).astype(np.float32),
            "label": pa.array(["cat", "dog"] * 4).dictionary_encode(),
            "id": np.arange(8),
            "ragged": pa.array([[1.0, 2.0]] * 8),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=4, compression="zstd")
    return buffer.getvalue()


SEEDS: dict[str, list[bytes]] = {
    "npy": [
        _npy(np.random.default_rng(3).standard_normal((5, 3))),
        _npy(np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))),
        _npy(np.array(["ab", "c"])),
    ],
    "npz": [_npz(compressed=False), _npz(compressed=True)],
    "safetensors": [_safetensors()],
    "parquet": [_parquet()],
}

EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "integer", "overwrite", "insert", "delete"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "integer":
            # Size and count fields are little-endian integers; extremes find overflows.
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(EXTREMES) | st.integers(0, 2 ** (8 * width) - 1))
            data[position : position + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif operation == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    if draw(st.booleans()) and len(data) > 1:
        del data[draw(st.integers(1, len(data) - 1)) :]
    return bytes(data)


DESCRS = st.sampled_from(
    ["<f4", "<f8", ">f4", "<i8", "|b1", "<U3", "|S4", "|O", "<c8", "<f16", "<M8[s]", "|V8"]
) | st.just([("a", "<f4"), ("b", "<i2")])
SHAPES = st.lists(st.integers(-(2**63), 2**63), max_size=4).map(tuple) | st.lists(
    st.integers(-4, 8), max_size=3
).map(tuple)


@st.composite
def forged_npy(draw: st.DrawFn) -> bytes:
    """An npy file whose header dict (or its text) is made up."""
    if draw(st.booleans()):
        fields = {
            "descr": draw(DESCRS),
            "fortran_order": draw(st.booleans() | st.integers(-1, 2)),
            "shape": draw(SHAPES),
        }
        text = repr(fields)
    else:
        text = draw(st.text(max_size=200))
    header = text.encode("latin1", errors="replace") + b"\n"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]))
    length = struct.pack("<H" if version[0] == 1 else "<I", len(header))
    body = draw(st.binary(max_size=256))
    return b"\x93NUMPY" + bytes(version) + length + header + body


def read_everything(path: Path, fmt: str) -> None:
    """Scan the file, then load every array it lists, both ways; only refusals may escape."""
    reads: list[Callable[[], object]] = [lambda: load_array(path, fmt=fmt, max_array_bytes=LIMIT)]
    try:
        scanned = scan_arrays(path, fmt=fmt, max_array_bytes=LIMIT)
    except ArrayFileError:
        scanned = []
    for array in scanned:
        for mmap in (True, False):
            reads.append(
                lambda name=array.info.name, mmap=mmap: load_array(
                    path, fmt=fmt, name=name, mmap=mmap, max_array_bytes=LIMIT
                )
            )
    for read in reads:
        with contextlib.suppress(ArrayFileError):
            read()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_seed_files_are_valid(fuzz_dir: Path, fmt: str) -> None:
    for index, seed in enumerate(SEEDS[fmt]):
        path = fuzz_dir / f"seed-{index}.{fmt}"
        path.write_bytes(seed)
        assert scan_arrays(path, fmt=fmt, max_array_bytes=LIMIT)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
@FUZZ
@given(data=st.data())
def test_mutated_files_raise_only_invalid_input(
    fuzz_dir: Path, fmt: str, data: st.DataObject
) -> None:
    content = data.draw(mutated(SEEDS[fmt]) | st.binary(max_size=512), label="content")
    path = fuzz_dir / f"mutated.{fmt}"
    path.write_bytes(content)

    read_everything(path, fmt)


@FUZZ
@given(content=forged_npy())
def test_forged_npy_headers_raise_only_invalid_input(fuzz_dir: Path, content: bytes) -> None:
    path = fuzz_dir / "forged.npy"
    path.write_bytes(content)

    read_everything(path, "npy")
