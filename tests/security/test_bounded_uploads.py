"""Every input bounded: bombs and forged headers against the real stack.

Measured on main before this: a 1 MB npz (one deflated 1 GiB member) and a 1 MB zstd
parquet each raised the API's resident memory by about 1 GiB and were accepted, since
NNKGEO_MAX_UPLOAD_BYTES counts only compressed bytes; an npy with a negative dimension,
float64 values that overflow float32, and a 4,096-character path gave a 500 or garbage.
Here each is refused (413 naming NNKGEO_MAX_ARRAY_BYTES and the array, or 422 naming the
field), the API's memory grows by far less than the bomb, and nothing is kept.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.helpers import (
    assert_problem,
    blob_files,
    npy_bytes,
    npz_bytes,
    staging_files,
    submit,
    upload,
)
from tests.integration.stack import ServiceStack
from tests.security import bombs
from tests.security.conftest import SECURITY_SETTINGS

pytestmark = pytest.mark.integration

MAX_UPLOAD_BYTES = int(SECURITY_SETTINGS["NNKGEO_MAX_UPLOAD_BYTES"])
MAX_ARRAY_BYTES = int(SECURITY_SETTINGS["NNKGEO_MAX_ARRAY_BYTES"])
# A bomb inflates to 1 GiB; reading it whole, or half of it, would pass this.
MAX_RSS_GROWTH_BYTES = 256 * 1024**2


def peak_rss_growth(pid: int, action: Callable[[], httpx.Response]) -> tuple[int, httpx.Response]:
    """Run ``action`` while sampling process ``pid``'s RSS; return (peak - baseline, result)."""
    process = psutil.Process(pid)
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss) - baseline, result


@pytest.fixture(scope="module")
def api_pid(security_stack: ServiceStack, tenant: httpx.Client) -> int:
    """The API's process id, once it has read one small file of each kind: whatever it
    allocates on first use is not counted against the bombs."""
    assert security_stack.api is not None
    points = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    sink = io.BytesIO()
    pq.write_table(pa.table({"x": points[:, 0], "y": points[:, 1]}), sink, compression="zstd")
    for content, fmt in ((npz_bytes(warm=points), "npz"), (sink.getvalue(), "parquet")):
        assert upload(tenant, content, fmt=fmt).status_code in (200, 201)
    return security_stack.api.process.pid


@pytest.fixture
def nothing_kept(security_stack: ServiceStack) -> Iterator[None]:
    """The test adds no blob and leaves nothing in the staging directory."""
    blobs_before = blob_files(security_stack.data_dir)
    yield
    assert staging_files(security_stack.data_dir) == []
    assert blob_files(security_stack.data_dir) == blobs_before


def upload_measured(
    client: httpx.Client, pid: int, content: bytes, *, fmt: str
) -> tuple[int, httpx.Response]:
    # The bomb must pass the upload limit: that limit alone is what let it in on main.
    assert len(content) < MAX_UPLOAD_BYTES
    started = time.monotonic()
    growth, response = peak_rss_growth(pid, lambda: upload(client, content, fmt=fmt))
    print(
        f"\n{fmt} of {len(content)} bytes -> {response.status_code} in "
        f"{time.monotonic() - started:.2f} s; API RSS grew by {growth / 2**20:.1f} MiB"
    )
    return growth, response


def assert_array_too_large(response: httpx.Response, array: str) -> None:
    problem = assert_problem(response, 413, field="file")
    assert problem["type"].endswith("array-too-large"), problem
    assert "NNKGEO_MAX_ARRAY_BYTES" in problem["detail"], problem
    assert repr(array) in problem["detail"], problem


# --------------------------------------------------------------------------- bombs


def test_npz_bomb_is_refused_before_it_inflates(
    tenant: httpx.Client, api_pid: int, nothing_kept: None
) -> None:
    content = bombs.npz_bomb()

    growth, response = upload_measured(tenant, api_pid, content, fmt="npz")

    assert_array_too_large(response, "embeddings")
    assert growth < MAX_RSS_GROWTH_BYTES


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary", "plain"])
def test_zstd_parquet_bomb_is_refused_from_its_footer(
    tenant: httpx.Client, api_pid: int, nothing_kept: None, dictionary: bool
) -> None:
    content = bombs.parquet_bomb(dictionary=dictionary)

    growth, response = upload_measured(tenant, api_pid, content, fmt="parquet")

    assert_array_too_large(response, "embeddings")
    assert growth < MAX_RSS_GROWTH_BYTES


def test_parquet_page_that_lies_past_its_footer_is_refused(
    tenant: httpx.Client, api_pid: int, nothing_kept: None
) -> None:
    # The footer declares 16 KB; pyarrow would size its buffer from the page header.
    content = bombs.parquet_with_lying_page()

    growth, response = upload_measured(tenant, api_pid, content, fmt="parquet")

    assert_array_too_large(response, "embeddings")
    assert growth < MAX_RSS_GROWTH_BYTES


