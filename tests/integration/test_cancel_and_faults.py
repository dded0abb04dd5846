"""Cancelling jobs, deleting datasets in use, and workers that die mid-job."""

from __future__ import annotations

import io
import os
import signal

import httpx
import numpy as np
import psutil
import pytest
import scipy.sparse as sp

from api_schemas import AnalysisParams, JobStatus
from jobstate.settings import Settings
from jobstate.store import Store
from tests.integration.helpers import (
    assert_problem,
    comparable,
    job_body,
    submit,
    upload_array,
    wait_for_status,
)
from tests.integration.stack import ServiceStack, wait_until
from workers.geometry import Analysis, EmbeddingSet, analyze

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(stack: ServiceStack) -> Store:
    """Read access to the job records, to see what clients cannot (delivery attempts)."""
    return Store.from_settings(Settings(redis_url=stack.redis_url))


def _wait_until_queues_drain(store: Store) -> None:
    wait_until(
        lambda: sum(store.queue_lengths(["cpu", "gpu"]).values()) == 0,
        timeout_s=60,
        what="the worker to take every queued message",
    )


def _start_busy_job(alpha: httpx.Client, long_running_embeddings: str) -> str:
    response = submit(alpha, job_body(long_running_embeddings, name="busy", k=50))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_cooperatively(
    alpha: httpx.Client,
    alpha_digits: tuple[str, str],
    long_running_embeddings: str,
    store: Store,
) -> None:
    busy_id = _start_busy_job(alpha, long_running_embeddings)
    queued = submit(alpha, job_body(*alpha_digits, k=31)).json()
    wait_for_status(alpha, busy_id, ("running",))
    wait_until(
        lambda: alpha.get(f"/v1/jobs/{busy_id}").json()["progress"]["stage"].startswith("busy:"),
        timeout_s=30,
        what="the worker to report progress",
    )

    queued_cancel = alpha.post(f"/v1/jobs/{queued['id']}/cancel")
    running_cancel = alpha.post(f"/v1/jobs/{busy_id}/cancel")

    assert queued_cancel.status_code == 202
    assert queued_cancel.json()["status"] == "canceled"
    assert queued_cancel.json()["finished_at"] is not None
    assert running_cancel.status_code == 202
    assert running_cancel.json()["status"] in ("running", "canceled")
    canceled = wait_for_status(alpha, busy_id, timeout_s=30)
    assert canceled["status"] == "canceled"
    assert canceled["progress"]["fraction"] < 1.0
    _wait_until_queues_drain(store)
    never_ran = store.get_job("alpha", queued["id"])
    assert never_ran is not None
    assert never_ran.status is JobStatus.canceled
    assert never_ran.attempts == 0
    assert_problem(alpha.get(f"/v1/jobs/{busy_id}/report"), 409)
    again = alpha.post(f"/v1/jobs/{busy_id}/cancel")
    assert again.status_code == 202
    assert again.json()["status"] == "canceled"


def test_a_succeeded_job_cannot_be_canceled(
    alpha: httpx.Client, alpha_digits: tuple[str, str]
) -> None:
    job = submit(alpha, job_body(*alpha_digits, k=32)).json()
    assert wait_for_status(alpha, job["id"])["status"] == "succeeded"

    assert_problem(alpha.post(f"/v1/jobs/{job['id']}/cancel"), 409)


def test_a_dataset_read_by_an_unfinished_job_cannot_be_deleted(
    alpha: httpx.Client, beta: httpx.Client, long_running_embeddings: str, stack: ServiceStack
) -> None:
    points = np.random.default_rng(11).standard_normal((300, 16)).astype(np.float32)
    dataset_id = upload_array(alpha, points)
    shared_by_beta = upload_array(beta, points)
    blob = stack.data_dir / "blobs"
    sha = alpha.get(f"/v1/datasets/{dataset_id}").json()["sha256"]
    busy_id = _start_busy_job(alpha, long_running_embeddings)
    waiting = submit(alpha, job_body(dataset_id, name="small", k=10)).json()

    refused = alpha.delete(f"/v1/datasets/{dataset_id}")

    problem = assert_problem(refused, 409)
    assert waiting["id"] in problem["detail"]
    alpha.post(f"/v1/jobs/{waiting['id']}/cancel")
    alpha.post(f"/v1/jobs/{busy_id}/cancel")
    assert alpha.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert_problem(alpha.get(f"/v1/datasets/{dataset_id}"), 404)
    assert_problem(alpha.delete(f"/v1/datasets/{dataset_id}"), 404)
    # Tenant beta uploaded the same bytes: the blob stays until beta deletes its record.
    assert (blob / sha[:2] / sha).is_file()
    assert beta.get(f"/v1/datasets/{shared_by_beta}").status_code == 200
    assert beta.delete(f"/v1/datasets/{shared_by_beta}").status_code == 204
    assert not (blob / sha[:2] / sha).exists()
    wait_for_status(alpha, busy_id, timeout_s=30)


def _expected_analysis(digits: tuple[np.ndarray, np.ndarray], k: int) -> Analysis:
    embeddings, labels = digits
    return analyze([EmbeddingSet("digits", embeddings, labels)], params=AnalysisParams(k=k))


