"""Compare and drift jobs through the real stack: resolved, run, reported; or refused.

Real uvicorn, Redis and Celery workers (tests/integration/stack.py). Each report section
is checked against the engine run in-process on the same arrays (``analyze`` then
``add_comparison_sections``, what ``nnkgeo compare`` and ``nnkgeo drift`` run).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from api_schemas import AnalysisParams, Report
from jobstate.settings import Settings
from jobstate.store import Store
from nnkgeo.client import AsyncClient, Client
from tests.integration.helpers import assert_problem, submit, upload_array, wait_for_status
from tests.integration.stack import TENANT_KEYS, ServiceStack
from workers.geometry import EmbeddingSet, analyze
from workers.geometry.comparison_report import add_comparison_sections

pytestmark = pytest.mark.integration

_N = 400


def _set(name: str, embeddings: str, labels: str | None = None) -> dict:
    spec: dict = {"name": name, "embeddings": {"dataset": embeddings}}
    if labels is not None:
        spec["labels"] = {"dataset": labels}
    return spec


def test_compare_job_reports_the_engines_compare_section(
    alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    pixels, halved, y = points[:_N], np.ascontiguousarray(points[:_N, ::2]), labels[:_N]
    x_id, h_id, y_id = (upload_array(alpha, array) for array in (pixels, halved, y))
    body = {
        "compare": {"a": _set("pixels", x_id, y_id), "b": _set("halved", h_id, y_id)},
        "params": {"k": 10},
    }
    response = submit(alpha, body)
    assert response.status_code == 202, response.text
    job = wait_for_status(alpha, response.json()["id"], timeout_s=60)
    assert job["status"] == "succeeded", job
    assert sorted(job["links"]["graphs"]) == ["halved", "pixels"]

    report = Report.model_validate_json(alpha.get(job["links"]["report"]).content)
    params = AnalysisParams(k=10)
    sets = [EmbeddingSet("pixels", pixels, y), EmbeddingSet("halved", halved, y)]
    expected = add_comparison_sections(
        analyze(sets, params=params), sets, params=params, compare_sets=True
    ).report
    assert report.compare == expected.compare
    assert report.comparison.overlap_consecutive == expected.comparison.overlap_consecutive
    assert report.drift is None and report.params == params
    page = alpha.get(job["links"]["report_html"])
    assert page.status_code == 200 and 'id="compare"' in page.text

    # The same sets as a plain sets job: another job (no compare section), same set reports.
    plain = submit(
        alpha, {"sets": [body["compare"]["a"], body["compare"]["b"]], "params": {"k": 10}}
    )
    assert plain.status_code == 202 and plain.json()["id"] != job["id"]
    finished = wait_for_status(alpha, plain.json()["id"], timeout_s=60)
    plain_report = Report.model_validate_json(alpha.get(finished["links"]["report"]).content)
    assert plain_report.compare is None
    assert plain_report.sets[0].loo_error == report.sets[0].loo_error


def test_drift_job_scores_the_current_points_against_the_reference(
    stack: ServiceStack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    reference, reference_labels = points[:600], labels[:600]
    current, current_labels = points[600:900].copy(), labels[600:900]
    # Every "3" of the current set loses its left half: a broken preprocessing step.
    broken = current_labels == 3
    current[np.ix_(broken, np.arange(64) % 8 < 4)] = 0.0
    ids = np.arange(300) + 10_000
    with Client(stack.base_url, TENANT_KEYS["alpha"]) as client:
        report = client.drift(
            reference,
            current,
            labels=reference_labels,
            current_labels=current_labels,
            current_ids=ids,
            threshold=0.05,
            name="train",
            params={"k": 10},
            progress=False,
            timeout=60,
        )
    params = AnalysisParams(k=10, knn="exact")
    sets = [EmbeddingSet("train", reference, reference_labels)]
    expected = add_comparison_sections(
        analyze(sets, params=params),
        sets,
        params=params,
        current=EmbeddingSet("current", current, current_labels, ids),
        threshold=0.05,
    ).report.drift
    assert report.drift == expected
    assert report.params.knn == "exact" and report.drift.threshold == 0.05
    assert [s.name for s in report.sets] == ["train"]
    assert report.drift.verdict == "drift"
    assert max(report.drift.per_class, key=lambda c: c.score_mean).label == 3
    assert all(d.id == 10_000 + d.index for d in report.drift.drifted)


def test_client_compare_uploads_both_sets(
    stack: ServiceStack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    first, second = points[:300], np.sqrt(points[:300])
    with Client(stack.base_url, TENANT_KEYS["alpha"]) as client:
        report = client.compare(
            first,
            second,
            labels=labels[:300],
            names=("raw", "sqrt"),
            params={"k": 10},
            progress=False,
            timeout=60,
        )
    assert (report.compare.a, report.compare.b) == ("raw", "sqrt")
    assert len(report.compare.changed) == 100
    assert [c.label for c in report.compare.per_class] == list(range(10))


@pytest.mark.anyio
async def test_async_client_drift_and_compare(
    stack: ServiceStack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, _ = digits
    async with AsyncClient(stack.base_url, TENANT_KEYS["alpha"]) as client:
        drifted = await client.drift(
            points[:300], points[300:400], params={"k": 8}, progress=False, timeout=60
        )
        compared = await client.compare(
            points[:200], points[:200, ::-1], params={"k": 8}, progress=False, timeout=60
        )
    assert drifted.drift.n_current == 100 and drifted.drift.current == "current"
    # Reversing the columns changes no distance: the neighbourhoods stay (up to rounding).
    assert compared.compare.overlap.jaccard.mean > 0.99
    assert compared.compare.cka_linear == pytest.approx(1.0)


def test_bad_compare_and_drift_jobs_are_422s_naming_the_field(
    alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    points, labels = digits
    x = upload_array(alpha, points[:200])
    fewer = upload_array(alpha, points[:150])
    narrow = upload_array(alpha, np.ascontiguousarray(points[200:260, :32]))
    wide = upload_array(alpha, points[200:260])
    short_labels = upload_array(alpha, labels[:50])

    response = submit(alpha, {"compare": {"a": _set("a", x), "b": _set("b", fewer)}})
    problem = assert_problem(response, 422, field="compare.b.embeddings")
    assert "150 points" in str(problem) and "200" in str(problem)
    response = submit(alpha, {"compare": {"a": _set("a", x), "b": _set("b", "ds_missing")}})
    assert_problem(response, 422, field="compare.b.embeddings.dataset")
    response = submit(alpha, {"compare": {"a": _set("a", x), "b": _set("b", x, short_labels)}})
    assert_problem(response, 422, field="compare.b.labels")

    # Ids are read by the worker: two sets whose ids differ hold other points.
    ids, reversed_ids = (
        upload_array(alpha, np.arange(200)),
        upload_array(alpha, np.arange(200)[::-1]),
    )
    a, b = _set("a", x), _set("b", x)
    a["ids"], b["ids"] = {"dataset": ids}, {"dataset": reversed_ids}
    response = submit(alpha, {"compare": {"a": a, "b": b}, "params": {"k": 5}})
    assert response.status_code == 202, response.text
    failed = wait_for_status(alpha, response.json()["id"], timeout_s=60)
    assert failed["status"] == "failed", failed
    assert [error["field"] for error in failed["error"]["errors"]] == ["compare.b.ids"]

    def drift(current: dict, **params: object) -> httpx.Response:
        body = {"drift": {"reference": _set("ref", x), "current": current}, "params": params}
        return submit(alpha, body)

    problem = assert_problem(drift({"embeddings": {"dataset": narrow}}), 422)
    assert problem["errors"][0]["field"] == "drift.current.embeddings"
    assert "32 dimensions" in str(problem)
    response = drift({"embeddings": {"dataset": wide}, "labels": {"dataset": short_labels}})
    assert_problem(response, 422, field="drift.current.labels")
    response = drift({"embeddings": {"dataset": wide}}, knn="approximate")
    assert_problem(response, 422, field="params.knn")
    # Per-class shifts pair classes by label: integer reference labels, string current ones.
    y = upload_array(alpha, labels[:200])
    named = upload_array(alpha, np.array([f"class{label}" for label in labels[200:260]]))
    body = {
        "drift": {
            "reference": _set("ref", x, y),
            "current": {"embeddings": {"dataset": wide}, "labels": {"dataset": named}},
        }
    }
    problem = assert_problem(submit(alpha, body), 422, field="drift.current.labels")
    assert "both be integers or both be strings" in str(problem)
    response = submit(alpha, {"drift": {"reference": _set("ref", x), "current": {}}})
    assert_problem(response, 422)
    response = submit(
        alpha, {"sets": [_set("a", x)], "compare": {"a": _set("a", x), "b": _set("b", x)}}
    )
    assert_problem(response, 422)


# A set of more than 4,096 points is cut into blocks of 4,096 rows by this worker.
_SHARDING = {
    "NNKGEO_SHARD_MIN_POINTS": "4096",
    "NNKGEO_SHARD_ROWS": "4096",
    "NNKGEO_WORKER_THREADS": "1",
}
_BIG = 6_000  # two blocks: 4,096 + 1,904 rows


@pytest.fixture
def sharding_worker(stack: ServiceStack) -> Iterator[None]:
    """The session's worker swapped for one that shards; the usual one is back after."""
    assert stack.worker is not None
    stack.worker.stop()
    stack.wait_ready(worker=stack.start_worker(**_SHARDING))
    try:
        yield
    finally:
        stack.worker.stop()
        stack.wait_ready(worker=stack.start_worker())


