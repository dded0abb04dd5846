"""Every reader is bounded by ``max_array_bytes``, and scans values as the analysis sees them.

Declared sizes (npy and safetensors headers, zip directories, parquet footers and page
headers) are checked before any data are read; inflated bytes are counted, since a
declared size can lie. Each expectation is computed independently: numpy's ``nbytes``,
``zlib.decompress``, the statistics of the array cast to float32 by numpy.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

import arrayfiles
import arrayfiles.npz
from arrayfiles import (
    ArrayTooLargeError,
    array_stats,
    inspect_arrays,
    load_array,
    scan_arrays,
)
from arrayfiles.errors import ArrayFileError
from tests.security import bombs
from tests.unit.test_arrayfiles import bfloat16_words, peak_rss_growth, write_raw_safetensors

MIB = 1 << 20


def read_in_chunks_of(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    """Make every reader of the package read ``nbytes`` at a time.

    Each module that reads in chunks binds ``CHUNK_BYTES`` by name, so the constant is
    patched wherever it is bound, not only where it is defined.
    """
    patched = []
    for module_info in pkgutil.iter_modules(arrayfiles.__path__):
        module = importlib.import_module(f"arrayfiles.{module_info.name}")
        if hasattr(module, "CHUNK_BYTES"):
            monkeypatch.setattr(module, "CHUNK_BYTES", nbytes)
            patched.append(module_info.name)
    assert patched, "no arrayfiles module reads in chunks of CHUNK_BYTES"


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def save(path: Path, fmt: str, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    if fmt == "npy":
        [array] = arrays.values()
        np.save(path, array)
    elif fmt == "npz":
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
    elif fmt == "safetensors":
        save_file({name: np.ascontiguousarray(a) for name, a in arrays.items()}, path)
    else:
        columns = {}
        for name, array in arrays.items():
            flat = pa.array(np.ascontiguousarray(array).ravel())
            columns[name] = (
                pa.FixedSizeListArray.from_arrays(flat, array.shape[1]) if array.ndim == 2 else flat
            )
        pq.write_table(pa.table(columns), path)
    return path


def refused_as_too_large(call, *, array: str, size: int | None = None) -> ArrayTooLargeError:
    with pytest.raises(ArrayTooLargeError) as caught:
        call()
    assert caught.value.field == "file"
    assert caught.value.array == array
    if size is not None:
        assert caught.value.size == size
    return caught.value


# --------------------------------------------------------------------------- the limit


@pytest.mark.parametrize(
    ("fmt", "compressed"),
    [("npy", False), ("npz", False), ("npz", True), ("safetensors", False)],
    ids=["npy", "npz-stored", "npz-deflated", "safetensors"],
)
def test_array_of_exactly_the_limit_is_read_and_one_byte_less_refuses_it(
    tmp_path: Path, fmt: str, compressed: bool
) -> None:
    name = "array" if fmt == "npy" else "embeddings"
    embeddings = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    path = save(tmp_path / f"emb.{fmt}", fmt, {name: embeddings}, compressed=compressed)

    [info] = inspect_arrays(path, fmt=fmt, max_array_bytes=embeddings.nbytes)
    loaded = load_array(path, fmt=fmt, max_array_bytes=embeddings.nbytes)

    assert info.shape == [64, 32]
    np.testing.assert_array_equal(loaded, embeddings)
    for call in (
        lambda: inspect_arrays(path, fmt=fmt, max_array_bytes=embeddings.nbytes - 1),
        lambda: load_array(path, fmt=fmt, max_array_bytes=embeddings.nbytes - 1),
    ):
        error = refused_as_too_large(call, array=name, size=embeddings.nbytes)
        assert error.limit == embeddings.nbytes - 1
        assert f"{embeddings.nbytes - 1} bytes" in error.message


def test_parquet_column_is_held_to_the_limit_by_its_decoded_size(tmp_path: Path) -> None:
    embeddings = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    path = save(tmp_path / "emb.parquet", "parquet", {"embeddings": embeddings})

    np.testing.assert_array_equal(
        load_array(path, fmt="parquet", max_array_bytes=2 * embeddings.nbytes), embeddings
    )
    refused_as_too_large(
        lambda: inspect_arrays(path, fmt="parquet", max_array_bytes=embeddings.nbytes - 1),
        array="embeddings",
    )


def test_bfloat16_tensor_counts_at_the_float32_it_loads_as(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 256, dtype=np.float32)
    path = tmp_path / "bf16.safetensors"
    write_raw_safetensors(path, {"t": ("BF16", [256], bfloat16_words(values))})

    assert inspect_arrays(path, fmt="safetensors", max_array_bytes=4 * 256)
    refused_as_too_large(
        lambda: load_array(path, fmt="safetensors", max_array_bytes=4 * 256 - 1),
        array="t",
        size=4 * 256,
    )


def test_limit_below_one_byte_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    path = save(tmp_path / "a.npy", "npy", {"a": np.ones(3)})

    with pytest.raises(ArrayFileError, match="at least 1") as caught:
        inspect_arrays(path, fmt="npy", max_array_bytes=0)
    assert caught.value.field == "max_array_bytes"


# --------------------------------------------------------------------------- npy, npz


def test_npy_header_asking_for_more_than_the_limit_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    shape = (1 << 30, 1 << 10)  # 4 TiB of float32, in a file of 200 bytes
    path = write(tmp_path / "forged.npy", bombs.npy_header(shape) + bytes(64))

    for call in (
        lambda: inspect_arrays(path, fmt="npy", max_array_bytes=MIB),
        lambda: load_array(path, fmt="npy", max_array_bytes=MIB, mmap=False),
    ):
        refused_as_too_large(call, array="array", size=4 << 40)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_negative_dimension_in_an_npy_header_is_refused_naming_the_array(
    tmp_path: Path, fmt: str
) -> None:
    member = bombs.npy_header((-3, 8)) + bytes(96)
    if fmt == "npz":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("embeddings.npy", member)
        member = buffer.getvalue()
    path = write(tmp_path / f"negative.{fmt}", member)
    name = "array" if fmt == "npy" else "embeddings"

    for call in (
        lambda: inspect_arrays(path, fmt=fmt, max_array_bytes=MIB),
        lambda: load_array(path, fmt=fmt, max_array_bytes=MIB),
        lambda: load_array(path, fmt=fmt),
    ):
        with pytest.raises(ArrayFileError, match="negative dimension") as caught:
            call()
        assert caught.value.field == "file"
        assert repr(name) in caught.value.message


def test_deflate_bomb_is_refused_from_its_directory_without_inflating(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.npz", bombs.npz_bomb())

    growth, _ = peak_rss_growth(
        lambda: refused_as_too_large(
            lambda: inspect_arrays(path, fmt="npz", max_array_bytes=16 * MIB),
            array="embeddings",
            size=bombs.GIB + len(bombs.npy_header((1 << 18, 1024))),
        )
    )

    assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"


def test_zip_directory_declaring_more_than_the_data_hold_is_refused_unread(
    tmp_path: Path,
) -> None:
    # 1 MiB of real data, declared as 1 TiB: inflating it would end in a CRC error
    # instead, so the size named shows the directory alone decided.
    content = bombs.npz_with_lying_directory(
        declared_size=1 << 40, header_shape=(256, 1024), inflated_bytes=MIB
    )
    path = write(tmp_path / "lie.npz", content)

    refused_as_too_large(
        lambda: load_array(path, fmt="npz", max_array_bytes=16 * MIB),
        array="embeddings",
        size=1 << 40,
    )


def test_zip_directory_declaring_less_stops_inflating_at_its_declared_size(
    tmp_path: Path,
) -> None:
    # Declares one row of 4 KiB, holds 1 GiB: zipfile stops at the declared size, where
    # the CRC (that of the whole member) fails.
    header = bombs.npy_header((1, 1024))
    content = bombs.npz_with_lying_directory(
        declared_size=len(header) + 4096, header_shape=(1, 1024)
    )
    path = write(tmp_path / "lie.npz", content)

    def scan() -> None:
        with pytest.raises(ArrayFileError, match="CRC"):
            inspect_arrays(path, fmt="npz", max_array_bytes=16 * MIB)

    growth, _ = peak_rss_growth(scan)

    assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"


def test_counting_reader_yields_what_zlib_inflates_and_stops_past_its_allowance() -> None:
    stream = bombs.deflate_zeros(3 * MIB, prefix=b"npy header")
    inflated = zlib.decompress(stream.data, -15)
    member = bombs.ZipMember("a.npy", stream.data, stream.crc32, stream.inflated_bytes)
    archive_bytes = bombs.zip_archive([member])

    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive, archive.open("a.npy") as raw:
        reader = arrayfiles.npz._CountingReader(raw, allowance=None, name="a", limit=None)
        read = b"".join(iter(lambda: reader.read(64 << 10), b""))
    assert read == inflated
    assert reader.count == len(inflated) == stream.inflated_bytes

    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive, archive.open("a.npy") as raw:
        reader = arrayfiles.npz._CountingReader(raw, allowance=MIB, name="a", limit=MIB)
        with pytest.raises(ArrayTooLargeError) as caught:
            while reader.read(64 << 10):
                pass
    assert caught.value.array == "a" and caught.value.size is None
    assert MIB < reader.count <= MIB + (64 << 10)


def test_npz_members_sharing_their_data_are_refused(tmp_path: Path) -> None:
    stream = bombs.deflate_zeros(MIB, prefix=bombs.npy_header((256, 1024)))
    first = bombs.ZipMember("a.npy", stream.data, stream.crc32, stream.inflated_bytes)
    overlapping = bombs.ZipMember(
        "b.npy", stream.data, stream.crc32, stream.inflated_bytes, header_offset=0
    )
    path = write(tmp_path / "overlap.npz", bombs.zip_archive([first, overlapping]))

    with pytest.raises(ArrayFileError, match="overlap"):
        inspect_arrays(path, fmt="npz", max_array_bytes=16 * MIB)


def test_npz_member_compressed_with_bzip2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bzip2.npz"
    buffer = io.BytesIO()
    np.save(buffer, np.ones((4, 4), dtype=np.float32))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("a.npy", buffer.getvalue())

    with pytest.raises(ArrayFileError, match="only stored and deflated"):
        inspect_arrays(path, fmt="npz", max_array_bytes=MIB)


# --------------------------------------------------------------------------- safetensors


def test_safetensors_header_longer_than_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.safetensors", (1 << 40).to_bytes(8, "little") + b"{}")

    with pytest.raises(ArrayFileError, match="more than the file"):
        inspect_arrays(path, fmt="safetensors", max_array_bytes=MIB)


def test_safetensors_header_past_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    header = b'{"__metadata__": {"pad": "' + b" " * (2 * MIB) + b'"}}'
    path = write(tmp_path / "t.safetensors", len(header).to_bytes(8, "little") + header)

    error = refused_as_too_large(
        lambda: inspect_arrays(path, fmt="safetensors", max_array_bytes=MIB),
        array="",
        size=len(header),
    )
    assert "the safetensors header" in error.message


def test_safetensors_header_past_16_mib_is_refused_whatever_the_limit(tmp_path: Path) -> None:
    header = b'{"__metadata__": {"pad": "' + b" " * (17 * MIB) + b'"}}'
    path = write(tmp_path / "t.safetensors", len(header).to_bytes(8, "little") + header)

    with pytest.raises(ArrayFileError, match="headers of more than"):
        inspect_arrays(path, fmt="safetensors")


# --------------------------------------------------------------------------- parquet


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary", "plain"])
def test_parquet_constant_column_is_refused_from_its_footer(
    tmp_path: Path, dictionary: bool
) -> None:
    rows = 16 * MIB // 4  # 16 MiB of float32 zeros: a few KB of zstd
    path = write(tmp_path / "bomb.parquet", bombs.parquet_bomb(rows=rows, dictionary=dictionary))
    assert path.stat().st_size < MIB // 4

    error = refused_as_too_large(
        lambda: scan_arrays(path, fmt="parquet", max_array_bytes=MIB), array="embeddings"
    )
    # Dictionary pages are small and their values many; plain pages are the values.
    metadata = pq.ParquetFile(path).metadata
    uncompressed = sum(
        metadata.row_group(group).column(0).total_uncompressed_size
        for group in range(metadata.num_row_groups)
    )
    assert error.size == (4 * rows if dictionary else uncompressed)
    assert uncompressed < 4 * rows if dictionary else uncompressed > 4 * rows


def test_parquet_page_larger_than_its_footer_says_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path / "lie.parquet", bombs.parquet_with_lying_page(page_bytes=256 * MIB))

    growth, _ = peak_rss_growth(
        lambda: refused_as_too_large(
            lambda: load_array(path, fmt="parquet", max_array_bytes=16 * MIB), array="embeddings"
        )
    )

    assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"


def test_parquet_page_that_declares_too_many_values_is_refused(tmp_path: Path) -> None:
    # The footer says 4096 rows; the page header says 2**30 values (4 GiB of float32).
    content = bombs.parquet_with_lying_page(page_bytes=4096 * 4, page_values=1 << 30)
    path = write(tmp_path / "values.parquet", content)

    refused_as_too_large(
        lambda: scan_arrays(path, fmt="parquet", max_array_bytes=MIB), array="embeddings"
    )


def test_parquet_statistics_that_abort_pyarrow_accessors_are_refused_in_process(
    tmp_path: Path,
) -> None:
    # pyarrow's RowGroupMetaData.column() aborts the process (std::terminate) on this
    # histogram; the readers never call it, so the file is an ordinary refusal. Run in a
    # child: were it called, the abort would take the test runner down with it.
    content = bombs.parquet_with_lying_page(page_bytes=16384, repetition_histogram=[1, 2])
    path = write(tmp_path / "histogram.parquet", content)
    script = (
        "import sys\n"
        "from arrayfiles import load_array, scan_arrays\n"
        "from arrayfiles.errors import ArrayFileError\n"
        "for read in (scan_arrays, load_array):\n"
        "    try:\n"
        f"        read({str(path)!r}, fmt='parquet', max_array_bytes=1 << 24)\n"
        "    except ArrayFileError as error:\n"
        "        print('refused:', error)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("refused: file: not a valid parquet file") == 2, result.stdout


def test_parquet_dictionary_of_one_long_string_is_refused_unexpanded(tmp_path: Path) -> None:
    # 16,384 copies of a 64 KiB string: 1 GiB as Arrow strings, 4 GiB as numpy's.
    path = write(
        tmp_path / "strings.parquet", bombs.parquet_string_bomb(rows=1 << 14, chars=1 << 16)
    )

    growth, _ = peak_rss_growth(
        lambda: refused_as_too_large(
            lambda: scan_arrays(path, fmt="parquet", max_array_bytes=16 * MIB), array="labels"
        )
    )

    assert growth < 64 * MIB, f"RSS grew by {growth / MIB:.0f} MiB"


def test_parquet_strings_load_from_dictionaries_as_unicode(tmp_path: Path) -> None:
    words = np.array(["cat", "héron", "", "dog", "cat"] * 40)
    column = pa.array(words).dictionary_encode()
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"labels": column, "plain": pa.array(words)}), path, row_group_size=64)

    for name in ("labels", "plain"):
        loaded = load_array(path, fmt="parquet", name=name, max_array_bytes=MIB)
        assert loaded.dtype == np.dtype("<U5")
        np.testing.assert_array_equal(loaded, words)


def test_parquet_columns_array_is_held_to_the_limit_on_its_own(tmp_path: Path) -> None:
    rows = 4096
    table = pa.table({f"x{j}": np.ones(rows, dtype=np.float64) for j in range(4)})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    limit = 2 * rows * 8  # each column fits; the four side by side do not

    assert load_array(path, fmt="parquet", name="x0", max_array_bytes=limit).shape == (rows,)
    refused_as_too_large(
        lambda: load_array(path, fmt="parquet", name="__columns__", max_array_bytes=limit),
        array="__columns__",
        size=4 * rows * 8,
    )


def test_parquet_footer_past_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({f"c{j}": [1.0, 2.0] for j in range(64)}), path)
    footer_bytes = int.from_bytes(path.read_bytes()[-8:-4], "little")

    error = refused_as_too_large(
        lambda: inspect_arrays(path, fmt="parquet", max_array_bytes=footer_bytes - 1),
        array="",
        size=footer_bytes,
    )
    assert "the parquet footer" in error.message


# --------------------------------------------------------------------------- values


def zero_row_facts(array: np.ndarray) -> tuple[int, int | None]:
    """Zero rows of ``array`` cast to float32, by numpy directly."""
    with np.errstate(over="ignore"):
        zero = ~array.astype(np.float32).any(axis=1)
    rows = np.flatnonzero(zero)
    return len(rows), (int(rows[0]) if len(rows) else None)


def embeddings_with_zero_rows(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    array = (rng.standard_normal((103, 7)) * 100).astype(dtype)
    array[array == 0] = 1  # integers truncated to 0 would add zero rows of their own
    array[[4, 50, 102]] = 0
    if np.dtype(dtype).itemsize == 8:
        array[9] = 1e-60  # underflows to zero in float32
    array[60, :6] = 0  # one non-zero left: not a zero row
    return array


@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "parquet"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
def test_scan_counts_zero_rows_as_numpy_does_in_float32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, dtype: str
) -> None:
    # Chunks of 40 bytes split rows of 7 values anywhere: the count must not care.
    read_in_chunks_of(monkeypatch, 40)
    array = embeddings_with_zero_rows(dtype)
    name = "array" if fmt == "npy" else "embeddings"
    path = save(tmp_path / f"e.{fmt}", fmt, {name: array}, compressed=True)

    [scanned] = scan_arrays(path, fmt=fmt, max_array_bytes=MIB)

    zero_rows, first = zero_row_facts(array)
    assert (scanned.stats.zero_rows, scanned.stats.first_zero_row) == (zero_rows, first)
    assert (zero_rows, first) == ((4, 4) if dtype == "float64" else (3, 4))
    assert array_stats(array, chunk_rows=10) == scanned.stats


def test_scan_counts_zero_rows_of_fortran_ordered_npy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_in_chunks_of(monkeypatch, 24)
    array = np.asfortranarray(embeddings_with_zero_rows("float64"))
    path = tmp_path / "f.npy"
    np.save(path, array)

    [scanned] = scan_arrays(path, fmt="npy")

    assert (scanned.stats.zero_rows, scanned.stats.first_zero_row) == zero_row_facts(array)


def test_scan_counts_zero_rows_of_bfloat16_and_parquet_columns_array(tmp_path: Path) -> None:
    array = embeddings_with_zero_rows("float32")
    tensors = tmp_path / "bf16.safetensors"
    write_raw_safetensors(tensors, {"t": ("BF16", list(array.shape), bfloat16_words(array))})
    table = tmp_path / "columns.parquet"
    pq.write_table(pa.table({f"x{j}": array[:, j] for j in range(array.shape[1])}), table)

    [bf16] = scan_arrays(tensors, fmt="safetensors")
    *_, columns = scan_arrays(table, fmt="parquet")

    assert columns.info.name == "__columns__"
    for scanned in (bf16, columns):
        assert (scanned.stats.zero_rows, scanned.stats.first_zero_row) == zero_row_facts(array)


@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "parquet"])
def test_float64_values_that_overflow_float32_are_refused_naming_the_array(
    tmp_path: Path, fmt: str
) -> None:
    array = np.random.default_rng(6).standard_normal((20, 3))
    array[2, 1], array[5, 0] = 1e300, -3.5e38  # both beyond float32's 3.4028e38
    array[7, 2] = 3.4e38  # within it
    name = "array" if fmt == "npy" else "embeddings"
    path = save(tmp_path / f"o.{fmt}", fmt, {name: array})
    with np.errstate(over="ignore"):
        overflowing = int(np.count_nonzero(np.isinf(array.astype(np.float32))))

    with pytest.raises(ArrayFileError, match="rescale") as caught:
        inspect_arrays(path, fmt=fmt, max_array_bytes=MIB)

    assert caught.value.field == "file"
    assert f"array {name!r} holds {overflowing} values beyond float32" in caught.value.message
    assert overflowing == 2
    assert array_stats(array).n_overflow == 2


def test_partial_underflow_is_accepted(tmp_path: Path) -> None:
    array = np.random.default_rng(7).standard_normal((10, 3))
    array[4, 1] = 1e-60  # becomes 0 in float32; the row keeps two other values
    path = save(tmp_path / "u.npy", "npy", {"a": array})

    [scanned] = scan_arrays(path, fmt="npy", max_array_bytes=MIB)

    assert scanned.stats.zero_rows == 0 and scanned.stats.n_overflow == 0
