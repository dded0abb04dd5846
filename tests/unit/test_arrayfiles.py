"""Reading user array files: round trips, names, and every refusal."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from api_schemas.datasets import MODEL_FORMATS, DatasetFormat
from arrayfiles import (
    FORMATS,
    ArrayStats,
    array_stats,
    detect_format,
    inspect_arrays,
    load_array,
)
from arrayfiles.errors import ArrayFileError

NUMERIC_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]
SAFETENSORS_CODES = {
    "bool": "BOOL",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
}


def sample_array(dtype: str, shape: tuple[int, ...] = (7, 5), *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if np.dtype(dtype).kind == "U":
        words = np.array(["cat", "dog", "héron", "", "ünïcode"])
        return words[rng.integers(0, len(words), size=shape)].astype(dtype)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def write_raw_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """Write a safetensors file by hand, for dtypes numpy cannot hold (bfloat16)."""
    header = {}
    offset = 0
    for name, (code, shape, data) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = b"".join(data for _, _, data in tensors.values())
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def bfloat16_words(values: np.ndarray) -> bytes:
    return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()


def assert_refused(path: Path, fmt: str, *, field: str = "file", match: str) -> None:
    with pytest.raises(ArrayFileError, match=match) as caught:
        inspect_arrays(path, fmt=fmt)
    assert caught.value.field == field


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("file_name", "fmt"),
    [
        ("emb.npy", "npy"),
        ("layers.npz", "npz"),
        ("model.safetensors", "safetensors"),
        ("table.parquet", "parquet"),
        ("table.pq", "parquet"),
        ("EMB.NPY", "npy"),
    ],
)
def test_detect_format_reads_the_suffix(file_name: str, fmt: str) -> None:
    assert detect_format(Path("some/dir") / file_name) == fmt
    assert fmt in FORMATS


def test_formats_read_are_the_array_formats_the_api_accepts() -> None:
    # The API takes uploads of any DatasetFormat and hands the non-model ones to
    # arrayfiles: a format added on one side only would be accepted and then fail.
    array_formats = [fmt for fmt in get_args(DatasetFormat) if fmt not in MODEL_FORMATS]

    assert sorted(FORMATS) == sorted(array_formats)


def test_detect_format_refuses_unknown_suffix_and_names_the_formats() -> None:
    with pytest.raises(ArrayFileError, match=r"format=npy\|npz\|safetensors\|parquet") as caught:
        detect_format("embeddings.csv")
    assert caught.value.field == "format"


def test_unknown_format_argument_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones(3))
    for call in (
        lambda: inspect_arrays(path, fmt="hdf5"),
        lambda: load_array(path, fmt="hdf5"),
    ):
        with pytest.raises(ArrayFileError, match="unknown format 'hdf5'") as caught:
            call()
        assert caught.value.field == "format"


def test_missing_file_raises_os_error_not_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_arrays(tmp_path / "absent.npy", fmt="npy")


# --------------------------------------------------------------------------- npy


@pytest.mark.parametrize("dtype", [*NUMERIC_DTYPES, "<U7"])
def test_npy_round_trip_is_exact(tmp_path: Path, dtype: str) -> None:
    array = sample_array(dtype)
    path = tmp_path / "emb.npy"
    np.save(path, array)

    [info] = inspect_arrays(path, fmt="npy")
    loaded = load_array(path, fmt="npy")

    assert (info.name, info.shape) == ("array", [7, 5])
    assert info.dtype == (array.dtype.str if array.dtype.kind == "U" else array.dtype.name)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_npy_loads_as_read_only_memory_map_unless_asked_not_to(tmp_path: Path) -> None:
    array = sample_array("float32", (100, 8))
    path = tmp_path / "emb.npy"
    np.save(path, array)

    mapped = load_array(path, fmt="npy")
    in_memory = load_array(path, fmt="npy", mmap=False)

    assert isinstance(mapped, np.memmap)
    assert not mapped.flags.writeable
    assert not isinstance(in_memory, np.memmap)
    np.testing.assert_array_equal(in_memory, array)


def test_npy_fortran_order_and_big_endian_round_trip(tmp_path: Path) -> None:
    array = np.asfortranarray(sample_array("float64", (6, 4))).astype(">f8", order="F")
    path = tmp_path / "emb.npy"
    np.save(path, array)

    [info] = inspect_arrays(path, fmt="npy")

    assert info.dtype == "float64"
    np.testing.assert_array_equal(load_array(path, fmt="npy"), array)


def test_npy_name_is_array_and_other_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, np.ones((2, 2)))

    np.testing.assert_array_equal(load_array(path, fmt="npy", name="array"), np.ones((2, 2)))
    with pytest.raises(ArrayFileError, match="no array 'emb'; the file holds 'array'") as caught:
        load_array(path, fmt="npy", name="emb")
    assert caught.value.field == "array"


def test_npy_pickled_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)

    assert_refused(
        path, "npy", match="pickled or object arrays are refused; save with allow_pickle"
    )
    with pytest.raises(ArrayFileError, match="pickled or object arrays are refused"):
        load_array(path, fmt="npy")


def test_npy_cut_in_half_is_refused_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, sample_array("float32", (1000, 64)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert_refused(path, "npy", match="truncated")
    with pytest.raises(ArrayFileError, match="truncated"):
        load_array(path, fmt="npy")


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.ones((3, 2), dtype=np.complex128), "complex"),
        (np.zeros(3, dtype=[("x", "f4"), ("y", "i4")]), "structured"),
        (np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"), "datetime"),
        (np.array([b"cat", b"dog"]), "byte-string"),
    ],
)
def test_npy_unsupported_dtypes_are_refused(tmp_path: Path, array: np.ndarray, kind: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)

    assert_refused(path, "npy", match=f"array 'array' has {kind} dtype .* not supported")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_npy_non_finite_values_are_counted_and_refused(tmp_path: Path, bad_value: float) -> None:
    array = sample_array("float32", (50, 4))
    array[[3, 17, 40], [0, 2, 3]] = bad_value
    path = tmp_path / "emb.npy"
    np.save(path, array)

    assert_refused(path, "npy", match=r"array 'array' holds 3 non-finite values \(NaN/Inf\)")


def test_npy_empty_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros((0, 8), dtype=np.float32))

    assert_refused(path, "npy", match="array 'array' is empty")


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_round_trip_every_dtype_under_member_names(tmp_path: Path, save) -> None:
    arrays = {dtype: sample_array(dtype, seed=i) for i, dtype in enumerate(NUMERIC_DTYPES)}
    arrays["labels"] = sample_array("<U7", (7,))
    arrays["fortran"] = np.asfortranarray(sample_array("float32", (5, 3)))
    path = tmp_path / "layers.npz"
    save(path, **arrays)

    infos = inspect_arrays(path, fmt="npz")

    assert [info.name for info in infos] == list(arrays)
    for info in infos:
        expected = arrays[info.name]
        assert info.shape == list(expected.shape)
        for mmap in (True, False):
            loaded = load_array(path, fmt="npz", name=info.name, mmap=mmap)
            assert loaded.dtype == expected.dtype
            np.testing.assert_array_equal(loaded, expected)


def test_npz_stored_member_is_memory_mapped_in_place(tmp_path: Path) -> None:
    embeddings = sample_array("float32", (300, 16))
    path = tmp_path / "layers.npz"
    np.savez(path, labels=np.arange(300), embeddings=embeddings)

    mapped = load_array(path, fmt="npz", name="embeddings")

    assert isinstance(mapped, np.memmap)
    assert not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, embeddings)


def test_npz_compressed_member_is_read_into_memory(tmp_path: Path) -> None:
    embeddings = sample_array("float32", (300, 16))
    path = tmp_path / "layers.npz"
    np.savez_compressed(path, embeddings=embeddings)

    loaded = load_array(path, fmt="npz")

    assert not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, embeddings)


def test_npz_object_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "layers.npz"
    np.savez(path, embeddings=np.ones((3, 2)), ids=np.array([1, "x", None], dtype=object))

    assert_refused(path, "npz", match="array 'ids' holds Python objects: pickled or object")
    with pytest.raises(ArrayFileError, match="pickled or object arrays are refused"):
        load_array(path, fmt="npz", name="ids")


def test_npz_complex_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "layers.npz"
    np.savez(path, z=np.ones(4, dtype=np.complex64))

    assert_refused(path, "npz", match="array 'z' has complex dtype")


def test_npz_non_finite_and_empty_members_are_refused(tmp_path: Path) -> None:
    nan_path = tmp_path / "nan.npz"
    with_nan = sample_array("float64", (20, 3))
    with_nan[5, 1] = np.nan
    np.savez_compressed(nan_path, ok=np.ones(3), bad=with_nan)
    empty_path = tmp_path / "empty.npz"
    np.savez(empty_path, ok=np.ones(3), nothing=np.zeros((0, 3)))

    assert_refused(nan_path, "npz", match="array 'bad' holds 1 non-finite values")
    assert_refused(empty_path, "npz", match="array 'nothing' is empty")


def test_npz_without_name_needs_exactly_one_array(tmp_path: Path) -> None:
    single = tmp_path / "single.npz"
    np.savez(single, embeddings=np.ones((2, 2)))
    several = tmp_path / "several.npz"
    np.savez(several, a=np.ones(2), b=np.ones(2), c=np.ones(2))

    np.testing.assert_array_equal(load_array(single, fmt="npz"), np.ones((2, 2)))
    with pytest.raises(
        ArrayFileError, match="file holds arrays 'a', 'b', 'c'; name one of them"
    ) as caught:
        load_array(several, fmt="npz")
    assert caught.value.field == "array"
    with pytest.raises(ArrayFileError, match="no array 'foo'; the file holds 'a', 'b', 'c'"):
        load_array(several, fmt="npz", name="foo")


def test_npz_member_that_is_not_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "hello")

    assert_refused(path, "npz", match="member 'README.txt' is not an .npy array")


def test_npz_corrupted_compressed_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "layers.npz"
    np.savez_compressed(path, embeddings=sample_array("float64", (2000, 8)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))

    assert_refused(path, "npz", match="not a valid .npz file")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_whose_header_overstates_its_size_is_refused(
    tmp_path: Path, compression: int
) -> None:
    # A forged header must not make load_array allocate what the member cannot hold.
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(np.ones(16).tobytes())
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("x.npy", member.getvalue())

    assert_refused(path, "npz", match="truncated: array 'x' needs 8000000000000 bytes")
    for mmap in (True, False):
        with pytest.raises(ArrayFileError, match="truncated"):
            load_array(path, fmt="npz", mmap=mmap)


# --------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_every_dtype_under_tensor_names(tmp_path: Path) -> None:
    tensors = {f"t_{dtype}": sample_array(dtype, seed=i) for i, dtype in enumerate(NUMERIC_DTYPES)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)

    infos = inspect_arrays(path, fmt="safetensors")

    assert sorted(info.name for info in infos) == sorted(tensors)
    for info in infos:
        expected = tensors[info.name]
        assert info.shape == list(expected.shape)
        assert info.dtype == expected.dtype.name
        for mmap in (True, False):
            loaded = load_array(path, fmt="safetensors", name=info.name, mmap=mmap)
            assert loaded.dtype == expected.dtype
            np.testing.assert_array_equal(loaded, expected)


def test_safetensors_memory_maps_tensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    embeddings = sample_array("float32", (64, 8))
    save_file({"embeddings": embeddings}, path)

    mapped = load_array(path, fmt="safetensors")

    assert isinstance(mapped, np.memmap)
    assert not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, embeddings)


def test_safetensors_bfloat16_is_reported_as_bfloat16_and_loaded_as_float32(
    tmp_path: Path,
) -> None:
    values = np.array([[1.0, -2.5, 0.15625], [256.0, -0.0, 3.0e-3]], dtype=np.float32)
    exact = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    path = tmp_path / "model.safetensors"
    write_raw_safetensors(
        path, {"h": ("BF16", [2, 3], bfloat16_words(values)), "y": ("I64", [2], bytes(16))}
    )

    infos = inspect_arrays(path, fmt="safetensors")
    loaded = load_array(path, fmt="safetensors", name="h")

    assert {info.name: (info.shape, info.dtype) for info in infos} == {
        "h": ([2, 3], "bfloat16"),
        "y": ([2], "int64"),
    }
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, exact)
    np.testing.assert_array_equal(loaded[:, :2], values[:, :2])


def test_safetensors_bfloat16_non_finite_values_are_refused(tmp_path: Path) -> None:
    values = np.array([1.0, np.nan, np.inf, 2.0], dtype=np.float32)
    path = tmp_path / "model.safetensors"
    write_raw_safetensors(path, {"h": ("BF16", [4], bfloat16_words(values))})

    assert_refused(path, "safetensors", match="array 'h' holds 2 non-finite values")


def test_safetensors_complex_and_float8_are_refused(tmp_path: Path) -> None:
    complex_path = tmp_path / "complex.safetensors"
    save_file({"z": np.ones(3, dtype=np.complex64)}, complex_path)
    fp8_path = tmp_path / "fp8.safetensors"
    write_raw_safetensors(fp8_path, {"q": ("F8_E4M3", [4], bytes(4))})

    assert_refused(complex_path, "safetensors", match="array 'z' has complex dtype C64")
    assert_refused(fp8_path, "safetensors", match="dtype F8_E4M3, which is not supported")


def test_safetensors_non_finite_and_empty_tensors_are_refused(tmp_path: Path) -> None:
    with_inf = sample_array("float16", (10, 4))
    with_inf[2, 2] = np.inf
    inf_path = tmp_path / "inf.safetensors"
    save_file({"w": with_inf}, inf_path)
    empty_path = tmp_path / "empty.safetensors"
    save_file({"w": np.zeros((0, 4), dtype=np.float32)}, empty_path)

    assert_refused(inf_path, "safetensors", match="array 'w' holds 1 non-finite values")
    assert_refused(empty_path, "safetensors", match="array 'w' is empty")


def test_safetensors_without_name_needs_exactly_one_tensor(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"b": np.ones(2), "a": np.zeros(2)}, path)

    with pytest.raises(ArrayFileError, match="file holds arrays 'a', 'b'; name one") as caught:
        load_array(path, fmt="safetensors")
    assert caught.value.field == "array"
    with pytest.raises(ArrayFileError, match="no array 'c'; the file holds 'a', 'b'"):
        load_array(path, fmt="safetensors", name="c")


# --------------------------------------------------------------------------- parquet


def test_parquet_fixed_size_list_column_is_an_n_by_d_array(tmp_path: Path) -> None:
    embeddings = sample_array("float32", (500, 12))
    labels = sample_array("int64", (500,))
    ids = sample_array("<U7", (500,))
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), 12),
            "label": labels,
            "id": pa.array(ids.tolist()),
        }
    )
    path = tmp_path / "table.parquet"
    pq.write_table(table, path, row_group_size=128)

    infos = inspect_arrays(path, fmt="parquet")
    loaded = {info.name: load_array(path, fmt="parquet", name=info.name) for info in infos}

    assert [(info.name, info.shape, info.dtype) for info in infos] == [
        ("embedding", [500, 12], "float32"),
        ("label", [500], "int64"),
        ("id", [500], f"<U{max(len(s) for s in ids)}"),
    ]
    np.testing.assert_array_equal(loaded["embedding"], embeddings)
    np.testing.assert_array_equal(loaded["label"], labels)
    np.testing.assert_array_equal(loaded["id"], ids)
    assert loaded["id"].dtype.kind == "U"


def test_parquet_list_column_of_one_length_is_an_n_by_d_array(tmp_path: Path) -> None:
    embeddings = sample_array("float64", (300, 5))
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"emb": pa.array(embeddings.tolist())}), path, row_group_size=64)

    [info] = inspect_arrays(path, fmt="parquet")
    loaded = load_array(path, fmt="parquet")

    assert (info.name, info.shape, info.dtype) == ("emb", [300, 5], "float64")
    np.testing.assert_array_equal(loaded, embeddings)


def test_parquet_one_column_per_dimension_adds_columns_array(tmp_path: Path) -> None:
    embeddings = sample_array("float32", (200, 4))
    labels = np.array(["cat", "dog"] * 100)
    columns = {f"x{j}": embeddings[:, j] for j in range(4)}
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({**columns, "label": labels.tolist()}), path, row_group_size=50)

    infos = inspect_arrays(path, fmt="parquet")
    stacked = load_array(path, fmt="parquet", name="__columns__")

    assert [(info.name, info.shape) for info in infos] == [
        ("x0", [200]),
        ("x1", [200]),
        ("x2", [200]),
        ("x3", [200]),
        ("label", [200]),
        ("__columns__", [200, 4]),
    ]
    assert infos[-1].dtype == "float32"
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, embeddings)
    np.testing.assert_array_equal(load_array(path, fmt="parquet", name="x2"), embeddings[:, 2])
    np.testing.assert_array_equal(load_array(path, fmt="parquet", name="label"), labels)


def test_parquet_columns_array_leaves_out_integer_label_columns(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": [0, 1]}), path)

    [*_, stacked_info] = inspect_arrays(path, fmt="parquet")

    assert (stacked_info.name, stacked_info.shape) == ("__columns__", [2, 2])
    np.testing.assert_array_equal(
        load_array(path, fmt="parquet", name="__columns__"), [[1.0, 3.0], [2.0, 4.0]]
    )


def test_parquet_single_float_column_has_no_columns_array(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"score": [0.5, 0.25], "label": [0, 1]}), path)

    assert [info.name for info in inspect_arrays(path, fmt="parquet")] == ["score", "label"]
    with pytest.raises(ArrayFileError, match="no array '__columns__'"):
        load_array(path, fmt="parquet", name="__columns__")


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_parquet_scalar_column_round_trip_every_dtype(tmp_path: Path, dtype: str) -> None:
    values = sample_array(dtype, (40,))
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"v": pa.array(values)}), path)

    [info] = inspect_arrays(path, fmt="parquet")
    loaded = load_array(path, fmt="parquet", name="v")

    assert (info.shape, info.dtype) == ([40], np.dtype(dtype).name)
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, values)


def test_parquet_dictionary_encoded_strings_load_as_unicode(tmp_path: Path) -> None:
    labels = ["cat", "dog", "cat", "heron"]
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"label": pa.array(labels).dictionary_encode()}), path)

    [info] = inspect_arrays(path, fmt="parquet")

    assert (info.shape, info.dtype) == ([4], "<U5")
    np.testing.assert_array_equal(load_array(path, fmt="parquet"), np.array(labels))


def test_parquet_ragged_list_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    rows = [[1.0, 2.0, 3.0]] * 10 + [[1.0, 2.0]] + [[4.0, 5.0, 6.0]] * 10
    pq.write_table(pa.table({"emb": rows}), path, row_group_size=4)

    assert_refused(path, "parquet", match="column 'emb' is ragged: its rows hold lists of 2 and 3")
    with pytest.raises(ArrayFileError, match="ragged"):
        load_array(path, fmt="parquet")


def test_parquet_null_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"emb": [[1.0, 2.0], None, [3.0, None]]}), path)

    assert_refused(path, "parquet", match=r"array 'emb' holds 2 missing \(null\) values")
    with pytest.raises(ArrayFileError, match="missing"):
        load_array(path, fmt="parquet")


def test_parquet_non_finite_values_are_refused(tmp_path: Path) -> None:
    embeddings = sample_array("float32", (30, 3))
    embeddings[[1, 2], [0, 1]] = [np.nan, -np.inf]
    path = tmp_path / "table.parquet"
    pq.write_table(
        pa.table({"emb": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), 3)}),
        path,
    )

    assert_refused(path, "parquet", match=r"array 'emb' holds 2 non-finite values \(NaN/Inf\)")


def test_parquet_empty_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"emb": pa.array([], type=pa.list_(pa.float32(), 8))}), path)

    assert_refused(path, "parquet", match="array 'emb' is empty")


def test_parquet_unsupported_column_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    stamps = pa.array([1, 2], type=pa.timestamp("us"))
    pq.write_table(pa.table({"x": [1.0, 2.0], "seen_at": stamps}), path)

    assert_refused(path, "parquet", match="column 'seen_at' has type timestamp")


def test_parquet_without_name_needs_exactly_one_array(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"emb": [[1.0, 2.0]], "label": [3]}), path)

    with pytest.raises(ArrayFileError, match="file holds arrays 'emb', 'label'; name one"):
        load_array(path, fmt="parquet")


# --------------------------------------------------------------------------- broken files


def write_valid_file(path: Path, fmt: str) -> None:
    embeddings = sample_array("float32", (2000, 16))
    if fmt == "npy":
        np.save(path, embeddings)
    elif fmt == "npz":
        np.savez(path, embeddings=embeddings)
    elif fmt == "safetensors":
        save_file({"embeddings": embeddings}, path)
    else:
        table = pa.table(
            {"embeddings": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), 16)}
        )
        pq.write_table(table, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_bytes_are_refused_in_every_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"garbage.{fmt}"
    path.write_bytes(np.random.default_rng(7).bytes(4096))

    for call in (lambda: inspect_arrays(path, fmt=fmt), lambda: load_array(path, fmt=fmt)):
        with pytest.raises(ArrayFileError) as caught:
            call()
        assert caught.value.field == "file"


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_cut_in_half_is_refused_in_every_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt}"
    write_valid_file(path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert_refused(path, fmt, match="truncated|not a valid")


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_of_wrong_format_is_refused(tmp_path: Path, fmt: str) -> None:
    other = {"npy": "npz", "npz": "safetensors", "safetensors": "parquet", "parquet": "npy"}[fmt]
    source = tmp_path / f"source.{other}"
    write_valid_file(source, other)
    path = source.rename(tmp_path / "mislabelled")

    assert_refused(path, fmt, match="not a valid")


# --------------------------------------------------------------------------- memory


def peak_rss_growth(action) -> tuple[float, object]:
    """Run ``action`` while sampling this process's RSS; return (peak growth, result)."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample_rss() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss) - baseline, result


