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
JOB_KINDS = ("sets", "embed", "study", "compare", "drift")


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


class CompareSpec(RequestModel):
    """Two sets of the same points, in the same order (two layers, models, checkpoints).

    Both are analysed as ``sets`` would be; the report's ``compare`` section gives, per
    point, the overlap of its NNK neighbourhoods in ``a`` and in ``b``, and linear CKA.
    """

    a: EmbeddingSetSpec
    b: EmbeddingSetSpec = Field(description="The same number of points as `a`, in its order.")

    @model_validator(mode="after")
    def _distinct_names(self) -> CompareSpec:
        if self.a.name == self.b.name:
            raise ValueError(
                f"compare.a and compare.b need different names; both are {self.a.name!r}"
            )
        return self


class DriftSetSpec(RequestModel):
    """The points checked for drift: interpolated from the reference, never a graph of
    their own."""

    name: str = Field("current", pattern=SET_NAME_PATTERN)
    embeddings: DatasetRef
    labels: DatasetRef | None = Field(
        None, description="One label per point; gives the report's per-class shifts."
    )
    ids: DatasetRef | None = Field(None, description="One id per point, named in `drifted`.")


class DriftSpec(RequestModel):
    """New embeddings (e.g. production) against a reference set (e.g. training data).

    The reference is analysed as a set (with exact neighbour search); each current point
    is solved against it out of sample, and its reconstruction error is ranked among the
    reference's leave-one-out errors (the report's ``drift`` section).
    """

    reference: EmbeddingSetSpec
    current: DriftSetSpec
    threshold: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="The verdict is 'drift' when the Kolmogorov-Smirnov p-value is below it.",
    )


class JobCreate(RequestModel):
    """A job names its inputs in exactly one of five ways (see the README's API walk-through).

    - ``sets``: uploaded embeddings, one set each;
    - ``embed``: a model reference, a dataset reference and layers: the worker embeds
      the data, one set per layer, in depth order;
    - ``study``: a family of models of growing size, each trained until it fits its
      training set, then embedded and compared in size order;
    - ``compare``: two sets of the same points, compared point by point;
    - ``drift``: current embeddings scored against a reference set.
    """

    sets: list[EmbeddingSetSpec] | None = Field(None, min_length=1, max_length=64)
    embed: EmbedSpec | None = None
    study: StudySpec | None = None
    compare: CompareSpec | None = None
    drift: DriftSpec | None = None
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
        given = [name for name in JOB_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'sets' (uploaded embeddings), 'embed' (a model and a "
                "dataset), 'study' (models of growing size), 'compare' (two sets of the same "
                f"points) or 'drift' (a reference and current points); got {given or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        """Which input the job names: "sets", "embed", "study", "compare" or "drift"."""
        return next(name for name in JOB_KINDS if getattr(self, name) is not None)


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
