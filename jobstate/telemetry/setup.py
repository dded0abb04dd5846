"""The start-up calls: `configure_api` in the API process, `configure_worker` in a worker's.

Both read ``NNKGEO_LOG_FORMAT`` and ``NNKGEO_OTEL`` (with ``NNKGEO_OTEL_EXPORTER``) from
the settings. With ``NNKGEO_OTEL`` off, no OpenTelemetry module is imported.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from celery import signals

from jobstate.settings import ConfigurationError, Settings
from jobstate.store.outbox import (
    ANALYZE_SETS_TASK,
    ASSEMBLE_JOB_TASK,
    DELIVER_WEBHOOK_TASK,
    SOLVE_BLOCK_TASK,
)
from jobstate.telemetry.logs import bind_job, clear_job, format_handlers

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["bind_task_job", "configure_api", "configure_api_logging", "configure_worker"]

OTEL_INSTALL_HINT = "pip install 'nnkgeo[otel]'"
# uvicorn's own loggers keep their handlers and do not propagate to the root's.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

# One tracer provider and one set of Celery signal receivers per process, however many
# apps a process builds (tests build several).
_process_provider: TracerProvider | None = None


def configure_api_logging(settings: Settings) -> None:
    """The API's log level and format, on the root logger and uvicorn's."""
    logging.basicConfig(level=settings.log_level)
    handlers = [
        handler
        for name in ("", *_UVICORN_LOGGERS)
        for handler in logging.getLogger(name or None).handlers
    ]
    format_handlers(handlers, log_format=settings.log_format, traced=settings.otel)


def configure_api(app: Any, settings: Settings) -> None:
    """Trace ``app`` (a FastAPI app) and the messages the API sends, when ``NNKGEO_OTEL``."""
    if not settings.otel:
        return
    _require_opentelemetry()
    provider = _provider("nnkgeo-api", settings)
    from jobstate.telemetry.tracing import instrument_api

    instrument_api(app, provider)


def configure_worker(settings: Settings) -> None:
    """Connect a worker's logging and tracing to Celery's signals.

    Call it where the worker's Celery app is made: Celery sets its logging up later, and
    announces it; a task's job is bound when it starts and forgotten when it ends.
    """

    def format_celery_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            format_handlers(logger.handlers, log_format=settings.log_format, traced=settings.otel)

    def start_tracing(**_: Any) -> None:
        # In the worker's main process, before its pool forks: the pool processes inherit
        # the provider and the receivers (the SDK restarts its threads after a fork).
        _provider("nnkgeo-worker", settings)

    if settings.otel:
        _require_opentelemetry()
    signals.after_setup_logger.connect(format_celery_handlers, weak=False)
    signals.after_setup_task_logger.connect(format_celery_handlers, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    if settings.otel:
        signals.worker_init.connect(start_tracing, weak=False)


def bind_task_job(task_name: str, args: tuple[Any, ...] | list[Any], task_id: str | None) -> None:
    """Bind the job a task's message names (its arguments are ids; see
    `jobstate.store.outbox`), so that every record the task logs is about it.

    ``analyze_sets`` carries no attempt: its claim decides it, and binds it then.
    """
    fields: dict[str, Any] = {"task": task_name, "task_id": task_id}
    if task_name == ANALYZE_SETS_TASK and len(args) >= 2:
        fields |= {"job_id": args[0], "tenant": args[1]}
    elif task_name in (SOLVE_BLOCK_TASK, ASSEMBLE_JOB_TASK) and len(args) >= 3:
        fields |= {"job_id": args[0], "tenant": args[1], "attempt": args[2]}
    elif task_name == DELIVER_WEBHOOK_TASK and len(args) >= 2:
        fields |= {"tenant": args[0], "job_id": args[1]}
    bind_job(**fields)


def on_task_prerun(
    task_id: str | None = None, task: Any = None, args: Any = None, **_: Any
) -> None:
    clear_job()
    if task is not None:
        bind_task_job(task.name, tuple(args or ()), task_id)


def on_task_postrun(**_: Any) -> None:
    clear_job()


def _require_opentelemetry() -> None:
    """Refuse to start, naming the extra, when NNKGEO_OTEL is on without OpenTelemetry."""
    missing = [
        name
        for name in ("opentelemetry.sdk", "opentelemetry.instrumentation.fastapi")
        if _find(name) is None
    ]
    if missing:
        raise ConfigurationError(
            f"NNKGEO_OTEL=1 needs OpenTelemetry ({', '.join(missing)} not installed); "
            f"install it with: {OTEL_INSTALL_HINT}, or unset NNKGEO_OTEL"
        )


def _find(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except (ModuleNotFoundError, ValueError):  # a parent missing, or a module set to None
        return None


def _provider(service_name: str, settings: Settings) -> TracerProvider:
    """This process's tracer provider, made global, with the Celery receivers installed."""
    global _process_provider
    if _process_provider is not None:
        return _process_provider
    try:
        from opentelemetry import trace

        from jobstate.telemetry.tracing import (
            CeleryTracing,
            exporter_from_setting,
            tracer_provider,
        )
    except ImportError as error:
        raise ConfigurationError(
            f"NNKGEO_OTEL=1 needs OpenTelemetry, which could not be imported ({error}); "
            f"install it with: {OTEL_INSTALL_HINT}, or unset NNKGEO_OTEL"
        ) from error
    try:
        exporter, batch = exporter_from_setting(settings.otel_exporter)
    except OSError as error:
        raise ConfigurationError(
            f"NNKGEO_OTEL_EXPORTER={settings.otel_exporter}: cannot open it ({error})"
        ) from error
    provider = tracer_provider(service_name, exporter=exporter, batch=batch)
    trace.set_tracer_provider(provider)
    CeleryTracing(provider).install()
    _process_provider = provider
    return provider
