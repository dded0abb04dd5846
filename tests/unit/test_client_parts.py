"""The client's parts without a server: request bodies, the wait plan, retry timing.

Calls and plans are descriptions (nnkgeo.client.calls), so they are checked here by
stepping them by hand; the clients that send them run against the real service in
tests/integration/test_client.py.
"""

from __future__ import annotations

import email.utils
import io
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from api_schemas import JobOut
from nnkgeo.client.calls import Call, Sleep
from nnkgeo.client.jobs import job_create, queued_hint, submit_call, wait_plan
from nnkgeo.client.transport import RetryPolicy, error_from_response, retry_after_s
from nnkgeo.client.uploads import format_for_path, upload_body
from nnkgeo.errors import (
    GoneError,
    JobFailedError,
    JobTimeoutError,
    ServerError,
    UsageError,
    ValidationProblem,
)


def _job(status: str, *, fraction: float = 0.5, error: dict[str, Any] | None = None) -> JobOut:
    return JobOut.model_validate(
        {
            "id": "job_1",
            "status": status,
            "progress": {"stage": "solve", "fraction": fraction},
            "created_at": "2025-01-01T00:00:00Z",
            "error": error,
            "links": {
                "self": "/v1/jobs/job_1",
                "report": "/v1/jobs/job_1/report",
                "report_html": "/v1/jobs/job_1/report.html",
                "cancel": "/v1/jobs/job_1/cancel",
            },
        }
    )


# --------------------------------------------------------------------------- bodies


def test_array_upload_is_the_file_np_save_writes() -> None:
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    saved = io.BytesIO()
    np.save(saved, array, allow_pickle=False)

    body = upload_body(array, None)

    assert body.format == "npy"
    assert b"".join(body.sync_chunks()) == saved.getvalue()
    assert body.length == len(saved.getvalue())


def test_uploads_refuse_object_arrays_and_unknown_suffixes() -> None:
    with pytest.raises(UsageError, match="object array"):
        upload_body(np.array([{"a": 1}], dtype=object), None)
    with pytest.raises(UsageError, match="format="):
        format_for_path("embeddings.bin")
    assert format_for_path("model.ONNX") == "onnx"


def test_shorthand_sets_give_the_api_form() -> None:
    shorthand = job_create({"layer4": ("ds_emb", "ds_labels")}, {"k": 30})
    api_form = job_create(
        [
            {
                "name": "layer4",
                "embeddings": {"dataset": "ds_emb"},
                "labels": {"dataset": "ds_labels"},
            }
        ],
        {"k": 30},
    )

    assert shorthand == api_form


def test_invalid_params_are_refused_before_sending_naming_the_field() -> None:
    with pytest.raises(ValidationProblem) as refused:
        submit_call({"layer4": ("ds_emb", None)}, {"k": 30, "neighbours": 5}, None)

    assert refused.value.status == 422
    assert "params.neighbours" in refused.value.field_errors


def test_every_submit_carries_an_idempotency_key() -> None:
    first = submit_call({"a": ("ds",)}, None, None)
    second = submit_call({"a": ("ds",)}, None, None)

    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    # Only what was given: the service's defaults fill in the params.
    assert first.json == {"sets": [{"name": "a", "embeddings": {"dataset": "ds"}}], "params": {}}


# --------------------------------------------------------------------------- waiting


def test_wait_sleeps_as_retry_after_says_then_returns_the_succeeded_job() -> None:
    plan = wait_plan("job_1", timeout=None, progress=False, poll_interval=1.0)

    poll = next(plan)
    assert isinstance(poll, Call) and poll.path == "/v1/jobs/job_1"
    assert plan.send((_job("running"), 3.0)) == Sleep(3.0)
    assert isinstance(plan.send(None), Call)
    assert plan.send((_job("running"), None)) == Sleep(1.0)
    plan.send(None)
    with pytest.raises(StopIteration) as finished:
        plan.send((_job("succeeded", fraction=1.0), None))

    assert finished.value.value.status.value == "succeeded"


def test_wait_raises_the_failed_jobs_problem() -> None:
    problem = {"title": "Invalid input", "status": 422, "errors": [{"field": "k", "message": "!"}]}
    plan = wait_plan("job_1", timeout=None, progress=False, poll_interval=1.0)
    next(plan)

    with pytest.raises(JobFailedError) as failed:
        plan.send((_job("failed", error=problem), None))

    assert failed.value.status == 422
    assert failed.value.field_errors == {"k": "!"}


