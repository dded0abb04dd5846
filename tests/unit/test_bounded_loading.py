"""The workers hold what they load to the same limits, and name what they refuse.

The API checks an upload against NNKGEO_MAX_ARRAY_BYTES; a worker checks the blob again
when it loads it (the limit may have been lowered since), and the analysis judges values
in float32, its precision: an overflow or a row that underflows to zero is named by row.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from jobstate.blobs import BlobStore
from jobstate.checks import check_embedding_values
from jobstate.errors import InvalidInputError
from jobstate.records import ArrayInput, SetInput
from tests.security import bombs
from workers.inputs import load_set
from workers.models.datasets import load_image_folder, load_uploaded_data, resolve_data_path

MIB = 1 << 20


def store_blob(blobs: BlobStore, content: bytes) -> str:
    sha256 = hashlib.sha256(content).hexdigest()
    path = blobs.path_of(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return sha256


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_worker_refuses_a_stored_array_past_its_limit_naming_the_set_array(
    tmp_path: Path,
) -> None:
    blobs = BlobStore(tmp_path)
    sha256 = store_blob(blobs, bombs.npz_bomb(8 * MIB))
    embeddings = ArrayInput(dataset="ds_1", sha256=sha256, format="npz", array="embeddings")
    set_input = SetInput(name="big", embeddings=embeddings)

    with pytest.raises(InvalidInputError) as caught:
        load_set(blobs, set_input, max_array_bytes=MIB)

    assert caught.value.field == "sets[big].embeddings"
    assert "'embeddings'" in caught.value.message
    assert "NNKGEO_MAX_ARRAY_BYTES" in caught.value.message
    assert load_set(blobs, set_input, max_array_bytes=16 * MIB).embeddings.shape == (2048, 1024)


def test_worker_names_the_set_array_of_a_damaged_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    sha256 = store_blob(blobs, bombs.npy_header((-1, 4)) + bytes(32))
    set_input = SetInput(
        name="s", embeddings=ArrayInput(dataset="ds_2", sha256=sha256, format="npy", array="array")
    )

    with pytest.raises(InvalidInputError, match="negative dimension") as caught:
        load_set(blobs, set_input, max_array_bytes=MIB)

    assert caught.value.field == "sets[s].embeddings"


def test_uploaded_model_dataset_is_held_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    inputs = np.zeros((4096, 64), dtype=np.float32)
    path.write_bytes(npz(inputs=inputs, labels=np.arange(4096) % 3))

    assert load_uploaded_data(path, max_array_bytes=MIB).n_points == 4096
    with pytest.raises(InvalidInputError, match="NNKGEO_MAX_ARRAY_BYTES") as caught:
        load_uploaded_data(path, field="study.dataset", max_array_bytes=inputs.nbytes - 1)

    assert caught.value.field == "study.dataset.inputs"


def test_uploaded_model_inputs_that_overflow_float32_are_named_with_the_fix(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.npz"
    inputs = np.ones((6, 2))
    inputs[2, 1] = 1e300
    path.write_bytes(npz(x=inputs, labels=np.arange(6)))

    with pytest.raises(InvalidInputError, match="rescale") as caught:
        load_uploaded_data(path, inputs="x", max_array_bytes=MIB)

    assert caught.value.field == "dataset.inputs"
    assert "'x'" in caught.value.message


def test_path_with_a_nul_byte_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a valid path") as caught:
        resolve_data_path(f"{tmp_path}/a\x00b", roots=[tmp_path], field="study.dataset.path")

    assert caught.value.field == "study.dataset.path"


def test_folder_whose_name_is_too_long_to_open_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    # Inside the roots, so it resolves; opening it fails with ENAMETOOLONG.
    folder = f"{tmp_path}/" + "n" * 300

    with pytest.raises(InvalidInputError, match="cannot be read") as caught:
        load_image_folder(folder, roots=[tmp_path], field="study.dataset.path")

    assert caught.value.field == "study.dataset.path"


# --------------------------------------------------------------------------- analysis


def test_analysis_names_the_first_row_that_overflows_float32() -> None:
    embeddings = np.ones((10, 3))
    embeddings[6, 2] = -1e39

    with pytest.raises(InvalidInputError, match=r"first at row 6\).*rescale") as caught:
        check_embedding_values(embeddings, name="s", kernel="gaussian", chunk_rows=4)

    assert caught.value.field == "sets[s].embeddings"


def test_analysis_names_the_first_row_that_is_zero_in_float32() -> None:
    embeddings = np.ones((10, 3))
    embeddings[7] = 1e-60  # not zero in float64, all zero in float32
    embeddings[8] = 0.0

    with pytest.raises(InvalidInputError, match="row 7 is a zero vector"):
        check_embedding_values(embeddings, name="s", kernel="cosine", chunk_rows=4)
    check_embedding_values(embeddings, name="s", kernel="gaussian", chunk_rows=4)


def test_analysis_accepts_partial_underflow() -> None:
    embeddings = np.ones((10, 3))
    embeddings[4, 0] = 1e-60

    check_embedding_values(embeddings, name="s", kernel="cosine")
