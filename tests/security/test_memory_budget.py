"""The job memory budget against the real stack: small uploads that used to exhaust a
worker are refused at submission or run within the budget, and a job whose estimate was
wrong fails once, saying memory, instead of killing its worker three times.

The security stack's budget is 512 MiB (tests/security/conftest.py).
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from jobstate.store.keys import job_key
from tests.integration.helpers import assert_problem, submit, upload, upload_array, wait_for_status
from tests.integration.stack import ServiceStack

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 120


def _sets_body(embeddings: str, labels: str | None = None, **params: Any) -> dict[str, Any]:
    one_set: dict[str, Any] = {"name": "s", "embeddings": {"dataset": embeddings}}
    if labels is not None:
        one_set["labels"] = {"dataset": labels}
    return {"sets": [one_set], "params": params}


def test_k_1024_on_1100_points_is_refused_at_submission_naming_k(tenant: httpx.Client) -> None:
    points = np.random.default_rng(0).standard_normal((1100, 64)).astype(np.float32)
    problem = assert_problem(
        submit(tenant, _sets_body(upload_array(tenant, points), k=1024)), 422, field="params.k"
    )
    message = problem["errors"][0]["message"]
    assert "NNKGEO_WORKER_MEMORY_BYTES" in message and "512 MiB" in message


def test_two_million_dimensions_are_refused_before_any_worker_allocates(
    tenant: httpx.Client,
) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, embeddings=np.ones((40, 2_000_000), dtype=np.float32))
    assert len(buffer.getvalue()) < 1_000_000
    stored = upload(tenant, buffer.getvalue(), fmt="npz")
    if stored.status_code == 413:  # the decompressed-size limit stops it first
        return
    assert stored.status_code in (200, 201), stored.text
    body = {
        "sets": [
            {"name": "s", "embeddings": {"dataset": stored.json()["id"], "array": "embeddings"}}
        ],
        "params": {"k": 39},
    }
    problem = assert_problem(submit(tenant, body), 422, field="sets[s].embeddings")
    assert "NNKGEO_WORKER_MEMORY_BYTES" in problem["errors"][0]["message"]


def test_12000_unique_labels_run_within_the_budget_with_a_capped_report(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    rng = np.random.default_rng(1)
    points = rng.standard_normal((12_000, 8)).astype(np.float32)
    labels = np.arange(12_000)
    response = submit(
        tenant, _sets_body(upload_array(tenant, points), upload_array(tenant, labels), k=5)
    )
    assert response.status_code == 202, response.text
    job = wait_for_status(tenant, response.json()["id"], timeout_s=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    report = tenant.get(f"/v1/jobs/{job['id']}/report")
    (reported,) = report.json()["sets"]
    assert reported["n_classes"] == 12_000
    assert len(reported["per_class"]) == 1000
    assert "1000 largest of 12000 classes" in " ".join(reported["warnings"])
    assert len(report.content) < 1_000_000


def test_giant_mlp_study_is_refused_at_submission(tenant: httpx.Client) -> None:
    body = {
        "study": {
            "kind": "width",
            "dataset": {"builtin": "digits"},
            "model": {"family": "mlp", "depth": 32, "widths": [64, 16_384]},
            "layers": "penultimate",
        },
        "params": {"k": 10},
    }
    problem = assert_problem(submit(tenant, body), 422, field="study.model.widths[1]")
    message = problem["errors"][0]["message"]
    assert "parameters" in message and "NNKGEO_WORKER_MEMORY_BYTES" in message
    assert all(error["field"] != "study.model.widths[0]" for error in problem["errors"])


def test_a_wrong_estimate_fails_one_attempt_saying_memory(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    """A worker whose estimates are 100 times too low plans blocks that cannot fit: its
    address-space limit stops the allocation, and the job ends saying memory."""
    points = np.random.default_rng(2).standard_normal((600, 64)).astype(np.float32)
    embeddings = upload_array(tenant, points)
    security_stack.kill_worker()
    node = security_stack.start_worker(NNKGEO_MEMORY_ESTIMATE_SCALE="0.01")
    try:
        security_stack.wait_ready(worker=node)
        # The torch path (the GPU's, and the "authors" solver's) plans its (block, k, k)
        # batches from the estimate; the compiled CPU solve holds per-thread scratch
        # only, which no estimate can overrun.
        response = submit(tenant, _sets_body(embeddings, k=256, solver="authors"))
        assert response.status_code == 202, response.text
        job = wait_for_status(tenant, response.json()["id"], timeout_s=JOB_TIMEOUT_S)
    finally:
        security_stack.kill_worker()
        security_stack.restart_worker()
    assert job["status"] == "failed", job
    assert job["error"]["type"].endswith(":memory"), job["error"]
    assert "ran out of memory" in job["error"]["detail"]
    attempts = redis.Redis.from_url(security_stack.redis_url).hget(
        job_key("alpha", job["id"]), "attempts"
    )
    # One attempt did the work; a second delivery, if its process died, only ends the job.
    assert int(attempts) <= 2
