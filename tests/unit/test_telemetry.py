"""jobstate.telemetry: JSON log lines that name their job, and the traces of a job.

The tracing tests run a real FastAPI app (through its ASGI test client) that sends a
Celery message, and a real Celery worker (in a thread, on Celery's in-memory broker) that
runs the task; spans go to OpenTelemetry's in-memory exporter. The carrying across real
processes, with the service's own app and workers, is tests/integration/test_telemetry.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jobstate.settings import ConfigurationError, load_settings
from jobstate.store.outbox import ANALYZE_SETS_TASK, SOLVE_BLOCK_TASK
from jobstate.telemetry.logs import (
    JobContextFilter,
    bind_job,
    clear_job,
    current_job,
    format_handlers,
    job_context,
    set_trace_source,
)
from jobstate.telemetry.setup import on_task_postrun, on_task_prerun

REPO_ROOT = Path(__file__).resolve().parents[2]


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger whose one handler writes JSON lines into a buffer, as the services' do."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    format_handlers([handler], log_format="json", traced=False)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, buffer


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


# --- log records --------------------------------------------------------------------


def test_a_json_line_carries_the_bound_job_and_none_outside_it() -> None:
    logger, buffer = _json_logger("nnkgeo.test.json")
    clear_job()

    logger.info("before %s", "any job")
    with job_context(job_id="job-1", tenant="alpha", attempt=2):
        logger.warning("claimed, attempt %d", 2)
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logger.exception("failed")
    logger.info("after")

    before, claimed, failed, after = _lines(buffer)
    assert set(before) == {"time", "level", "logger", "message", "pid"}
    assert before["message"] == "before any job" and before["level"] == "INFO"
    assert before["logger"] == "nnkgeo.test.json" and before["pid"] == os.getpid()
    assert before["time"].endswith("Z") and "T" in before["time"]
    assert claimed["message"] == "claimed, attempt 2" and claimed["level"] == "WARNING"
    assert (claimed["job_id"], claimed["tenant"], claimed["attempt"]) == ("job-1", "alpha", 2)
    assert failed["job_id"] == "job-1"
    assert (
        failed["exception"].startswith("Traceback")
        and "RuntimeError: boom" in (failed["exception"])
    )
    assert "job_id" not in after and current_job() == {}
    assert len(buffer.getvalue().splitlines()) == 4  # the traceback stays inside its line


def test_a_tasks_arguments_name_its_job_until_it_ends() -> None:
    logger, buffer = _json_logger("nnkgeo.test.task")

    class Task:
        name = SOLVE_BLOCK_TASK

    on_task_prerun(task_id="t-1", task=Task(), args=["job-2", "beta", 3, 0, 7])
    logger.info("solving")
    on_task_postrun(task_id="t-1", task=Task())
    logger.info("idle")

    solving, idle = _lines(buffer)
    assert {key: solving[key] for key in ("job_id", "tenant", "attempt", "task", "task_id")} == {
        "job_id": "job-2",
        "tenant": "beta",
        "attempt": 3,
        "task": SOLVE_BLOCK_TASK,
        "task_id": "t-1",
    }
    assert "job_id" not in idle and "task" not in idle
    with pytest.raises(TypeError, match="unknown job fields"):
        bind_job(jobid="x")


def test_text_lines_get_the_trace_ids_only_inside_a_span() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    format_handlers([handler], log_format="text", traced=True)
    format_handlers([handler], log_format="text", traced=True)  # again: no second suffix
    logger = logging.getLogger("nnkgeo.test.text")
    logger.handlers[:] = [handler]
    logger.propagate = False
    ids: list[tuple[str, str] | None] = [None]
    set_trace_source(lambda: ids[0])
    try:
        logger.warning("outside")
        ids[0] = ("ab" * 16, "cd" * 8)
        logger.warning("inside")
    finally:
        set_trace_source(None)

    assert buffer.getvalue().splitlines() == [
        "WARNING outside",
        f"WARNING inside [trace_id={'ab' * 16} span_id={'cd' * 8}]",
    ]
    assert sum(isinstance(f, JobContextFilter) for f in handler.filters) == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NNKGEO_LOG_FORMAT", "yaml"),
        ("NNKGEO_OTEL_EXPORTER", "jaeger"),
        ("NNKGEO_OTEL_EXPORTER", "file:"),
        ("NNKGEO_OTEL", "maybe"),
    ],
)
def test_unknown_telemetry_settings_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


# --- traces -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced() -> Iterator[dict[str, Any]]:
    """An API app and a Celery worker, both traced into one in-memory exporter."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from jobstate.telemetry.tracing import CeleryTracing, instrument_api, tracer_provider

    exporter = InMemorySpanExporter()
    provider = tracer_provider("nnkgeo-test", exporter=exporter)
    tracing = CeleryTracing(provider)
    tracing.install()
    # As configure_worker connects them; left connected afterwards, as any process that
    # imported workers.celery_app has them (they only bind and clear context variables).
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    logger, buffer = _json_logger("nnkgeo.test.traced")

    celery = Celery("nnkgeo-test", broker="memory://", backend="cache+memory://")
    celery.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)

    @celery.task(name=ANALYZE_SETS_TASK)
    def analyze_sets(job_id: str, tenant: str) -> None:
        logger.info("job %s of %s ran", job_id, tenant)
        if job_id == "job-bad":
            raise ValueError("bad job")

    api = FastAPI()

    @api.post("/v1/jobs")
    def submit(job_id: str) -> dict[str, str]:
        # As the API does: by name, a task this process does not declare.
        celery.send_task(ANALYZE_SETS_TASK, args=[job_id, "alpha"])
        return {"id": job_id}

    @api.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    instrument_api(api, provider)
    try:
        with (
            start_worker(celery, pool="solo", perform_ping_check=False, loglevel="WARNING"),
            TestClient(api) as client,
        ):
            yield {"client": client, "exporter": exporter, "logs": buffer}
    finally:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.uninstrument_app(api)
        tracing.uninstall()
        set_trace_source(None)
        provider.shutdown()


