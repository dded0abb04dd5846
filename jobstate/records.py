"""What the service keeps about datasets, jobs and results (its internal records).

These are richer than the public models of `api_schemas`: a job record snapshots the
exact blobs and arrays it reads, so that a worker never depends on a dataset record that
may be deleted meanwhile. `jobstate.store` decides how they are laid out in Redis.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from api_schemas import (
    AnalysisParams,
    ArrayInfo,
    DatasetOut,
    JobProgress,
    JobStatus,
    Problem,
)
from api_schemas.datasets import DatasetFormat
from api_schemas.models import DirectoryDataset, EmbedSpec, StudySpec

DATASET_ID_PATTERN = re.compile(r"^ds_[0-9a-f]{32}$")
# Job ids start with the creation time in milliseconds (12 hex digits), so that their
# lexicographic order is their age: the per-tenant job index lists by id, newest first.
JOB_ID_PATTERN = re.compile(r"^job_[0-9a-f]{12}[0-9a-f]{16}$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_job_id(*, now_ms: int | None = None) -> str:
    created_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return f"job_{created_ms:012x}{secrets.token_hex(8)}"


def job_id_floor(*, created_before_ms: int) -> str:
    """The smallest id a job created at `created_before_ms` can have."""
    return f"job_{created_before_ms:012x}"


class StoredArray(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    zero_rows: int | None = Field(
        None,
        description="All-zero rows (in float32) of a 2-D numeric array (no cosine); None "
        "unless 2-D.",
    )
    first_zero_row: int | None = Field(
        None, description="Index of the first of those rows; None when there is none."
    )


class DatasetRecord(BaseModel):
    id: str
    tenant: str
    sha256: str
    format: DatasetFormat
    size_bytes: int
    arrays: list[StoredArray]
    created_at: datetime

    def array_named(self, name: str) -> StoredArray | None:
        return next((array for array in self.arrays if array.name == name), None)

    def to_out(self) -> DatasetOut:
        return DatasetOut(
            id=self.id,
            sha256=self.sha256,
            format=self.format,
            size_bytes=self.size_bytes,
            arrays=[ArrayInfo(name=a.name, shape=a.shape, dtype=a.dtype) for a in self.arrays],
            created_at=self.created_at,
        )


class ArrayInput(BaseModel):
    """One array a job reads: resolved at submission, immune to later dataset deletes."""

    dataset: str
    sha256: str
    format: DatasetFormat
    array: str


class SetInput(BaseModel):
    name: str
    embeddings: ArrayInput
    labels: ArrayInput | None = None
    ids: ArrayInput | None = None
    # The set's query points (``sets[].query`` of the request); absent from older records.
    query_embeddings: ArrayInput | None = None
    query_labels: ArrayInput | None = None

    def arrays(self) -> list[ArrayInput]:
        given = (self.embeddings, self.labels, self.ids, self.query_embeddings, self.query_labels)
        return [a for a in given if a is not None]


class UploadInput(BaseModel):
    """An upload an embed or study job reads (a dataset, a model, weights): its bytes."""

    dataset: str
    sha256: str
    format: DatasetFormat


JobKind = Literal["sets", "embed", "study"]


class DriftInput(BaseModel):
    """A drift job's current points (scored against ``sets[0]``, the reference)."""

    current: SetInput
    threshold: float


class JobSpec(BaseModel):
    """What a job reads, resolved at submission.

    A ``sets`` job names its arrays in ``sets``; an ``embed`` or ``study`` job keeps the
    request's spec as given (the worker builds its sets, one per layer and model) and the
    bytes of every upload it names in ``uploads``, so that its worker needs no dataset
    record.
    """

    kind: JobKind = "sets"
    sets: list[SetInput] = Field(default_factory=list)
    embed: EmbedSpec | None = None
    study: StudySpec | None = None
    uploads: list[UploadInput] = Field(default_factory=list)
    params: AnalysisParams
    # A compare job is a sets job of two sets compared point by point; a drift job one
    # of its reference set, with the current points here (api_schemas.jobs).
    compare: bool = False
    drift: DriftInput | None = None

    def dataset_ids(self) -> list[str]:
        current = [] if self.drift is None else self.drift.current.arrays()
        return sorted(
            {array.dataset for s in self.sets for array in s.arrays()}
            | {array.dataset for array in current}
            | {upload.dataset for upload in self.uploads}
        )

    @property
    def cacheable(self) -> bool:
        """False for a directory dataset: its files may change under the same path."""
        model_job = self.embed or self.study
        return model_job is None or not isinstance(model_job.dataset, DirectoryDataset)