def test_a_job_queued_too_long_is_explained_once_from_readyz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_worker = httpx.Response(
        503,
        json={
            "title": "Service Unavailable",
            "status": 503,
            "errors": [{"field": "workers", "message": "none answered within 1 s"}],
        },
    )
    plan = wait_plan("job_1", timeout=None, progress=False, poll_interval=1.0, queued_hint_after=0)
    next(plan)

    with caplog.at_level(logging.WARNING, logger="nnkgeo.client"):
        probe = plan.send((_job("queued", fraction=0.0), None))
        assert isinstance(probe, Call) and probe.path == "/readyz" and probe.probe
        assert plan.send(probe.parse(no_worker)) == Sleep(1.0)
        assert isinstance(plan.send(None), Call)
        # Still queued: polled on, not probed nor said again.
        assert plan.send((_job("queued", fraction=0.0), None)) == Sleep(1.0)

    (hint,) = [record.getMessage() for record in caplog.records]
    assert hint.startswith("job job_1 is still queued after 0 s: no worker seems to have taken it")
    assert "workers: none answered within 1 s" in hint
    assert "celery -A workers.celery_app worker" in hint


def test_a_queued_job_with_live_workers_is_said_to_wait_behind_others() -> None:
    ready = (200, {"status": "ready", "workers": ["celery@a"]})

    hint = queued_hint("job_1", 12.0, ready)

    assert hint == (
        "job job_1 is still queued after 12 s; workers answer /readyz (celery@a), so it "
        "waits behind other jobs, or for a worker that serves its queue"
    )


def test_wait_gives_up_after_its_timeout() -> None:
    plan = wait_plan("job_1", timeout=0.0, progress=False, poll_interval=1.0)
    next(plan)
    time.sleep(0.01)

    with pytest.raises(JobTimeoutError) as late:
        plan.send((_job("running"), None))

    assert late.value.job.status.value == "running"


# --------------------------------------------------------------------------- retries


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60))

    assert retry_after_s("7") == 7.0
    assert 55 <= (retry_after_s(in_a_minute) or 0) <= 60
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def _answer(
    status: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> httpx.Response:
    return httpx.Response(
        status, headers=headers, content=body, request=httpx.Request("GET", "http://x/v1/jobs")
    )


def test_retry_policy_retries_only_not_now_answers_within_its_budget() -> None:
    policy = RetryPolicy(retries=2, backoff=0.5)
    call = Call("GET", "/v1/jobs", lambda response: None)

    assert policy.delay_after_status(0, call, _answer(503, {"Retry-After": "2"})) == 2.0
    assert policy.delay_after_status(0, call, _answer(503, {"Retry-After": "3600"})) is None
    assert 0.25 <= (policy.delay_after_status(1, call, _answer(429)) or 0) <= 1.0
    assert policy.delay_after_status(2, call, _answer(503)) is None
    assert policy.delay_after_status(0, call, _answer(404)) is None


def test_a_refused_connection_is_retried_only_once_the_service_has_answered() -> None:
    policy = RetryPolicy(retries=5, backoff=0.5)
    request = httpx.Request("GET", "http://127.0.0.1:9/v1/jobs")
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=request)
    dropped = httpx.ReadError("connection reset", request=request)

    assert policy.delay_after_error(0, refused, answered_before=False) is None
    assert 0.25 <= (policy.delay_after_error(0, refused, answered_before=True) or 0) <= 0.5
    assert 0.25 <= (policy.delay_after_error(0, dropped, answered_before=False) or 0) <= 0.5
    assert policy.delay_after_error(5, dropped, answered_before=True) is None


def test_error_answers_become_typed_exceptions_even_from_a_proxy() -> None:
    gone = error_from_response(
        _answer(410, body=b'{"title": "Gone", "status": 410, "detail": "expired"}')
    )
    proxy = error_from_response(_answer(502, body=b"<html>Bad Gateway</html>"))

    assert isinstance(gone, GoneError) and gone.problem.detail == "expired"
    assert isinstance(proxy, ServerError) and proxy.status == 502
    assert proxy.problem.detail == "<html>Bad Gateway</html>"