def _spans_of_job(exporter: Any, job_id: str, *, timeout_s: float = 20) -> dict[str, Any]:
    """The request, send and process spans of one job, once the task's span has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        process = [
            s
            for s in spans
            if s.name == f"process {ANALYZE_SETS_TASK}"
            and s.attributes.get("messaging.message.id") in _sent_ids(spans, job_id)
        ]
        if process:
            (send,) = [
                s
                for s in spans
                if s.name == f"send {ANALYZE_SETS_TASK}"
                and s.attributes["messaging.message.id"]
                == process[0].attributes["messaging.message.id"]
            ]
            (request,) = [
                s
                for s in spans
                if s.name == "POST /v1/jobs" and s.context.span_id == send.parent.span_id
            ]
            return {"request": request, "send": send, "process": process[0]}
        time.sleep(0.05)
    raise TimeoutError(f"no process span for {job_id}")


def _sent_ids(spans: Any, job_id: str) -> set[str]:
    """Message ids of the sends made by the request for job_id (its query string)."""
    requests = {
        s.context.span_id
        for s in spans
        if s.name == "POST /v1/jobs"
        # http.url (older semantic conventions) or url.query (newer) holds the query.
        and any(f"job_id={job_id}" in str(value) for value in s.attributes.values())
    }
    return {
        s.attributes["messaging.message.id"]
        for s in spans
        if s.name == f"send {ANALYZE_SETS_TASK}" and s.parent and s.parent.span_id in requests
    }


def test_a_request_its_message_and_its_task_make_one_linked_trace(traced) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    answer = traced["client"].post("/v1/jobs", params={"job_id": "job-ok"})
    assert answer.status_code == 200
    spans = _spans_of_job(traced["exporter"], "job-ok")
    request, send, process = spans["request"], spans["send"], spans["process"]

    assert request.kind is SpanKind.SERVER and request.parent is None
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    trace_id = request.context.trace_id
    assert send.context.trace_id == trace_id and process.context.trace_id == trace_id
    # request -> send -> process, each the parent of the next.
    assert send.parent.span_id == request.context.span_id
    assert process.parent.span_id == send.context.span_id
    assert process.parent.is_remote  # it came in the message's headers
    assert process.status.status_code is not StatusCode.ERROR
    assert process.attributes["celery.task_name"] == ANALYZE_SETS_TASK
    assert send.end_time <= process.start_time  # the send ended once the broker took it
    assert request.resource.attributes["service.name"] == "nnkgeo-test"

    # The task's log line names its job and the process span it was logged in.
    (line,) = [
        line for line in _lines(traced["logs"]) if line["message"] == "job job-ok of alpha ran"
    ]
    assert line["trace_id"] == f"{trace_id:032x}"
    assert line["span_id"] == f"{process.context.span_id:016x}"
    assert (line["job_id"], line["tenant"], line["task"]) == ("job-ok", "alpha", ANALYZE_SETS_TASK)
    assert line["task_id"] == process.attributes["messaging.message.id"]


def test_a_failing_task_ends_its_span_with_the_error(traced) -> None:
    from opentelemetry.trace import StatusCode

    traced["client"].post("/v1/jobs", params={"job_id": "job-bad"})
    process = _spans_of_job(traced["exporter"], "job-bad")["process"]

    assert process.status.status_code is StatusCode.ERROR
    assert "ValueError: bad job" in process.status.description
    assert [event.name for event in process.events] == ["exception"]


def test_health_probes_make_no_span(traced) -> None:
    before = len(traced["exporter"].get_finished_spans())
    assert traced["client"].get("/healthz").status_code == 200
    assert len(traced["exporter"].get_finished_spans()) == before


def test_nnkgeo_otel_without_opentelemetry_refuses_to_start_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobstate.settings import Settings
    from jobstate.telemetry.setup import configure_api

    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)
    with pytest.raises(ConfigurationError, match=r"NNKGEO_OTEL=1 .*pip install 'nnkgeo\[otel\]'"):
        configure_api(FastAPI(), Settings(otel=True))


def test_each_exporter_setting_gives_its_exporter(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from jobstate.telemetry.tracing import JsonLinesSpanExporter, exporter_from_setting

    console, batched = exporter_from_setting("console")
    assert isinstance(console, ConsoleSpanExporter) and not batched
    spans_file = tmp_path / "spans.jsonl"
    to_file, batched = exporter_from_setting(f"file:{spans_file}")
    assert isinstance(to_file, JsonLinesSpanExporter) and not batched and spans_file.exists()
    to_file.shutdown()
    otlp, batched = exporter_from_setting("otlp")
    assert isinstance(otlp, OTLPSpanExporter) and batched
    with pytest.raises(ValueError, match="console, file:<path> or otlp"):
        exporter_from_setting("zipkin")


_NO_OTEL_PROBE = """
import json, sys
import service.main
import workers.celery_app
ours = ("jobstate.telemetry.tracing", "opentelemetry.instrumentation", "opentelemetry.exporter")
loaded = sorted(name for name in sys.modules if name.startswith(ours))
from opentelemetry import trace
print(json.dumps([loaded, type(trace.get_tracer_provider()).__name__]))
"""


def test_without_nnkgeo_otel_nothing_is_traced_or_instrumented(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NNKGEO_")}
    environment.update(
        {
            "NNKGEO_API_KEYS": "alpha:alpha-key-0123456789abcdef",
            "NNKGEO_DATA_DIR": str(tmp_path / "data"),
            "NNKGEO_REDIS_URL": "redis://127.0.0.1:1/0",
            "NNKGEO_LOG_FORMAT": "json",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-c", _NO_OTEL_PROBE],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    # FastAPI and redis-py import OpenTelemetry's API themselves where it is installed;
    # nnkgeo adds neither its tracing, nor an instrumentation or exporter, nor a provider.
    loaded, provider = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded == []
    assert provider == "ProxyTracerProvider"