def test_inspecting_a_200_mb_npy_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    rows, dim = 800_000, 64
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    block = sample_array("float32", (50_000, dim))
    for start in range(0, rows, len(block)):
        target[start : start + len(block)] = block
    target.flush()
    del target
    assert path.stat().st_size > 200e6

    growth, [info] = peak_rss_growth(lambda: inspect_arrays(path, fmt="npy"))

    assert info.shape == [rows, dim]
    assert growth < 60e6, f"RSS grew by {growth / 1e6:.0f} MB"


def test_inspecting_a_200_mb_parquet_row_group_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    rows, dim = 400_000, 128
    embeddings = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), dim)
    pq.write_table(pa.table({"emb": column}), path, row_group_size=rows)
    del embeddings, column
    assert path.stat().st_size > 200e6

    growth, [info] = peak_rss_growth(lambda: inspect_arrays(path, fmt="parquet"))

    assert info.shape == [rows, dim]
    # Arrow's allocator keeps some slack; reading the row group whole would cost >250 MB.
    assert growth < 130e6, f"RSS grew by {growth / 1e6:.0f} MB"


# --------------------------------------------------------------------------- array_stats


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 1000])
def test_array_stats_matches_a_direct_numpy_computation(chunk_rows: int | None) -> None:
    rng = np.random.default_rng(3)
    array = rng.standard_normal((103, 6)).astype(np.float32)
    array[rng.integers(0, 103, 9)] = 0.0
    array[rng.integers(0, 103, 5), rng.integers(0, 6, 5)] = np.nan
    array[rng.integers(0, 103, 4), rng.integers(0, 6, 4)] = -np.inf
    array[11] = [0.0, 0.0, np.nan, 0.0, 0.0, 0.0]

    stats = array_stats(array, chunk_rows=chunk_rows)

    zero = np.all(array == 0, axis=1)
    assert stats == ArrayStats(
        n_nonfinite=int(np.count_nonzero(~np.isfinite(array))),
        zero_rows=int(np.count_nonzero(zero)),
        first_zero_row=int(np.flatnonzero(zero)[0]),
    )