def test_sharded_compare_and_drift_jobs_give_the_engines_sections(
    stack: ServiceStack, beta: httpx.Client, sharding_worker: None
) -> None:
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, _BIG)
    centres = 2.0 * rng.standard_normal((4, 16))
    first = (centres[labels] + rng.standard_normal((_BIG, 16))).astype(np.float32)
    second = np.tanh(first[:, :12]).astype(np.float32)
    current_labels = rng.integers(0, 4, 300)
    current = (centres[current_labels] + rng.standard_normal((300, 16))).astype(np.float32)
    store = Store.from_settings(Settings(redis_url=stack.redis_url))

    x, h, y = (upload_array(beta, array) for array in (first, second, labels))
    response = submit(
        beta, {"compare": {"a": _set("a", x, y), "b": _set("b", h, y)}, "params": {"k": 10}}
    )
    assert response.status_code == 202, response.text
    compare_job = wait_for_status(beta, response.json()["id"], timeout_s=240)
    assert compare_job["status"] == "succeeded", compare_job
    assert store.get_run("beta", compare_job["id"], 1) is not None  # it ran in blocks

    cur, cy = upload_array(beta, current), upload_array(beta, current_labels)
    body = {
        "drift": {
            "reference": _set("a", x, y),
            "current": {"embeddings": {"dataset": cur}, "labels": {"dataset": cy}},
        },
        "params": {"k": 10},
    }
    response = submit(beta, body)
    assert response.status_code == 202, response.text
    drift_job = wait_for_status(beta, response.json()["id"], timeout_s=240)
    assert drift_job["status"] == "succeeded", drift_job
    assert store.get_run("beta", drift_job["id"], 1) is not None

    params = AnalysisParams(k=10, knn="exact")
    sets = [EmbeddingSet("a", first, labels), EmbeddingSet("b", second, labels)]
    both = analyze(sets, params=params)
    expected = add_comparison_sections(both, sets, params=params, compare_sets=True).report
    report = Report.model_validate_json(beta.get(compare_job["links"]["report"]).content)
    assert report.compare == expected.compare
    assert report.comparison.overlap_consecutive == expected.comparison.overlap_consecutive

    reference = add_comparison_sections(
        analyze(sets[:1], params=params),
        sets[:1],
        params=params,
        current=EmbeddingSet("current", current, current_labels),
    ).report
    report = Report.model_validate_json(beta.get(drift_job["links"]["report"]).content)
    assert report.drift == reference.drift
