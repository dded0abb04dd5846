"""FastAPI dependencies as `Annotated` aliases: the tenant, and the services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from jobstate.settings import Settings
from jobstate.store import Store
from service.auth import ANONYMOUS_TENANT, ApiKeyring, Tenant
from service.datasets import DatasetService
from service.errors import ProblemError
from service.jobs import JobService


@dataclass(frozen=True)
class Services:
    """Everything a request handler may need, built once per app by the factory."""

    settings: Settings
    keyring: ApiKeyring
    store: Store
    datasets: DatasetService
    jobs: JobService
    celery: Celery
    metrics_registry: CollectorRegistry


def get_services(request: Request) -> Services:
    return request.app.state.services


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <key>`; each key belongs to one tenant.",
)


def _unauthorized(detail: str, *, error: str | None = None) -> ProblemError:
    challenge = 'Bearer realm="nnkgeo"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug="unauthorized", headers={"WWW-Authenticate": challenge})


def current_tenant(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Tenant:
    if credentials is None:
        if services.keyring.allow_anonymous:
            return Tenant(ANONYMOUS_TENANT)
        raise _unauthorized("Send your API key as `Authorization: Bearer <key>`.")
    tenant = services.keyring.tenant_for(credentials.credentials)
    if tenant is None:
        raise _unauthorized("The API key is not valid.", error="invalid_token")
    return tenant


CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
ServicesDep = Annotated[Services, Depends(get_services)]


def _datasets(services: ServicesDep) -> DatasetService:
    return services.datasets


def _jobs(services: ServicesDep) -> JobService:
    return services.jobs


DatasetServiceDep = Annotated[DatasetService, Depends(_datasets)]
JobServiceDep = Annotated[JobService, Depends(_jobs)]
