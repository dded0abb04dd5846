"""Jobs: what a client submits and what it polls."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api_schemas.datasets import DatasetRef
from api_schemas.params import AnalysisParams
from api_schemas.problems import Problem

SET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class EmbeddingSetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SET_NAME_PATTERN, description="Unique within the job; used in URLs.")
    embeddings: DatasetRef
    labels: DatasetRef | None = None
    ids: DatasetRef | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sets: list[EmbeddingSetSpec] = Field(min_length=1, max_length=64)
    params: AnalysisParams = Field(default_factory=AnalysisParams)

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, sets: list[EmbeddingSetSpec]) -> list[EmbeddingSetSpec]:
        names = [s.name for s in sets]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"set names must be unique; repeated: {', '.join(duplicated)}")
        return sets


class JobProgress(BaseModel):
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)


class JobLinks(BaseModel):
    self: str
    report: str
    report_html: str
    cancel: str
    graphs: dict[str, str] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: str
    status: JobStatus
    progress: JobProgress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cached: bool = Field(False, description="True when the result came from the cache.")
    error: Problem | None = None
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next (older) page; null on the last."
    )
