"""Jobs: what a client submits and what it polls."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import AnyHttpUrl, Field, field_validator, model_validator

from api_schemas.base import RequestModel, ResponseModel
from api_schemas.datasets import DatasetRef
from api_schemas.models import EmbedSpec, StudySpec
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


class QuerySpec(RequestModel):
    """Points outside the set, each interpolated from its k nearest points of the set.

    Out-of-sample NNK (``sets[].out_of_sample`` in the report): the same width as the
    set's embeddings; with labels (and the set's), the held-out errors of the four
    prediction rules and McNemar's test of weighted against unweighted NNK.
    """

    embeddings: DatasetRef
    labels: DatasetRef | None = Field(
        None, description="One label per query point; needs the set's labels too."
    )


class EmbeddingSetSpec(RequestModel):
    name: str = Field(pattern=SET_NAME_PATTERN, description="Unique within the job; used in URLs.")
    embeddings: DatasetRef
    labels: DatasetRef | None = None
    ids: DatasetRef | None = None
    query: QuerySpec | None = Field(
        None, description="Held-out points to interpolate from the set (e.g. a test split)."
    )


class JobCreate(RequestModel):
    """A job names its inputs in exactly one of three ways (DESIGN section 3).

    - ``sets``: uploaded embeddings, one set each;
    - ``embed``: a model reference, a dataset reference and layers: the worker embeds
      the data, one set per layer, in depth order;
    - ``study``: a family of models of growing size, each trained until it fits its
      training set, then embedded and compared in size order.
    """

    sets: list[EmbeddingSetSpec] | None = Field(None, min_length=1, max_length=64)
    embed: EmbedSpec | None = None
    study: StudySpec | None = None
    params: AnalysisParams = Field(default_factory=AnalysisParams)
    callback_url: AnyHttpUrl | None = Field(
        None,
        description=(
            "Where to POST a signed event (Standard Webhooks) when the job ends; the host "
            "must be on the operator's allow-list."
        ),
    )

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, sets: list[EmbeddingSetSpec] | None) -> list[EmbeddingSetSpec] | None:
        names = [s.name for s in sets or ()]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"set names must be unique; repeated: {', '.join(duplicated)}")
        return sets

    @model_validator(mode="after")
    def _exactly_one_input(self) -> JobCreate:
        given = [name for name in ("sets", "embed", "study") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'sets' (uploaded embeddings), 'embed' (a model and a "
                f"dataset) or 'study' (models of growing size); got {given or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        """Which of the three inputs the job names: "sets", "embed" or "study"."""
        return "sets" if self.sets is not None else "embed" if self.embed is not None else "study"


class JobProgress(ResponseModel):
    stage: str
    fraction: float = Field(ge=0.0, le=1.0)


class JobLinks(ResponseModel):
    self: str
    report: str
    report_html: str
    cancel: str
    graphs: dict[str, str] = Field(default_factory=dict)


class WebhookDeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class JobWebhook(ResponseModel):
    """Where the delivery of the job's end event to its callback_url stands."""

    status: WebhookDeliveryStatus = Field(
        description=(
            "pending: the job has not ended, or its event is queued or between retries; "
            "delivered: the receiver answered 2xx; failed: every attempt failed, or the "
            "event was refused (host no longer allowed, no signing secret)."
        )
    )
    attempts: int = Field(0, ge=0, description="POSTs made so far.")
    last_status_code: int | None = Field(
        None, description="HTTP status of the latest answer; null when none came."
    )
    last_error: str | None = Field(
        None,
        description=(
            "Why the latest attempt failed (an HTTP status, a timeout, a refused "
            "connection); null once delivered."
        ),
    )
    delivered_at: datetime | None = None


class JobOut(ResponseModel):
    id: str
    status: JobStatus
    progress: JobProgress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cached: bool = Field(False, description="True when the result came from the cache.")
    error: Problem | None = None
    links: JobLinks
    webhook: JobWebhook | None = Field(
        None,
        description="Delivery of the job's end event; null for a job without a callback_url.",
    )


class JobList(ResponseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next (older) page; null on the last."
    )
