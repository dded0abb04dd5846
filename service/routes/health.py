"""/healthz, /readyz and /metrics: for orchestrators and Prometheus, without auth."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_schemas.health import Health, Readiness
from api_schemas.problems import FieldError
from service.deps import ServicesDep
from service.errors import ProblemError, problem_responses
from service.health import check_readiness

router = APIRouter(tags=["health"])


_HEALTHY_BODY = Health().model_dump_json().encode()


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Response:
    # On the event loop, and a constant: it answers while Redis hangs and every worker
    # thread of the pool waits on it (a sync route would queue behind them).
    return Response(_HEALTHY_BODY, media_type="application/json")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis answers and at least one worker answers",
    responses=problem_responses(503),
)
def readyz(services: ServicesDep) -> Readiness:
    report = check_readiness(
        services.store, services.celery, timeout_s=services.settings.readiness_timeout_s
    )
    if not report.ready:
        raise ProblemError(
            503,
            "Not ready: " + "; ".join(f"{check}: {what}" for check, what in report.problems),
            slug="not-ready",
            errors=[FieldError(field=check, message=what) for check, what in report.problems],
            headers={"Retry-After": "5"},
        )
    return Readiness(workers=report.workers)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics_registry), media_type=CONTENT_TYPE_LATEST)
