"""The app factory. The API is started with

    uvicorn service.main:app --http service.http_protocol:BoundedHttpToolsProtocol

(the protocol class bounds the time a client may take to send headers and body; see
`service.http_protocol`).

Settings are read and checked here, at import, so that a misconfigured API refuses to
start with one clear message instead of failing on the first request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

import api_schemas
from api_schemas import Problem
from jobstate.blobs import open_blob_store
from jobstate.dispatch import create_celery_app, message_sender, queue_for
from jobstate.settings import (
    Settings,
    get_settings,
    refuse_to_start_on_configuration_error,
)
from jobstate.store import Store
from jobstate.telemetry.setup import configure_api, configure_api_logging
from jobstate.webhooks import WebhookPolicy
from service.auth import ApiKeyring
from service.body_limit import BodySizeLimitMiddleware
from service.datasets import DatasetService
from service.deps import Services
from service.errors import PROBLEM_MEDIA_TYPE, install_problem_handlers, problem_responses
from service.jobs import JobMemoryPolicy, JobService
from service.metrics import HttpMetrics, HttpMetricsMiddleware, JobMetricsCollector
from service.routes import datasets, health, jobs

API_VERSION = "1.0.0"
# Routes that stream their body to disk under NNKGEO_MAX_UPLOAD_BYTES instead of the
# NNKGEO_MAX_JSON_BYTES bound of every other body.
STREAMED_UPLOAD_ROUTES = (("POST", "/v1/datasets"),)
STAGING_LEFTOVER_AGE_S = 24 * 3600

logger = logging.getLogger(__name__)


def _problem_only_openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI where every error response is a Problem served as application/problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for definition_name, definition in components["Problem"].pop("$defs", {}).items():
        components.setdefault(definition_name, definition)
    problem_content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    # Answers no route declares, because they come from below every route: any /v1
    # operation reads the store (503 while it is unavailable), and any body other than an
    # upload is bounded by NNKGEO_MAX_JSON_BYTES (413).
    cross_cutting = {str(code): response for code, response in problem_responses(413, 503).items()}
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if path.startswith("/v1/"):
                responses.setdefault("503", cross_cutting["503"])
            if "requestBody" in operation:
                responses.setdefault("413", cross_cutting["413"])
            # FastAPI documents its own validation error shape; ours is a Problem.
            if "422" in responses:
                responses["422"] = {
                    "description": "Invalid input; `errors` names each field and what to fix.",
                    "content": problem_content,
                }
            for status_code, response in responses.items():
                if status_code.startswith(("4", "5")) and "content" in response:
                    response["content"] = problem_content
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_api_logging(settings)
    keyring = ApiKeyring.from_settings(settings)
    celery = create_celery_app(settings)
    # The store writes each message a job calls for (its analyze_sets; the webhook of a
    # job that ends here, canceled while queued or a cache hit) to the outbox with the
    # record, then sends it through this app; the workers' dispatcher sends what failed.
    store = Store.from_settings(settings, sender=message_sender(celery))
    # An object store: the API's data dir holds only staging files, deleted per request.
    blobs = open_blob_store(settings.blob_url, settings.data_dir)
    blobs.ensure_directories()

    registry = CollectorRegistry()
    http_metrics = HttpMetrics(registry)
    registry.register(JobMetricsCollector(store, queues=[settings.cpu_queue, settings.gpu_queue]))

    services = Services(
        settings=settings,
        keyring=keyring,
        store=store,
        datasets=DatasetService(
            store=store,
            blobs=blobs,
            max_upload_bytes=settings.max_upload_bytes,
            max_stored_bytes=settings.tenant_max_stored_bytes,
            max_array_bytes=settings.array_limit_bytes,
        ),
        jobs=JobService(
            store=store,
            blobs=blobs,
            queue_for=lambda spec: queue_for(spec.params, settings),
            data_roots=settings.data_root_paths,
            webhooks=WebhookPolicy.from_settings(settings),
            memory=JobMemoryPolicy(
                budget_bytes=settings.memory_planning_budget_bytes,
                shard_min_points=settings.shard_min_points,
            ),
            max_active_jobs=settings.tenant_max_active_jobs,
        ),
        celery=celery,
        metrics_registry=registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        blobs.sweep_staging(older_than_s=STAGING_LEFTOVER_AGE_S)
        yield
        store.close()

    app = FastAPI(
        title="nnkgeo",
        version=API_VERSION,
        description=(
            "Measure the geometry of deep-learning embeddings with NNK graphs. Upload "
            "embeddings, submit a job, poll it, fetch the report and the graphs. Every "
            "error is an RFC 9457 `application/problem+json` body."
        ),
        lifespan=lifespan,
        openapi_tags=[
            {"name": "datasets", "description": "Uploaded files of arrays."},
            {"name": "jobs", "description": "Analyses, their reports and graphs."},
            {"name": "health", "description": "Liveness, readiness and metrics."},
        ],
    )
    app.state.services = services
    install_problem_handlers(app)
    # Added first, so it runs inside the metrics middleware: its 413s are counted too.
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_json_bytes, streamed=STREAMED_UPLOAD_ROUTES
    )
    app.add_middleware(HttpMetricsMiddleware, metrics=http_metrics)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.openapi = lambda: _problem_only_openapi(app)  # type: ignore[method-assign]
    # NNKGEO_OTEL: a span per request, carried into the messages the API sends.
    configure_api(app, settings)
    logger.info(
        "nnkgeo API %s: schema %s, tenants %s",
        API_VERSION,
        api_schemas.REPORT_SCHEMA_VERSION,
        ", ".join(sorted(keyring.tenants)) or "(anonymous only)",
    )
    return app


# One line per setting at fault on stderr, and exit code 2, instead of a traceback.
with refuse_to_start_on_configuration_error("API"):
    app = create_app()
