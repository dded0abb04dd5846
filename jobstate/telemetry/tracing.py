"""OpenTelemetry traces of the API and the workers (``NNKGEO_OTEL=1``, ``nnkgeo[otel]``).

One trace follows a job from the request that submits it to the task that runs it:

- the API's requests are server spans (opentelemetry-instrumentation-fastapi; the
  health and metrics routes are left out);
- each Celery message sent gets a producer span, ``send <task>``, child of whatever span
  is current (the request's), whose context goes into the message's headers (W3C
  ``traceparent``, by the global propagator);
- each task a worker runs gets a consumer span, ``process <task>``, child of the context
  its message carries: the same trace as the request. An exception ends it with an
  error status.

The Celery spans are made here, from Celery's signals, rather than by
opentelemetry-instrumentation-celery: that instrumentation looks the task up in the
sending process's registry, and the API sends tasks it does not declare (it never
imports the workers), for which it starts a producer span it never ends.

Spans go to the exporter ``NNKGEO_OTEL_EXPORTER`` names:

- ``console``: one JSON object a span on standard output;
- ``file:<path>``: one JSON object a line appended to ``<path>``; every process (the
  API, each worker's pool processes) may share one file, as each span is one ``write``;
- ``otlp``: OTLP over HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*``
  variables (by default ``http://localhost:4318/v1/traces``), batched.

The service name is ``nnkgeo-api`` or ``nnkgeo-worker`` unless ``OTEL_SERVICE_NAME`` says
otherwise; ``OTEL_RESOURCE_ATTRIBUTES`` adds attributes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from celery import signals
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from jobstate.telemetry.logs import set_trace_source

__all__ = [
    "CeleryTracing",
    "JsonLinesSpanExporter",
    "current_trace_ids",
    "exporter_from_setting",
    "instrument_api",
    "tracer_provider",
]

# Routes polled by probes and scrapers: a span each would drown the traces of work.
UNTRACED_URLS: Final = "/healthz,/readyz,/metrics"
_INSTRUMENTATION = "nnkgeo.celery"
# Producer spans whose message was never confirmed sent (the broker refused it) are
# ended once this many newer ones are open, so a broker outage cannot grow memory.
_MAX_OPEN_SENDS = 1024


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one line of JSON (`ReadableSpan.to_json`) to a file.

    One ``os.write`` per span on a file opened with ``O_APPEND``: lines from several
    processes (a worker's forked pool processes, the API) interleave whole, and nothing
    sits in a buffer that a fork would copy.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        try:
            os.write(self._fd, lines.encode("utf-8"))
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def exporter_from_setting(setting: str) -> tuple[SpanExporter, bool]:
    """The exporter ``NNKGEO_OTEL_EXPORTER`` names, and whether to batch its spans.

    Console and file exports are local and cheap: each span is written when it ends, so
    none is lost when a process exits. OTLP goes over the network: batched.
    """
    if setting == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # The process's real standard output: a Celery worker redirects sys.stdout into
        # its log, which would make each span a log record.
        exporter = ConsoleSpanExporter(
            out=sys.__stdout__, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
        return exporter, False
    if setting.startswith("file:") and setting.removeprefix("file:"):
        return JsonLinesSpanExporter(setting.removeprefix("file:")), False
    if setting == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(), True
    raise ValueError(f"NNKGEO_OTEL_EXPORTER={setting!r}: expected console, file:<path> or otlp")


def tracer_provider(
    service_name: str, *, exporter: SpanExporter, batch: bool = False
) -> TracerProvider:
    """A tracer provider for one process, exporting to ``exporter``.

    Trace ids then appear in log records (`jobstate.telemetry.logs`). The provider is not
    made global here: `jobstate.telemetry.setup` does that for the API and the workers,
    tests keep theirs.
    """
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    set_trace_source(current_trace_ids)
    return provider


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, or None outside a span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def instrument_api(app: Any, provider: TracerProvider) -> None:
    """A server span for each request to ``app`` (a FastAPI app), health routes aside."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=UNTRACED_URLS,
        # The ASGI receive and send events of every request: noise beside the request.
        exclude_spans=["receive", "send"],
    )


class CeleryTracing:
    """Producer spans for the messages a process sends, consumer spans for the tasks it
    runs, the trace carried between them in the message headers.

    `install` connects it to Celery's signals (process-wide, as they are), `uninstall`
    disconnects it.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer(_INSTRUMENTATION)
        self._lock = threading.Lock()
        self._sending: OrderedDict[str, trace.Span] = OrderedDict()
        # Per task id: its span and the context token to detach when it ends. A task runs
        # in one thread from prerun to postrun, so the token is that thread's.
        self._running: dict[str, tuple[trace.Span, object]] = {}

    def install(self) -> None:
        signals.before_task_publish.connect(self._before_publish, weak=False)
        signals.after_task_publish.connect(self._after_publish, weak=False)
        signals.task_prerun.connect(self._task_prerun, weak=False)
        signals.task_failure.connect(self._task_failure, weak=False)
        signals.task_postrun.connect(self._task_postrun, weak=False)

    def uninstall(self) -> None:
        signals.before_task_publish.disconnect(self._before_publish)
        signals.after_task_publish.disconnect(self._after_publish)
        signals.task_prerun.disconnect(self._task_prerun)
        signals.task_failure.disconnect(self._task_failure)
        signals.task_postrun.disconnect(self._task_postrun)

    def _before_publish(
        self,
        sender: Any = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
        **_: Any,
    ) -> None:
        if headers is None:
            return
        task_name = str(headers.get("task") or sender)
        task_id = str(headers.get("id", ""))
        span = self._tracer.start_span(
            f"send {task_name}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "celery",
                "messaging.operation.type": "send",
                "messaging.destination.name": routing_key or "",
                "messaging.message.id": task_id,
                "celery.task_name": task_name,
            },
        )
        inject(headers, context=trace.set_span_in_context(span))
        with self._lock:
            self._sending[task_id] = span
            while len(self._sending) > _MAX_OPEN_SENDS:
                _, stale = self._sending.popitem(last=False)
                stale.set_status(Status(StatusCode.ERROR, "not confirmed sent"))
                stale.end()

    def _after_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = str((headers or {}).get("id", ""))
        with self._lock:
            span = self._sending.pop(task_id, None)
        if span is not None:
            span.end()

    def _task_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is None or task is None:
            return
        # Celery copies a message's headers onto its request: traceparent among them.
        carrier = {
            key: value
            for key in ("traceparent", "tracestate", "baggage")
            if isinstance(value := getattr(task.request, key, None), str)
        }
        parent = extract(carrier)
        span = self._tracer.start_span(
            f"process {task.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "celery",
                "messaging.operation.type": "process",
                "messaging.destination.name": str(
                    (task.request.delivery_info or {}).get("routing_key") or ""
                ),
                "messaging.message.id": task_id,
                "celery.task_name": task.name,
                "celery.retries": int(task.request.retries or 0),
            },
        )
        token = context_api.attach(trace.set_span_in_context(span, parent))
        self._running[task_id] = (span, token)

    def _task_failure(
        self, task_id: str | None = None, exception: BaseException | None = None, **_: Any
    ) -> None:
        running = self._running.get(task_id or "")
        if running is None or exception is None:
            return
        span, _ = running
        span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))

    def _task_postrun(self, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        running = self._running.pop(task_id or "", None)
        if running is None:
            return
        span, token = running
        if state is not None:
            span.set_attribute("celery.state", state)
        span.end()
        context_api.detach(token)  # type: ignore[arg-type]
