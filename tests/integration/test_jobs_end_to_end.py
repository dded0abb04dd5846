"""A client's walk through the API, checked against the in-process engine."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import redis
import scipy.sparse as sp

from api_schemas import AnalysisParams, Report
from tests.integration.helpers import (
    assert_problem,
    comparable,
    job_body,
    npy_bytes,
    submit,
    upload,
    wait_for_status,
)
from tests.integration.stack import ServiceStack
from workers.geometry import Analysis, EmbeddingSet, analyze

pytestmark = pytest.mark.integration

WALKTHROUGH_PARAMS = {"k": 30}


@pytest.fixture(scope="module")
def in_process(digits: tuple[np.ndarray, np.ndarray]) -> Analysis:
    embeddings, labels = digits
    return analyze(
        [EmbeddingSet("digits", embeddings, labels)], params=AnalysisParams(**WALKTHROUGH_PARAMS)
    )


@pytest.fixture(scope="module")
def finished_job(alpha: httpx.Client, alpha_digits: tuple[str, str]) -> dict:
    response = submit(alpha, job_body(*alpha_digits, **WALKTHROUGH_PARAMS))
    assert response.status_code == 202, response.text
    return wait_for_status(alpha, response.json()["id"])


def test_upload_describes_the_arrays_and_same_bytes_give_the_same_dataset(
    alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    embeddings, _ = digits
    content = npy_bytes(embeddings)
    first = upload(alpha, content)
    again = upload(alpha, content)

    assert first.status_code in (200, 201)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert first.headers["location"] == f"/v1/datasets/{first.json()['id']}"
    dataset = alpha.get(first.headers["location"]).json()
    assert dataset["arrays"] == [{"name": "array", "shape": [1797, 64], "dtype": "float32"}]
    assert dataset["size_bytes"] == len(content)
    assert dataset["format"] == "npy"


def test_submitted_job_is_queued_with_location_and_retry_after(
    alpha: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    response = submit(alpha, job_body(*alpha_digits, k=25))

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")
    if job["status"] != "succeeded":
        assert response.headers["retry-after"] == "1"
    polled = alpha.get(f"/v1/jobs/{job['id']}")
    assert polled.status_code == 200
    finished = wait_for_status(alpha, job["id"])
    assert finished["status"] == "succeeded"
    assert "retry-after" not in alpha.get(f"/v1/jobs/{job['id']}").headers


def test_report_equals_the_in_process_engine(
    alpha: httpx.Client, finished_job: dict, in_process: Analysis
) -> None:
    assert finished_job["status"] == "succeeded", finished_job
    assert finished_job["progress"] == {"stage": "succeeded", "fraction": 1.0}
    assert finished_job["started_at"] <= finished_job["finished_at"]

    response = alpha.get(finished_job["links"]["report"])

    assert response.status_code == 200
    served = Report.model_validate_json(response.content)
    # A cache hit (an earlier test may have run the same inputs) serves the stored
    # report, which names the job that computed it.
    assert served.job_id == finished_job["id"] or finished_job["cached"]
    expected = in_process.report.model_dump(mode="json")
    assert comparable(served.model_dump(mode="json")) == comparable(expected)


def test_report_etag_gives_not_modified(alpha: httpx.Client, finished_job: dict) -> None:
    first = alpha.get(finished_job["links"]["report"])
    etag = first.headers["etag"]

    again = alpha.get(finished_job["links"]["report"], headers={"If-None-Match": etag})
    other = alpha.get(finished_job["links"]["report"], headers={"If-None-Match": '"other"'})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert other.status_code == 200


@pytest.mark.parametrize("kind", ["symmetric", "directed"])
def test_graph_download_equals_the_in_process_graph(
    alpha: httpx.Client, finished_job: dict, in_process: Analysis, kind: str
) -> None:
    response = alpha.get(f"{finished_job['links']['graphs']['digits']}?kind={kind}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    served = sp.load_npz(io.BytesIO(response.content))
    expected = getattr(in_process.sets["digits"], kind)
    assert served.shape == (1797, 1797)
    assert served.nnz == expected.nnz
    assert abs(served - expected).max() == 0


def test_graph_of_unknown_set_or_kind_is_refused(alpha: httpx.Client, finished_job: dict) -> None:
    base = finished_job["links"]["self"]
    assert_problem(alpha.get(f"{base}/graphs/nope"), 404)
    assert_problem(alpha.get(f"{base}/graphs/digits?kind=sideways"), 422, field="query.kind")


def test_report_html_shows_the_headline_numbers(alpha: httpx.Client, finished_job: dict) -> None:
    report = alpha.get(finished_job["links"]["report"]).json()

    response = alpha.get(finished_job["links"]["report_html"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "<table>" in page
    assert f"{report['sets'][0]['nnk_degree']['mean']:.4g}" in page
    assert "1,797" in page


def test_identical_inputs_are_answered_from_the_cache(
    alpha: httpx.Client, alpha_digits: tuple[str, str], finished_job: dict
) -> None:
    response = submit(alpha, job_body(*alpha_digits, **WALKTHROUGH_PARAMS))

    assert response.status_code == 202
    cached = response.json()
    assert cached["status"] == "succeeded"
    assert cached["cached"] is True
    assert cached["id"] != finished_job["id"]
    assert response.headers["location"] == f"/v1/jobs/{cached['id']}"
    assert "retry-after" not in response.headers
    original = alpha.get(finished_job["links"]["report"])
    replayed = alpha.get(cached["links"]["report"])
    assert replayed.content == original.content
    assert replayed.headers["etag"] == original.headers["etag"]
    graph = alpha.get(cached["links"]["graphs"]["digits"])
    assert graph.content == alpha.get(finished_job["links"]["graphs"]["digits"]).content
    # The page names the job asked for, not the one whose result it shows.
    original_page = alpha.get(finished_job["links"]["report_html"]).text
    cached_page = alpha.get(cached["links"]["report_html"]).text
    assert f"nnkgeo report {cached['id']}" in cached_page
    assert finished_job["id"] not in cached_page
    assert cached_page.replace(cached["id"], finished_job["id"]) == original_page


def test_changed_params_are_not_a_cache_hit(
    alpha: httpx.Client, alpha_digits: tuple[str, str], finished_job: dict
) -> None:
    response = submit(alpha, job_body(*alpha_digits, k=30, symmetrize="max"))

    assert response.status_code == 202
    assert response.json()["cached"] is False
    assert wait_for_status(alpha, response.json()["id"])["status"] == "succeeded"


def test_idempotency_key_replays_the_first_job(
    alpha: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    body = job_body(*alpha_digits, k=20)
    first = submit(alpha, body, **{"Idempotency-Key": "walkthrough-1"})
    second = submit(alpha, body, **{"Idempotency-Key": "walkthrough-1"})

    assert first.status_code == second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    wait_for_status(alpha, first.json()["id"])


def test_idempotency_key_with_another_body_is_refused(
    alpha: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    first = submit(alpha, job_body(*alpha_digits, k=21), **{"Idempotency-Key": "walkthrough-2"})
    other = submit(alpha, job_body(*alpha_digits, k=22), **{"Idempotency-Key": "walkthrough-2"})

    assert first.status_code == 202
    problem = assert_problem(other, 422, field="Idempotency-Key")
    assert problem["type"].endswith("idempotency-key-reused")
    wait_for_status(alpha, first.json()["id"])


def test_idempotency_key_of_a_refused_request_can_be_used_again(
    alpha: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    refused = submit(alpha, job_body(*alpha_digits, k=5000), **{"Idempotency-Key": "walkthrough-3"})
    fixed = submit(alpha, job_body(*alpha_digits, k=23), **{"Idempotency-Key": "walkthrough-3"})

    assert_problem(refused, 422, field="params.k")
    assert fixed.status_code == 202
    wait_for_status(alpha, fixed.json()["id"])


def test_job_list_is_newest_first_and_paginated(
    alpha: httpx.Client, alpha_digits: tuple[str, str], finished_job: dict
) -> None:
    submitted = [
        submit(alpha, job_body(*alpha_digits, **WALKTHROUGH_PARAMS)).json()["id"] for _ in range(3)
    ]

    first_page = alpha.get("/v1/jobs", params={"limit": 2}).json()
    second_page = alpha.get(
        "/v1/jobs", params={"limit": 2, "cursor": first_page["next_cursor"]}
    ).json()

    assert [job["id"] for job in first_page["items"]] == submitted[::-1][:2]
    assert second_page["items"][0]["id"] == submitted[0]
    everything: list[str] = []
    cursor = None
    while True:
        page = alpha.get("/v1/jobs", params={"limit": 7, "cursor": cursor}).json()
        everything += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(everything) == len(set(everything))
    assert everything == sorted(everything, reverse=True)
    assert finished_job["id"] in everything


def test_metrics_count_requests_by_route_and_jobs_by_status(
    alpha: httpx.Client, anonymous: httpx.Client, finished_job: dict
) -> None:
    text = anonymous.get("/metrics").text

    assert 'nnkgeo_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    assert 'nnkgeo_jobs_finished_total{status="succeeded"}' in text
    succeeded = next(
        line
        for line in text.splitlines()
        if line.startswith('nnkgeo_jobs_finished_total{status="succeeded"}')
    )
    assert float(succeeded.split()[-1]) >= 1
    assert 'nnkgeo_job_duration_seconds_count{status="succeeded"}' in text
    assert 'nnkgeo_queue_length{queue="cpu"}' in text


def test_health_and_readiness(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workers"]


def test_openapi_documents_problem_responses(anonymous: httpx.Client) -> None:
    schema = anonymous.get("/openapi.json").json()

    submit_operation = schema["paths"]["/v1/jobs"]["post"]
    assert submit_operation["summary"]
    assert "application/problem+json" in submit_operation["responses"]["422"]["content"]
    assert "HTTPValidationError" not in json.dumps(schema)
    for path_item in schema["paths"].values():
        for operation in path_item.values():
            assert operation.get("summary"), operation


def test_expired_results_answer_gone(
    alpha: httpx.Client, alpha_digits: tuple[str, str], stack: ServiceStack
) -> None:
    job = submit(alpha, job_body(*alpha_digits, k=26)).json()
    finished = wait_for_status(alpha, job["id"])
    # Let the result's lifetime run out now (its key as documented in service/store.py).
    client = redis.Redis.from_url(stack.redis_url)
    assert client.delete(f"nnkgeo:t:alpha:result:{job['id']}") == 1

    assert alpha.get(finished["links"]["self"]).json()["status"] == "succeeded"
    for url in (
        finished["links"]["report"],
        finished["links"]["report_html"],
        finished["links"]["graphs"]["digits"],
    ):
        assert_problem(alpha.get(url), 410)
    # The cache entry pointed at the expired result: the same job is computed afresh.
    again = submit(alpha, job_body(*alpha_digits, k=26)).json()
    assert again["cached"] is False
    assert wait_for_status(alpha, again["id"])["status"] == "succeeded"


def test_cuda_jobs_go_to_the_gpu_queue(
    alpha: httpx.Client, anonymous: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    def submitted_to_gpu() -> float:
        metrics = anonymous.get("/metrics").text.splitlines()
        line = next(
            (m for m in metrics if m.startswith('nnkgeo_jobs_submitted_total{queue="gpu"}')), ""
        )
        return float(line.split()[-1]) if line else 0.0

    before = submitted_to_gpu()
    job = submit(alpha, job_body(*alpha_digits, k=27, device="cuda")).json()

    # The test worker serves both queues; without a GPU the core runs on the CPU and says so.
    finished = wait_for_status(alpha, job["id"])
    assert finished["status"] == "succeeded"
    assert submitted_to_gpu() == before + 1
