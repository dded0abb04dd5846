"""Health and readiness answers of the service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api_schemas.base import ResponseModel


class Health(ResponseModel):
    status: Literal["ok"] = "ok"


class Readiness(ResponseModel):
    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"
    workers: list[str] = Field(description="Celery workers that answered a ping.")
