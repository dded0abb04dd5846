"""Bad input of every kind gets a 4xx problem+json, never a 5xx, and leaves no file."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from tests.integration.conftest import MAX_UPLOAD_BYTES
from tests.integration.helpers import (
    OCTET_STREAM,
    assert_problem,
    blob_files,
    job_body,
    npy_bytes,
    npz_bytes,
    staging_files,
    submit,
    upload,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import ServiceStack

pytestmark = pytest.mark.integration

_rng = np.random.default_rng(3)
_points = _rng.standard_normal((50, 8)).astype(np.float32)


def _with(value: float) -> np.ndarray:
    points = _points.copy()
    points[3, 2] = value
    return points


def _pickled_npy() -> bytes:
    return npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


UPLOAD_CORPUS: dict[str, tuple[bytes, str]] = {
    "nan": (npy_bytes(_with(np.nan)), "npy"),
    "inf": (npy_bytes(_with(np.inf)), "npy"),
    "empty-array": (npy_bytes(np.zeros((0, 8), dtype=np.float32)), "npy"),
    "pickled-npy": (_pickled_npy(), "npy"),
    "raw-pickle": (pickle.dumps({"embeddings": [1.0, 2.0]}), "npy"),
    "truncated-npy": (npy_bytes(_points)[:-100], "npy"),
    "truncated-npz": (npz_bytes(a=_points)[:-40], "npz"),
    "npy-as-parquet": (npy_bytes(_points), "parquet"),
    "garbage-safetensors": (b"\xff" * 64, "safetensors"),
    "empty-body": (b"", "npy"),
}


@pytest.fixture
def no_leftovers(stack: ServiceStack) -> Iterator[None]:
    """The test adds no blob and leaves nothing in the staging directory."""
    blobs_before = blob_files(stack.data_dir)
    yield
    assert staging_files(stack.data_dir) == []
    assert blob_files(stack.data_dir) == blobs_before


@pytest.mark.parametrize("case", sorted(UPLOAD_CORPUS))
def test_invalid_upload_is_refused_without_leaving_a_file(
    alpha: httpx.Client, no_leftovers: None, case: str
) -> None:
    content, fmt = UPLOAD_CORPUS[case]

    response = upload(alpha, content, fmt=fmt)

    problem = assert_problem(response, 422)
    assert problem["errors"], problem
    assert problem["errors"][0]["message"]


def test_unknown_format_is_refused(alpha: httpx.Client, no_leftovers: None) -> None:
    problem = assert_problem(upload(alpha, npy_bytes(_points), fmt="xlsx"), 422)

    assert [error["field"] for error in problem["errors"]] == ["query.format"]
    # The allowed formats are listed, once.
    assert problem["errors"][0]["message"].count("'npz'") == 1, problem


_CSV_TEXT = "\n".join(",".join(f"{value:.4f}" for value in row) for row in _points).encode()


def _assert_csv_hint(problem: dict, field: str) -> None:
    assert [error["field"] for error in problem["errors"]] == [field], problem
    message = problem["errors"][0]["message"]
    assert "CSV is not supported" in message, message
    assert "np.loadtxt('x.csv', delimiter=','" in message and "upload x.npy" in message, message
    assert "to_parquet" in message, message
    assert problem["type"].endswith("csv-not-supported"), problem


@pytest.mark.parametrize("content_type", ["text/csv", "text/csv; charset=utf-8", "application/csv"])
def test_csv_by_content_type_is_answered_with_how_to_convert_it(
    alpha: httpx.Client, no_leftovers: None, content_type: str
) -> None:
    response = alpha.post(
        "/v1/datasets?format=npy", content=_CSV_TEXT, headers={"Content-Type": content_type}
    )

    _assert_csv_hint(assert_problem(response, 415), "header.Content-Type")


def test_csv_with_no_format_is_answered_with_how_to_convert_it(
    alpha: httpx.Client, no_leftovers: None
) -> None:
    response = alpha.post("/v1/datasets", content=_CSV_TEXT, headers={"Content-Type": "text/csv"})

    _assert_csv_hint(assert_problem(response, 415), "header.Content-Type")


@pytest.mark.parametrize("fmt", ["csv", "CSV", "tsv"])
def test_csv_by_format_is_answered_with_how_to_convert_it(
    alpha: httpx.Client, no_leftovers: None, fmt: str
) -> None:
    _assert_csv_hint(assert_problem(upload(alpha, _CSV_TEXT, fmt=fmt), 422), "query.format")


@pytest.mark.parametrize("fmt", ["npy", "npz", "parquet", "safetensors"])
def test_csv_bytes_sent_as_another_format_are_recognised(
    alpha: httpx.Client, no_leftovers: None, fmt: str
) -> None:
    with_header = b"f0,f1,f2,f3,f4,f5,f6,f7\n" + _CSV_TEXT

    _assert_csv_hint(assert_problem(upload(alpha, with_header, fmt=fmt), 422), "file")


def test_csv_hint_needs_a_key_first(stack: ServiceStack) -> None:
    with stack.client(None) as anonymous:
        response = anonymous.post(
            "/v1/datasets?format=csv", content=_CSV_TEXT, headers={"Content-Type": "text/csv"}
        )
    assert_problem(response, 401)


def test_missing_format_is_refused(alpha: httpx.Client, no_leftovers: None) -> None:
    response = alpha.post("/v1/datasets", content=npy_bytes(_points), headers=OCTET_STREAM)
    assert_problem(response, 422, field="query.format")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_upload_with_the_wrong_content_type_is_refused(
    alpha: httpx.Client, no_leftovers: None, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = alpha.post("/v1/datasets?format=npy", content=npy_bytes(_points), headers=headers)
    assert_problem(response, 415)


def test_oversize_upload_with_content_length_is_refused_up_front(
    alpha: httpx.Client, no_leftovers: None
) -> None:
    response = upload(alpha, b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert_problem(response, 413)


def test_oversize_streamed_upload_is_refused_once_it_passes_the_limit(
    alpha: httpx.Client, no_leftovers: None
) -> None:
    def chunks() -> Iterator[bytes]:
        block = b"\0" * (1 << 20)
        for _ in range(MAX_UPLOAD_BYTES // len(block) + 2):
            yield block

    # A generator body is sent chunked, without Content-Length.
    try:
        response = alpha.post("/v1/datasets?format=npy", content=chunks(), headers=OCTET_STREAM)
    except httpx.WriteError:
        pytest.fail("the server closed the connection without answering 413")
    assert_problem(response, 413)


@pytest.fixture(scope="module")
def small_set(alpha: httpx.Client) -> str:
    return upload_array(alpha, _points)


SUBMIT_CORPUS: dict[str, tuple[Callable[[], dict[str, np.ndarray]], dict, str]] = {
    # name: (arrays to upload, params, field the problem names)
    "one-row": (lambda: {"embeddings": _points[:1]}, {"k": 1}, "embeddings"),
    "three-d": (lambda: {"embeddings": _points.reshape(50, 4, 2)}, {"k": 5}, "embeddings"),
    "string-dtype": (
        lambda: {"embeddings": np.array([["a", "b"]] * 50)},
        {"k": 5},
        "embeddings",
    ),
    "labels-too-short": (
        lambda: {"embeddings": _points, "labels": np.arange(49)},
        {"k": 5},
        "labels",
    ),
    "labels-float": (
        lambda: {"embeddings": _points, "labels": np.linspace(0, 1, 50)},
        {"k": 5},
        "labels",
    ),
    "k-equals-n": (lambda: {"embeddings": _points}, {"k": 50}, "params.k"),
    "k-above-n": (lambda: {"embeddings": _points}, {"k": 51}, "params.k"),
    "zero-rows-under-cosine": (
        lambda: {"embeddings": np.vstack([_points, np.zeros((2, 8), np.float32)])},
        {"k": 5},
        "embeddings",
    ),
}


@pytest.mark.parametrize("case", sorted(SUBMIT_CORPUS))
def test_invalid_job_is_refused_before_it_is_queued(alpha: httpx.Client, case: str) -> None:
    make_arrays, params, field = SUBMIT_CORPUS[case]
    arrays = make_arrays()
    embeddings = upload_array(alpha, arrays["embeddings"])
    labels = upload_array(alpha, arrays["labels"]) if "labels" in arrays else None
    jobs_before = alpha.get("/v1/jobs", params={"limit": 1}).json()["items"]

    response = submit(alpha, job_body(embeddings, labels, name="bad", **params))

    assert_problem(response, 422, field=field)
    assert alpha.get("/v1/jobs", params={"limit": 1}).json()["items"] == jobs_before


def test_npz_with_several_arrays_needs_an_array_name(alpha: httpx.Client) -> None:
    response = upload(alpha, npz_bytes(layer3=_points, layer4=_points * 2), fmt="npz")
    dataset = response.json()
    assert [array["name"] for array in dataset["arrays"]] == ["layer3", "layer4"]

    unnamed = submit(alpha, job_body(dataset["id"], name="layers", k=5))
    unknown = submit(
        alpha,
        {"sets": [{"name": "x", "embeddings": {"dataset": dataset["id"], "array": "layer9"}}]},
    )
    named = submit(
        alpha,
        {
            "sets": [{"name": "x", "embeddings": {"dataset": dataset["id"], "array": "layer4"}}],
            "params": {"k": 5},
        },
    )

    assert "layer3" in assert_problem(unnamed, 422, field="embeddings.array")["detail"]
    assert_problem(unknown, 422, field="embeddings.array")
    assert named.status_code == 202
    wait_for_status(alpha, named.json()["id"])


@pytest.mark.parametrize("k", [50, 64])
def test_k_not_below_the_number_of_points_says_so_and_gives_n(
    alpha: httpx.Client, small_set: str, k: int
) -> None:
    problem = assert_problem(submit(alpha, job_body(small_set, name="pts", k=k)), 422)

    assert [error["field"] for error in problem["errors"]] == ["params.k"]
    message = problem["errors"][0]["message"]
    assert "number of points (50)" in message and "k <= 49" in message, message
    assert "1024" not in message, message


def test_k_above_the_largest_supported_names_the_bound(alpha: httpx.Client, small_set: str) -> None:
    problem = assert_problem(submit(alpha, job_body(small_set, name="pts", k=5000)), 422)

    assert [error["field"] for error in problem["errors"]] == ["params.k"]
    message = problem["errors"][0]["message"]
    assert "k=5000 is more than 1024, the most kNN candidates per point" in message, message
    assert "use k <= 1024" in message and "number of points" in message, message
    assert message.count("1024") == 2, message


def test_a_bare_dataset_id_is_answered_with_the_object_to_send(alpha: httpx.Client) -> None:
    body = {"sets": [{"name": "emb", "embeddings": "ds_abc", "labels": "ds_lbl"}]}

    problem = assert_problem(submit(alpha, body), 422)

    by_field = {error["field"]: error["message"] for error in problem["errors"]}
    assert set(by_field) == {"sets[emb].embeddings", "sets[emb].labels"}, problem
    assert '{"dataset": "ds_abc", "array": "NAME"}' in by_field["sets[emb].embeddings"]
    assert '{"dataset": "ds_lbl", "array": "NAME"}' in by_field["sets[emb].labels"]
    assert "valid dictionary" not in problem["detail"], problem


def test_an_allowed_value_list_is_given_once(alpha: httpx.Client, small_set: str) -> None:
    body = job_body(small_set, name="pts", kernel="linear", knn="fuzzy")

    problem = assert_problem(submit(alpha, body), 422)

    by_field = {error["field"]: error["message"] for error in problem["errors"]}
    assert set(by_field) == {"params.kernel", "params.knn"}, problem
    assert by_field["params.kernel"].count("'gaussian'") == 1, by_field
    assert by_field["params.knn"].count("'approximate'") == 1, by_field
    assert problem["detail"].count("'gaussian'") == 1, problem


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        # Pydantic's errors and the service's checks name a set the same way: by its name.
        (
            {"sets": [{"name": "a", "embeddings": {"dataset": ""}}]},
            ["sets[a].embeddings.dataset"],
        ),
        (
            {"sets": [{"name": "a", "embeddings": {"dataset": "ds_nope"}}]},
            ["sets[a].embeddings.dataset"],
        ),
        (
            {
                "sets": [
                    {"name": "first", "embeddings": {"dataset": "ds_x"}},
                    {"name": "second", "embeddings": {"dataset": "ds_x", "extra": 1}},
                ]
            },
            ["sets[second].embeddings.extra"],
        ),
        # A set without a valid name is named by its position, in the same brackets.
        ({"sets": [{"name": "../etc", "embeddings": {"dataset": "ds_x"}}]}, ["sets[0].name"]),
        ({"sets": [{"embeddings": {"dataset": "ds_x"}}]}, ["sets[0].name"]),
        (
            {
                "sets": [{"name": "a", "embeddings": {"dataset": "ds_x"}}],
                "params": {"baselines": ["x"]},
            },
            ["params.baselines[0]"],
        ),
    ],
    ids=["pydantic", "service", "second-set", "bad-name", "no-name", "list-item"],
)
def test_every_field_path_has_one_style(alpha: httpx.Client, body: dict, fields: list[str]) -> None:
    problem = assert_problem(submit(alpha, body), 422)
    assert [error["field"] for error in problem["errors"]] == fields, problem
    assert problem["detail"].startswith(f"{fields[0]}: "), problem


def test_gaussian_kernel_accepts_zero_rows(alpha: httpx.Client) -> None:
    points = np.vstack([_points, np.zeros((2, 8), np.float32)])
    response = submit(alpha, job_body(upload_array(alpha, points), kernel="gaussian", k=5))
    assert response.status_code == 202, response.text
    assert wait_for_status(alpha, response.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sets": []}, "sets"),
        # None of sets, embed and study: the body as a whole is wrong (its message names them).
        ({"params": {"k": 5}}, "body"),
        ({"sets": [{"name": "a", "embeddings": {"dataset": "ds_x"}}], "bogus": 1}, "bogus"),
        (
            {"sets": [{"name": "a", "embeddings": {"dataset": "ds_x"}}], "params": {"kk": 5}},
            "params.kk",
        ),
        (
            {"sets": [{"name": "a", "embeddings": {"dataset": "ds_x"}}], "params": {"k": 0}},
            "params.k",
        ),
        (
            {
                "sets": [{"name": "a", "embeddings": {"dataset": "ds_x"}}],
                "params": {"kernel": "cosine", "sigma": 1.0},
            },
            "params",
        ),
        ({"sets": [{"name": "../etc", "embeddings": {"dataset": "ds_x"}}]}, "sets[0].name"),
        (
            {
                "sets": [
                    {"name": "a", "embeddings": {"dataset": "ds_x"}},
                    {"name": "a", "embeddings": {"dataset": "ds_x"}},
                ]
            },
            "sets",
        ),
        ({"embed": {"model": "resnet18"}}, "embed"),
        (
            {"sets": [{"name": "a", "embeddings": {"dataset": "ds_unknown"}}]},
            "embeddings.dataset",
        ),
    ],
    ids=[
        "no-sets",
        "missing-sets",
        "unknown-field",
        "unknown-param",
        "k-zero",
        "sigma-with-cosine",
        "bad-set-name",
        "duplicate-set-names",
        "embed-not-yet",
        "unknown-dataset",
    ],
)
def test_invalid_job_body_names_the_field(alpha: httpx.Client, body: dict, field: str) -> None:
    assert_problem(submit(alpha, body), 422, field=field)


def test_malformed_json_is_a_bad_request(alpha: httpx.Client) -> None:
    response = alpha.post(
        "/v1/jobs", content=b'{"sets": [', headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, field="body")


def test_job_with_the_wrong_content_type_is_refused(alpha: httpx.Client) -> None:
    response = alpha.post("/v1/jobs", content=b"sets=1", headers={"Content-Type": "text/plain"})
    assert_problem(response, 415)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/v1/jobs/job_0000000000000000000000000000", 404),
        ("GET", "/v1/jobs/not-a-job-id", 404),
        ("GET", "/v1/jobs/not-a-job-id/report", 404),
        ("GET", "/v1/datasets/..%2F..%2Fetc", 404),
        ("PUT", "/v1/jobs", 405),
        ("DELETE", "/v1/jobs", 405),
        ("GET", "/v1/jobs?limit=0", 422),
        ("GET", "/v1/jobs?limit=abc", 422),
        ("GET", "/v1/jobs?cursor=nonsense", 422),
    ],
)
def test_routing_and_query_errors_are_problems(
    alpha: httpx.Client, method: str, path: str, status: int
) -> None:
    assert_problem(alpha.request(method, path), status)