def test_parquet_dictionary_of_strings_that_would_expand_is_refused(
    tenant: httpx.Client, api_pid: int, nothing_kept: None
) -> None:
    # One 1 MiB string referenced by a million rows: 4 TB as a numpy string array.
    content = bombs.parquet_string_bomb()

    growth, response = upload_measured(tenant, api_pid, content, fmt="parquet")

    assert_array_too_large(response, "labels")
    assert growth < MAX_RSS_GROWTH_BYTES


@pytest.mark.parametrize(
    ("declared_size", "header_shape", "status"),
    [
        # Declares one small row: zipfile stops there and the CRC (of 1 GiB) fails.
        (4096 + 128, (1, 1024), 422),
        # Declares 1 MiB, which passes; the npy header inside asks for 1 GiB.
        (1 << 20, (1 << 18, 1024), 413),
        # Declares 1 TiB (zip64), refused from the directory alone.
        (1 << 40, (1, 1024), 413),
    ],
    ids=["declares-less", "npy-header-asks-more", "declares-more"],
)
def test_npz_whose_zip_directory_lies_about_its_size_is_refused(
    tenant: httpx.Client,
    api_pid: int,
    nothing_kept: None,
    declared_size: int,
    header_shape: tuple[int, ...],
    status: int,
) -> None:
    content = bombs.npz_with_lying_directory(declared_size=declared_size, header_shape=header_shape)

    growth, response = upload_measured(tenant, api_pid, content, fmt="npz")

    assert_problem(response, status, field="file")
    if status == 413:
        assert_array_too_large(response, "embeddings")
    assert growth < MAX_RSS_GROWTH_BYTES


def test_array_limit_is_the_array_setting_not_the_upload_limit(
    tenant: httpx.Client, nothing_kept: None
) -> None:
    # Inflates past NNKGEO_MAX_ARRAY_BYTES yet stays far below NNKGEO_MAX_UPLOAD_BYTES
    # both compressed and inflated: only the array limit can refuse it.
    inflated = MAX_ARRAY_BYTES + (1 << 20)
    assert inflated < MAX_UPLOAD_BYTES
    content = bombs.npz_bomb(inflated)

    response = upload(tenant, content, fmt="npz")

    assert_array_too_large(response, "embeddings")
    assert str(MAX_ARRAY_BYTES) in response.json()["detail"]


# --------------------------------------------------------------------------- 422s


def test_npy_with_a_negative_dimension_is_a_422_naming_the_file(
    tenant: httpx.Client, nothing_kept: None
) -> None:
    content = bombs.npy_header((-1, 8)) + bytes(64)

    problem = assert_problem(upload(tenant, content, fmt="npy"), 422, field="file")

    assert "negative dimension" in problem["detail"]


def test_float64_values_that_overflow_float32_are_a_422_naming_the_array(
    tenant: httpx.Client, nothing_kept: None
) -> None:
    points = np.random.default_rng(1).standard_normal((20, 4))
    points[7, 1] = 1e300  # finite in float64, +inf in float32
    labels = np.arange(20)

    response = upload(tenant, npz_bytes(embeddings=points, labels=labels), fmt="npz")

    problem = assert_problem(response, 422, field="file")
    assert "'embeddings'" in problem["detail"]
    assert "float32" in problem["detail"] and "rescale" in problem["detail"]


def test_partial_float32_underflow_is_accepted(tenant: httpx.Client) -> None:
    points = np.random.default_rng(2).standard_normal((20, 4))
    points[3, 0] = 1e-60  # flushes to 0 in float32; the row keeps its other values

    assert upload(tenant, npy_bytes(points)).status_code in (200, 201)


def test_zero_rows_are_refused_at_submission_naming_the_first(tenant: httpx.Client) -> None:
    points = np.random.default_rng(3).standard_normal((30, 4))
    points[[11, 17]] = 0.0
    points[5] = 1e-60  # all zero once cast to float32, the analysis's precision
    dataset = upload(tenant, npy_bytes(points))
    assert dataset.status_code in (200, 201), dataset.text

    body = {
        "sets": [{"name": "z", "embeddings": {"dataset": dataset.json()["id"]}}],
        "params": {"k": 5},
    }
    problem = assert_problem(submit(tenant, body), 422, field="sets[z].embeddings")

    assert "3 rows are zero vectors (the first is row 5)" in problem["detail"]


@pytest.mark.parametrize(
    "path",
    ["/dir" * 1024, "/data/" + "n" * 300],
    ids=["4096-characters", "a-300-byte-name"],
)
def test_overlong_dataset_path_is_a_422_naming_the_field(tenant: httpx.Client, path: str) -> None:
    body = {
        "study": {
            "dataset": {"path": path},
            "model": {"family": "mlp", "depth": 1, "widths": [4, 8]},
        },
        "params": {"k": 5},
    }

    problem = assert_problem(submit(tenant, body), 422, field="dataset.path")

    assert problem["errors"][0]["message"]