class JobRecord(BaseModel):
    id: str
    tenant: str
    status: JobStatus
    spec: JobSpec
    queue: str | None = None
    cache_key: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = Field(default_factory=lambda: JobProgress(stage="queued", fraction=0))
    cached: bool = False
    error: Problem | None = None
    result_id: str | None = None
    attempts: int = Field(0, description="Deliveries to a worker (more than one after a crash).")
    cancel_requested: bool = False
    callback_url: str | None = Field(
        None, description="Where the job's end is POSTed as a signed webhook event, if set."
    )


class GraphFiles(BaseModel):
    """The blobs made for one set: its graphs (scipy.sparse.save_npz files) and the 2-D
    map its report page draws (`htmlreport.embedding_map`).

    All of them live as long as the result that names them (`Store.register_graph_blobs`).
    """

    directed: str
    symmetric: str
    map: str | None = Field(
        None, description="The report page's 2-D map; None in results made before maps were."
    )

    def sha256_of(self, kind: str) -> str:
        return self.directed if kind == "directed" else self.symmetric

    def sha256s(self) -> list[str]:
        """Every blob named here, to keep them alive together."""
        return [sha for sha in (self.directed, self.symmetric, self.map) if sha is not None]


class ResultRecord(BaseModel):
    """A job's result: its report, each set's blobs, and its report page.

    ``id`` is the id of the job that made it; a cached job names another job's result.
    """

    id: str
    report_json: str
    etag: str
    graphs: dict[str, GraphFiles]
    created_at: datetime
    page: str | None = Field(
        None,
        description="The report page's blob (UTF-8 HTML), drawn by the worker for job `id`; "
        "None in results made before the worker drew pages.",
    )

    def blob_sha256s(self) -> list[str]:
        """Every blob the result names (graphs, maps, page), to keep them alive together."""
        graph_blobs = [sha for files in self.graphs.values() for sha in files.sha256s()]
        return graph_blobs if self.page is None else [*graph_blobs, self.page]


class SetBlocks(BaseModel):
    """How one set of a sharded job is split: row ranges [start, stop), in order."""

    name: str
    n_points: int
    blocks: list[tuple[int, int]]
    approximate_index: str | None = Field(
        None, description="Blob of the set's faiss index (knn='approximate'), built once."
    )


class ShardedRun(BaseModel):
    """The plan of one attempt at a sharded job: which blocks exist and where they go.

    Blocks are addressed as (set index, block index); their results are recorded by
    `jobstate.store` under the attempt, so a restarted job never mixes in blocks of an
    earlier run.
    """

    attempt: int
    queue: str
    sets: list[SetBlocks]

    @property
    def total_blocks(self) -> int:
        return sum(len(s.blocks) for s in self.sets)

    def block_keys(self) -> list[str]:
        return [
            block_key(set_index, block_index)
            for set_index, set_blocks in enumerate(self.sets)
            for block_index in range(len(set_blocks.blocks))
        ]


def block_key(set_index: int, block_index: int) -> str:
    """The name of one block of a run, as recorded in the store."""
    return f"{set_index}:{block_index}"


class RunProgress(BaseModel):
    """What the store knows about a sharded run: the plan and the blocks recorded so far."""

    plan: ShardedRun
    block_results: dict[str, str] = Field(
        default_factory=dict, description="Block key -> blob sha256 of its NNK solve."
    )
    deliveries: dict[str, int] = Field(
        default_factory=dict, description="Block key (or 'assemble') -> times it started."
    )
    started_by: dict[str, str] = Field(
        default_factory=dict, description="Block key -> the worker that last started it."
    )
    assembly_started: bool = False

    @property
    def complete(self) -> bool:
        return len(self.block_results) == self.plan.total_blocks
