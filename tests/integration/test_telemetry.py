"""NNKGEO_OTEL and NNKGEO_LOG_FORMAT=json on a real stack: one trace from request to task.

A stack of its own (Redis, one Celery worker, one uvicorn API) with tracing on, every
span appended to one JSON-lines file by the API and the worker's processes, and JSON
logs. One small job: its worker's log lines name the job, its tenant and attempt, and the
trace id of the task's span; that span's trace holds the API's request span, the send of
the message, and the task, each the parent of the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import STACK_SETTINGS
from tests.integration.helpers import job_body, submit, upload_array, wait_for_status
from tests.integration.stack import ServiceStack, wait_until

pytestmark = pytest.mark.integration

ANALYZE_SETS = "nnkgeo.analyze_sets"


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    root = tmp_path_factory.mktemp("traced-stack")
    settings = {
        **STACK_SETTINGS,
        "NNKGEO_OTEL": "1",
        "NNKGEO_OTEL_EXPORTER": f"file:{root / 'spans.jsonl'}",
        "NNKGEO_LOG_FORMAT": "json",
    }
    stack = ServiceStack(root, settings=settings)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def finished_job(traced_stack: ServiceStack) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    points = rng.standard_normal((120, 8)).astype(np.float32)
    labels = (points[:, 0] > 0).astype(np.int64)
    with traced_stack.client("alpha") as alpha:
        body = job_body(upload_array(alpha, points), upload_array(alpha, labels), k=8)
        answer = submit(alpha, body)
        assert answer.status_code in (201, 202), answer.text
        return wait_for_status(alpha, answer.json()["id"], timeout_s=60)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a log that are JSON objects (Celery prints its banner as text)."""
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def _spans(stack: ServiceStack) -> list[dict[str, Any]]:
    path = stack.root / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _hex(span_id: str | None) -> str | None:
    return None if span_id is None else span_id.removeprefix("0x")


def test_the_workers_json_lines_name_the_job_its_tenant_attempt_and_trace(
    traced_stack: ServiceStack, finished_job: dict[str, Any]
) -> None:
    assert finished_job["status"] == "succeeded", finished_job
    job_id = finished_job["id"]

    about_job = [
        entry
        for entry in _json_lines(traced_stack.worker.log_path)
        if entry.get("job_id") == job_id
    ]

    claimed = [
        entry for entry in about_job if entry["message"] == f"job {job_id} of alpha: attempt 1"
    ]
    assert len(claimed) == 1, about_job
    (claim,) = claimed
    assert claim["tenant"] == "alpha" and claim["attempt"] == 1
    assert claim["task"] == ANALYZE_SETS and claim["logger"] == "workers.single"
    assert claim["level"] == "INFO" and claim["time"].endswith("Z")
    assert len(claim["trace_id"]) == 32 and len(claim["span_id"]) == 16
    # Every record of the job's task names the same job, tenant and trace.
    assert {(entry["tenant"], entry["trace_id"]) for entry in about_job} == {
        ("alpha", claim["trace_id"])
    }


def test_the_request_span_and_the_task_span_share_one_trace(
    traced_stack: ServiceStack, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["id"]
    (claim,) = [
        entry
        for entry in _json_lines(traced_stack.worker.log_path)
        if entry.get("job_id") == job_id and entry["message"].endswith(": attempt 1")
    ]
    trace_id = claim["trace_id"]

    def task_span_exported() -> bool:
        return any(span["name"] == f"process {ANALYZE_SETS}" for span in _spans(traced_stack))

    wait_until(task_span_exported, timeout_s=15, what="the task's span in the file")
    in_trace = [
        span for span in _spans(traced_stack) if _hex(span["context"]["trace_id"]) == trace_id
    ]
    by_id = {_hex(span["context"]["span_id"]): span for span in in_trace}

    (process,) = [span for span in in_trace if span["name"] == f"process {ANALYZE_SETS}"]
    assert _hex(process["context"]["span_id"]) == claim["span_id"]  # the span it logged in
    send = by_id[_hex(process["parent_id"])]
    request = by_id[_hex(send["parent_id"])]

    assert process["resource"]["attributes"]["service.name"] == "nnkgeo-worker"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["attributes"]["celery.state"] == "SUCCESS"
    assert send["name"] == f"send {ANALYZE_SETS}" and send["kind"] == "SpanKind.PRODUCER"
    assert send["resource"]["attributes"]["service.name"] == "nnkgeo-api"
    assert (
        send["attributes"]["messaging.message.id"] == process["attributes"]["messaging.message.id"]
    )
    assert request["name"] == "POST /v1/jobs" and request["kind"] == "SpanKind.SERVER"
    assert request["resource"]["attributes"]["service.name"] == "nnkgeo-api"
    assert request["parent_id"] is None  # the trace starts at the request
    assert request["attributes"]["http.status_code"] in (201, 202)


def test_the_api_logs_json_lines_and_traces_no_health_probe(
    traced_stack: ServiceStack, finished_job: dict[str, Any]
) -> None:
    assert httpx.get(f"{traced_stack.base_url}/healthz", timeout=5).status_code == 200
    entries = _json_lines(traced_stack.api.log_path)
    lines = [line for line in traced_stack.api.log_path.read_text().splitlines() if line]

    assert len(entries) == len(lines)  # every line the API wrote is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    posted = [entry for entry in entries if '"POST /v1/jobs HTTP/1.1" 20' in entry["message"]]
    assert posted and posted[0]["logger"] == "uvicorn.access"
    names = {span["name"] for span in _spans(traced_stack)}
    assert not any("healthz" in name or "readyz" in name for name in names), names
