"""A job whose set carries query points: resolved, pinned, solved, reported; or refused."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from api_schemas import AnalysisParams, Report
from nnkgeo.client import Client
from tests.integration.helpers import assert_problem, submit, upload_array, wait_for_status
from tests.integration.stack import TENANT_KEYS, ServiceStack
from workers.geometry.out_of_sample import out_of_sample_metrics

pytestmark = pytest.mark.integration

_TRAIN = 1_300


def _spec(x: str, y: str, q: str, qy: str | None) -> dict:
    query: dict = {"embeddings": {"dataset": q}}
    if qy is not None:
        query["labels"] = {"dataset": qy}
    return {
        "name": "digits",
        "embeddings": {"dataset": x},
        "labels": {"dataset": y},
        "query": query,
    }


def test_job_with_query_reports_the_held_out_section_of_the_engine(
    alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    x, y, q, qy = points[:_TRAIN], labels[:_TRAIN], points[_TRAIN:], labels[_TRAIN:]
    ids = [upload_array(alpha, array) for array in (x, y, q, qy)]
    response = submit(alpha, {"sets": [_spec(*ids)], "params": {"k": 12}})
    assert response.status_code == 202, response.text
    job = wait_for_status(alpha, response.json()["id"])
    assert job["status"] == "succeeded", job

    report = Report.model_validate_json(alpha.get(job["links"]["report"]).content)
    section = report.sets[0].out_of_sample
    direct = out_of_sample_metrics(x, y, q, qy, k=12, kernel="cosine")
    assert section.n == q.shape[0]
    assert section.error.model_dump() == {
        "nnk_weighted": direct.error.nnk_weighted,
        "nnk_unweighted": direct.error.nnk_unweighted,
        "knn_weighted": direct.error.knn_weighted,
        "knn_unweighted": direct.error.knn_unweighted,
    }
    test = direct.mcnemar_weighted_vs_unweighted
    assert (section.mcnemar.weighted_vs_unweighted.b, section.mcnemar.weighted_vs_unweighted.c) == (
        test.b,
        test.c,
    )
    assert report.sets[0].neural_collapse is not None
    # The queries are part of the job's inputs: the same set without them is another job.
    alone = submit(
        alpha,
        {"sets": [{k: v for k, v in _spec(*ids).items() if k != "query"}], "params": {"k": 12}},
    )
    assert alone.status_code == 202, alone.text
    assert alone.json()["id"] != job["id"]
    finished = wait_for_status(alpha, alone.json()["id"])
    plain = Report.model_validate_json(alpha.get(finished["links"]["report"]).content)
    assert plain.sets[0].out_of_sample is None
    assert plain.sets[0].loo_error == report.sets[0].loo_error
    assert report.params == AnalysisParams(k=12)


def test_query_of_another_width_is_a_422_naming_the_field(
    alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    x, y = upload_array(alpha, points[:200]), upload_array(alpha, labels[:200])
    narrow = upload_array(alpha, np.ascontiguousarray(points[200:260, :32]))
    response = submit(alpha, {"sets": [_spec(x, y, narrow, None)], "params": {"k": 10}})
    problem = assert_problem(response, 422, field="sets[digits].query.embeddings")
    assert "32 dimensions" in str(problem)

    q = upload_array(alpha, points[200:260])
    short_labels = upload_array(alpha, labels[200:250])
    response = submit(alpha, {"sets": [_spec(x, y, q, short_labels)], "params": {"k": 10}})
    assert_problem(response, 422, field="sets[digits].query.labels")

    response = submit(alpha, {"sets": [_spec(x, y, "ds_missing", None)], "params": {"k": 10}})
    assert_problem(response, 422, field="sets[digits].query.embeddings.dataset")


def test_client_analyze_uploads_the_queries_and_asks_for_the_probe(
    stack: ServiceStack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    x, y, q, qy = points[:600], labels[:600], points[600:800], labels[600:800]
    with Client(stack.base_url, TENANT_KEYS["alpha"]) as client:
        report = client.analyze(
            x,
            y,
            query=q,
            query_labels=qy,
            params={"k": 10, "baselines": ["linear_probe"]},
            progress=False,
            timeout=60,
        )
    direct = out_of_sample_metrics(x, y, q, qy, k=10)
    section = report.sets[0].out_of_sample
    assert section.n == 200
    assert section.error.nnk_weighted == direct.error.nnk_weighted
    assert section.mcnemar.weighted_vs_unweighted.b == direct.mcnemar_weighted_vs_unweighted.b
    assert report.sets[0].baselines.linear_probe.method == "held_out"
    assert report.params.baselines == ["linear_probe"]
