"""Health and readiness answers of the service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"
    workers: list[str] = Field(description="Celery workers that answered a ping.")