def _assert_finished_once_and_correct(
    alpha: httpx.Client,
    store: Store,
    job_id: str,
    *,
    succeeded_before: int,
    expected: Analysis,
) -> None:
    final = wait_for_status(alpha, job_id, timeout_s=90)
    assert final["status"] == "succeeded", final
    record = store.get_job("alpha", job_id)
    assert record is not None
    assert record.attempts == 2
    assert store.job_metrics().finished["succeeded"] == succeeded_before + 1
    report = alpha.get(final["links"]["report"]).json()
    assert comparable(report) == comparable(expected.report.model_dump(mode="json"))
    graph = sp.load_npz(io.BytesIO(alpha.get(final["links"]["graphs"]["digits"]).content))
    assert abs(graph - expected.sets["digits"].symmetric).max() == 0


def test_job_whose_pool_process_is_killed_is_redelivered_and_finishes_once(
    alpha: httpx.Client,
    alpha_digits: tuple[str, str],
    digits: tuple[np.ndarray, np.ndarray],
    stack: ServiceStack,
    store: Store,
) -> None:
    assert stack.worker is not None
    expected = _expected_analysis(digits, k=45)
    succeeded_before = store.job_metrics().finished.get("succeeded", 0)
    job_id = submit(alpha, job_body(*alpha_digits, k=45)).json()["id"]
    wait_for_status(alpha, job_id, ("running",), interval_s=0.01)

    # The pool child runs the task; its parent sees it die and requeues the message, which
    # finds the dead attempt's lease still live and is dropped: the reaper requeues the
    # job once the lease expires.
    children = psutil.Process(stack.worker.process.pid).children()
    assert children
    for child in children:
        os.kill(child.pid, signal.SIGKILL)

    _assert_finished_once_and_correct(
        alpha, store, job_id, succeeded_before=succeeded_before, expected=expected
    )


def test_job_whose_worker_is_killed_is_redelivered_to_a_new_worker_and_finishes_once(
    alpha: httpx.Client,
    alpha_digits: tuple[str, str],
    digits: tuple[np.ndarray, np.ndarray],
    stack: ServiceStack,
    store: Store,
) -> None:
    expected = _expected_analysis(digits, k=40)
    succeeded_before = store.job_metrics().finished.get("succeeded", 0)
    job_id = submit(alpha, job_body(*alpha_digits, k=40)).json()["id"]
    wait_for_status(alpha, job_id, ("running",), interval_s=0.01)

    # The whole worker dies (as with a host crash): its job's lease expires, and the
    # reaper of whichever worker is up requeues it (tests/integration/test_leases.py
    # bounds the time; the broker's redelivery after the visibility timeout is dropped).
    stack.kill_worker()
    assert_problem(alpha.get("/readyz"), 503, field="workers")
    orphaned = store.get_job("alpha", job_id)
    assert orphaned is not None
    assert orphaned.status is JobStatus.running
    assert orphaned.attempts == 1
    stack.restart_worker()

    _assert_finished_once_and_correct(
        alpha, store, job_id, succeeded_before=succeeded_before, expected=expected
    )


def test_job_whose_input_file_vanished_fails_with_a_problem_naming_the_input(
    alpha: httpx.Client, stack: ServiceStack
) -> None:
    points = np.random.default_rng(13).standard_normal((100, 8)).astype(np.float32)
    dataset_id = upload_array(alpha, points)
    sha = alpha.get(f"/v1/datasets/{dataset_id}").json()["sha256"]
    # The blob is lost behind the service's back (a disk or an operator error).
    (stack.data_dir / "blobs" / sha[:2] / sha).unlink()

    job = submit(alpha, job_body(dataset_id, name="lost", k=5)).json()
    failed = wait_for_status(alpha, job["id"])

    assert failed["status"] == "failed"
    error = failed["error"]
    assert error["status"] == 422
    assert error["errors"][0]["field"] == "sets[lost].embeddings"
    assert "upload it again" in error["errors"][0]["message"]
    assert_problem(alpha.get(f"/v1/jobs/{job['id']}/report"), 409)


def test_job_past_the_soft_time_limit_fails_cleanly(
    alpha: httpx.Client, long_running_embeddings: str, stack: ServiceStack, store: Store
) -> None:
    assert stack.worker is not None
    stack.worker.stop()
    stack.wait_ready(worker=stack.start_worker(NNKGEO_TASK_SOFT_TIME_LIMIT_S="1"))
    try:
        job = submit(alpha, job_body(long_running_embeddings, name="slow", k=48)).json()
        failed = wait_for_status(alpha, job["id"], timeout_s=60)
    finally:
        stack.worker.stop()
        stack.wait_ready(worker=stack.start_worker())

    assert failed["status"] == "failed", failed
    assert failed["error"]["type"].endswith("time-limit")
    assert "NNKGEO_TASK_SOFT_TIME_LIMIT_S" in failed["error"]["detail"]
    record = store.get_job("alpha", job["id"])
    assert record is not None
    assert record.attempts == 1
