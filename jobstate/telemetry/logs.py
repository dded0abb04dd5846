"""The job a log record is about, and the formats records are written in.

A worker task binds its job (`bind_job`: job id, tenant, attempt, and the Celery task's
name and id) when it starts and clears it when it ends (`jobstate.telemetry.setup` does
both from Celery's signals; ``analyze_sets`` adds the attempt once its claim tells it).
Every record logged meanwhile, by any logger in that task's thread, carries those fields,
and, while a traced span is current (``NNKGEO_OTEL=1``), its trace and span ids.

Two formats, chosen by ``NNKGEO_LOG_FORMAT``:

- ``text`` (the default): each process's usual lines (Celery's, uvicorn's), with
  ``[trace_id=... span_id=...]`` added to a line logged inside a traced span;
- ``json``: one JSON object a line, with ``time`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, ``pid``, the job's ``job_id``, ``tenant`` and ``attempt`` and the task's
  ``task`` and ``task_id`` when the record is about one, ``trace_id`` and ``span_id``
  inside a span, and ``exception`` with the traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "JOB_FIELDS",
    "JobContextFilter",
    "JsonFormatter",
    "TraceSuffixFormatter",
    "bind_job",
    "clear_job",
    "current_job",
    "format_handlers",
    "job_context",
    "set_trace_source",
]

# The fields a record about a job carries, in the order a JSON line shows them.
JOB_FIELDS: Final = ("job_id", "tenant", "attempt", "task", "task_id")
TRACE_FIELDS: Final = ("trace_id", "span_id")

_JOB: Final[dict[str, ContextVar[Any]]] = {
    name: ContextVar(f"nnkgeo_{name}", default=None) for name in JOB_FIELDS
}

# Returns the current span's (trace id, span id) in hex, or None outside a span; set by
# jobstate.telemetry.tracing when tracing is on, so that without it no OpenTelemetry
# module is imported to look.
_trace_source: Callable[[], tuple[str, str] | None] | None = None


def set_trace_source(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where log records find the current trace and span ids (None: nowhere)."""
    global _trace_source
    _trace_source = source


def bind_job(**fields: Any) -> None:
    """Say which job, tenant, attempt and task the records logged from here on are about.

    Parameters
    ----------
    **fields
        Any of ``job_id``, ``tenant``, ``attempt``, ``task`` and ``task_id``; the others
        keep their values. Held in context variables: a thread or task sees its own.
    """
    unknown = set(fields) - set(JOB_FIELDS)
    if unknown:
        raise TypeError(f"unknown job fields {sorted(unknown)}; known: {', '.join(JOB_FIELDS)}")
    for name, value in fields.items():
        _JOB[name].set(value)


def clear_job() -> None:
    """Forget the job: records logged from here on are about none."""
    for variable in _JOB.values():
        variable.set(None)


def current_job() -> dict[str, Any]:
    """The fields bound now, without those unset."""
    bound = {name: variable.get() for name, variable in _JOB.items()}
    return {name: value for name, value in bound.items() if value is not None}


@contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """`bind_job` for the duration of a ``with`` block; the previous values come back."""
    unknown = set(fields) - set(JOB_FIELDS)
    if unknown:
        raise TypeError(f"unknown job fields {sorted(unknown)}; known: {', '.join(JOB_FIELDS)}")
    tokens: list[tuple[ContextVar[Any], Token[Any]]] = [
        (_JOB[name], _JOB[name].set(value)) for name, value in fields.items()
    ]
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


class JobContextFilter(logging.Filter):
    """Adds the bound job's fields and the current trace ids to each record it sees.

    Put on handlers, not loggers: a logger's filters skip the records its children
    propagate to it. Runs in the thread that logged, so it sees that thread's context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_job().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        source = _trace_source
        if source is not None and getattr(record, "trace_id", None) is None:
            ids = source()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the job and trace fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in (*JOB_FIELDS, *TRACE_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot hold is logged as its str().
        return json.dumps(entry, default=str, ensure_ascii=False)


class TraceSuffixFormatter(logging.Formatter):
    """The process's own text format, with the trace and span ids after the first line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} [trace_id={trace_id} span_id={record.span_id}]{newline}{rest}"


def format_handlers(handlers: Iterable[logging.Handler], *, log_format: str, traced: bool) -> None:
    """Give each handler the job filter and the chosen format; safe to call again.

    Parameters
    ----------
    handlers
        The handlers to change (the root logger's, uvicorn's, Celery's).
    log_format
        ``"json"`` or ``"text"``; text keeps each handler's own formatter.
    traced
        Whether tracing is on: text lines then get the trace ids.
    """
    for handler in handlers:
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
        current = handler.formatter
        if log_format == "json":
            if not isinstance(current, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif traced and not isinstance(current, TraceSuffixFormatter):
            handler.setFormatter(TraceSuffixFormatter(current or logging.Formatter()))