def test_array_stats_reads_a_memory_map_in_blocks(tmp_path: Path) -> None:
    array = sample_array("float64", (5000, 4))
    array[::10] = 0.0
    array[3, 1] = np.inf
    path = tmp_path / "emb.npy"
    np.save(path, array)

    stats = array_stats(load_array(path, fmt="npy"), chunk_rows=333)

    assert stats == ArrayStats(n_nonfinite=1, zero_rows=500, first_zero_row=0)


def test_array_stats_counts_non_finite_in_1d_and_ignores_non_numeric_arrays() -> None:
    assert array_stats(np.array([0.0, np.nan, np.inf, 1.0])) == ArrayStats(2, 0)
    assert array_stats(np.array(["a", "b"])) == ArrayStats(0, 0)
    assert array_stats(np.zeros((4, 3, 2))) == ArrayStats(0, 0)


def test_array_stats_counts_zero_rows_of_integer_matrices_too() -> None:
    # The cosine kernel is as undefined on an integer zero row as on a float one.
    integers = np.ones((5, 3), dtype=np.int64)
    integers[[1, 4]] = 0

    assert array_stats(integers) == ArrayStats(0, zero_rows=2, first_zero_row=1)


def test_array_stats_refuses_chunk_rows_below_one() -> None:
    with pytest.raises(ArrayFileError, match="at least 1") as caught:
        array_stats(np.ones((2, 2)), chunk_rows=0)
    assert caught.value.field == "chunk_rows"


# --------------------------------------------------------------------------- imports


def test_reading_every_format_imports_neither_torch_nor_pandas(tmp_path: Path) -> None:
    for fmt in FORMATS:
        write_valid_file(tmp_path / f"emb.{fmt}", fmt)
    # pyarrow imports pandas on its own when pandas is installed; reading must work
    # without it, so the subprocess makes pandas unimportable.
    script = (
        "import sys\n"
        "sys.modules['pandas'] = None\n"
        "before = set(sys.modules)\n"
        "from arrayfiles import FORMATS, inspect_arrays, load_array\n"
        "for fmt in FORMATS:\n"
        f"    path = {str(tmp_path)!r} + '/emb.' + fmt\n"
        "    inspect_arrays(path, fmt=fmt)\n"
        "    load_array(path, fmt=fmt)\n"
        "added = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(sorted(added & {'torch', 'jobstate', 'workers', 'service', 'nnkgeo'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )

    assert result.stdout.strip() == "[]"
